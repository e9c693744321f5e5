//! Credentials: the API tokens' text form (also a login session's), the roles a token or user
//! holds, and the bodies of `/api/v1/tokens`, `/api/v1/sessions` and `/api/v1/users`.
//!
//! # A token's text
//!
//! `shoal_<kind>_<base58>`, where the base58 text (Bitcoin's alphabet, without `0`, `O`, `I`
//! and `l`) encodes 32 random bytes followed by the CRC-32 of the prefix and those bytes. The
//! prefix makes a leaked token recognisable (secret scanners match `shoal_api_`); the
//! checksum lets a client or a node refuse a mistyped or truncated token without asking the
//! store. The checksum is no secret and proves nothing: only the token's SHA-256, kept in the
//! store, does.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a token is for, spelled in its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// Made by `shoal token create` or at a store's first start (`shoal_api_`).
    Api,
    /// Given to one attempt of an execution, valid while it runs (`shoal_att_`).
    Attempt,
    /// A person's login session, carried in the `shoal_session` cookie (`shoal_ses_`).
    Session,
}

impl TokenKind {
    /// Every kind, in the order their prefixes are tried.
    pub const ALL: [TokenKind; 3] = [TokenKind::Api, TokenKind::Attempt, TokenKind::Session];
}

impl TokenKind {
    /// The text before the encoded bytes.
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::Api => "shoal_api_",
            TokenKind::Attempt => "shoal_att_",
            TokenKind::Session => "shoal_ses_",
        }
    }
}

/// Bytes of randomness in a token: 256 bits.
pub const TOKEN_BYTES: usize = 32;

/// Characters of a token shown in listings and logs to tell tokens apart: the prefix and the
/// first 6 characters of the encoded part (about 35 of its 256 bits).
pub const SHOWN_CHARS: usize = 6;

/// Writes a token's text for `secret`.
pub fn format_token(kind: TokenKind, secret: &[u8; TOKEN_BYTES]) -> String {
    let mut bytes = Vec::with_capacity(TOKEN_BYTES + 4);
    bytes.extend_from_slice(secret);
    bytes.extend_from_slice(&checksum(kind, secret).to_be_bytes());
    format!("{}{}", kind.prefix(), bs58::encode(bytes).into_string())
}

fn checksum(kind: TokenKind, secret: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(kind.prefix().as_bytes());
    h.update(secret);
    h.finalize()
}

/// Checks a token's text offline: its prefix, alphabet, length and checksum. The message says
/// what is wrong, without repeating the token.
pub fn parse_token(text: &str) -> Result<TokenKind, String> {
    let (kind, rest) = TokenKind::ALL
        .into_iter()
        .find_map(|k| text.strip_prefix(k.prefix()).map(|rest| (k, rest)))
        .ok_or_else(|| {
            "not a shoal token: tokens start with `shoal_api_` (API tokens), `shoal_att_` (an attempt's) or `shoal_ses_` (a login session's)".to_owned()
        })?;
    let bytes = bs58::decode(rest).into_vec().map_err(|_| {
        "the token is mistyped: it has a character base58 does not use (0, O, I, l or a symbol)".to_owned()
    })?;
    if bytes.len() != TOKEN_BYTES + 4 {
        return Err("the token is truncated or too long: copy it whole".to_owned());
    }
    let (secret, sum) = bytes.split_at(TOKEN_BYTES);
    if checksum(kind, secret).to_be_bytes() != sum {
        return Err("the token's checksum does not match: it is mistyped or altered".to_owned());
    }
    Ok(kind)
}

/// The part of a token that may be shown: its prefix and first characters.
pub fn shown_part(token: &str) -> String {
    let cut = TokenKind::ALL
        .into_iter()
        .find(|k| token.starts_with(k.prefix()))
        .map_or(0, |k| k.prefix().len() + SHOWN_CHARS);
    token.chars().take(cut).collect()
}

/// What a token or user may do. Each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads definitions, executions, logs, files and nodes.
    Viewer,
    /// A viewer that also runs the jobs defined in sandbox files and cancels executions.
    Runner,
    /// A runner that also writes sandbox files, schedules and listeners.
    Editor,
    /// Everything: sandboxes, tokens, users, nodes' drain, suspend and resume, the audit trail,
    /// and inline commands (which run any program as the node's user).
    Admin,
}

names!(Role { Viewer => "viewer", Runner => "runner", Editor => "editor", Admin => "admin" });

impl Role {
    /// What the role adds, for messages.
    pub fn grants(self) -> &'static str {
        match self {
            Role::Viewer => "read definitions, executions, logs and files",
            Role::Runner => "run jobs from sandbox files and cancel executions",
            Role::Editor => "write sandbox files, schedules and listeners",
            Role::Admin => "manage sandboxes, tokens, users and nodes, and run inline commands",
        }
    }
}

/// `POST /api/v1/tokens`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// A name to tell the token by: 1 to 64 letters, digits, `.`, `_`, `-` or `@`, unique
    /// among tokens not revoked.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub name: String,
    pub role: Role,
    /// Sandbox-name globs the token may act on (`*`, `team-?`, `etl-*`); default `["*"]`,
    /// every sandbox. A token limited to some sandboxes cannot read executions of inline
    /// commands nor anything outside them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1, max_items = 64)]
    pub sandboxes: Option<Vec<String>>,
    /// How long the token is valid (`30d`, `12h`); default: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "30d")]
    pub expires_in: Option<String>,
}

/// A token as listed: never its secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: String,
    pub name: String,
    /// The start of the token's text (`shoal_api_` and 6 characters), to recognise it.
    pub prefix: String,
    pub role: Role,
    /// Sandbox-name globs it may act on.
    pub sandboxes: Vec<String>,
    /// Who made it (`token:NAME`, `user:NAME`, or `bootstrap` for the first admin token).
    pub created_by: String,
    pub created_at: String,
    /// When a node last took it, to within a minute.
    pub last_used_at: Option<String>,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
}

/// The answer to `POST /api/v1/tokens`: the token and, this once, its secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: Token,
    /// The token's text, for `Authorization: Bearer ...`. Shown only in this answer: the store
    /// keeps its SHA-256 alone.
    pub secret: String,
}

/// `GET /api/v1/tokens`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<Token>,
}

/// `POST /api/v1/sessions`: a person logs in.
#[derive(Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The user's name.
    pub name: String,
    /// The user's password (at most 1024 bytes).
    #[schema(format = Password)]
    pub password: String,
}

/// No password in `Debug` output.
impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest").field("name", &self.name).finish_non_exhaustive()
    }
}

/// The answer to `POST /api/v1/sessions`, beside the `Set-Cookie: shoal_session=...` that
/// carries the session itself (HttpOnly: no script reads it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Session {
    /// The user's name.
    pub user: String,
    pub role: Role,
    /// Sandbox-name globs the user may act on.
    pub sandboxes: Vec<String>,
    /// When the session ends (RFC 3339); log in again after it.
    pub expires_at: String,
    /// Send it as `X-CSRF-Token` with every request that changes something (any method but
    /// GET, HEAD and OPTIONS) authenticated by the cookie; it stays the same for the whole
    /// session.
    pub csrf_token: String,
}

/// `POST /api/v1/users`.
#[derive(Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    /// 1 to 64 letters, digits, `.`, `_`, `-` or `@`; unique.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub name: String,
    /// At least 12 characters, at most 1024 bytes. The store keeps only its Argon2id hash.
    #[schema(format = Password, min_length = 12)]
    pub password: String,
    pub role: Role,
    /// Sandbox-name globs the user may act on; default `["*"]`, every sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1, max_items = 64)]
    pub sandboxes: Option<Vec<String>>,
}

/// No password in `Debug` output.
impl std::fmt::Debug for UserRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRequest")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("sandboxes", &self.sandboxes)
            .finish_non_exhaustive()
    }
}

/// A user as listed: never a password nor its hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// Sandbox-name globs the user may act on.
    pub sandboxes: Vec<String>,
    /// Who made it (`token:NAME` or `user:NAME`).
    pub created_by: String,
    pub created_at: String,
}

/// `GET /api/v1/users`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UserList {
    pub users: Vec<User>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_mistypes_are_caught() {
        let secret = [7u8; TOKEN_BYTES];
        for kind in TokenKind::ALL {
            let text = format_token(kind, &secret);
            assert!(text.starts_with(kind.prefix()));
            assert_eq!(parse_token(&text), Ok(kind));
            // Every single-character change is caught (base58 alphabet swaps).
            let body = &text[kind.prefix().len()..];
            for (i, c) in body.char_indices() {
                let other = if c == '2' { '3' } else { '2' };
                let typo = format!("{}{}{other}{}", kind.prefix(), &body[..i], &body[i + 1..]);
                assert!(parse_token(&typo).is_err(), "{typo} taken");
            }
            assert!(parse_token(&text[..text.len() - 1]).unwrap_err().contains("truncated"));
            assert!(parse_token(&format!("{text}0")).unwrap_err().contains("mistyped"));
        }
        // The kind is part of the checksum: a prefix swapped is refused.
        let api = format_token(TokenKind::Api, &secret);
        let swapped = api.replacen("shoal_api_", "shoal_att_", 1);
        assert!(parse_token(&swapped).unwrap_err().contains("checksum"));
        assert!(parse_token("Bearer x").unwrap_err().contains("not a shoal token"));
        assert_eq!(shown_part(&api).len(), "shoal_api_".len() + SHOWN_CHARS);
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Viewer < Role::Runner && Role::Runner < Role::Editor && Role::Editor < Role::Admin);
        for r in Role::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }
}
