//! `shoal token create|ls|revoke`, and where the CLI finds its own token.

use crate::client_cmds::{CmdResult, GlobalOpts, EXIT_OK};
use crate::output::{emit, key_values, or_dash, print_json, rows_table, short_time, Row};
use shoal_client::{Client, Error, Token, TokenRequest};
use shoal_wire::Role;
use std::path::Path;

/// Where `shoal up` leaves the first admin token, relative to the folder it ran in.
pub(crate) const UP_TOKEN_FILE: &str = ".shoal/admin.token";

#[derive(clap::Subcommand, Debug)]
pub enum TokenCmd {
    /// Make an API token; its secret is printed once (the store keeps only its hash)
    Create {
        /// A name to tell it by (letters, digits, `.`, `_`, `-`, `@`)
        name: String,
        /// viewer, runner, editor or admin
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Sandbox-name glob it may act on (`*` and `?` wildcards); repeat for several; default every sandbox
        #[arg(long = "sandbox", value_name = "GLOB")]
        sandboxes: Vec<String>,
        /// How long it is valid (`30d`, `12h`); default until revoked
        #[arg(long)]
        expires: Option<String>,
    },
    /// List tokens (never their secrets)
    Ls,
    /// Revoke a token by id (or by the name of one not revoked); every node refuses it within a second
    Revoke {
        /// The token's id or name
        id: String,
    },
}

pub(crate) fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text)
        .ok_or_else(|| format!("unknown role `{text}`; use one of {}", Role::ALL.map(|r| r.as_str()).join(", ")))
}

/// The token the CLI sends: `--token`, else `SHOAL_TOKEN`, else the file `--token-file` or
/// `SHOAL_TOKEN_FILE` names, else `.shoal/admin.token` in this folder (what `shoal up` writes).
/// `None` when there is none: the server's 401 then says how to get one.
pub(crate) fn resolve(opts: &GlobalOpts) -> Result<Option<String>, String> {
    if let Some(t) = opts.token.as_deref().filter(|t| !t.trim().is_empty()) {
        return Ok(Some(t.trim().to_owned()));
    }
    if let Some(file) = &opts.token_file {
        return read(file).map(Some).map_err(|e| {
            format!("cannot read the token file {} (--token-file or SHOAL_TOKEN_FILE): {e}", file.display())
        });
    }
    let up = Path::new(UP_TOKEN_FILE);
    let meta = match std::fs::metadata(up) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", up.display())),
    };
    // Found by itself, so only if it is this user's own and no one else's to read: a folder
    // someone else made (a cloned repository, a shared folder) must not choose who you act as.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // SAFETY: geteuid takes nothing and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me || meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is not this user's own file, or others may read it (mode {:o}); `shoal up` writes it so (owner only, 0600): fix it, or name a token with --token-file",
            up.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    read(up).map(Some).map_err(|e| format!("cannot read {}: {e}", up.display()))
}

fn read(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty"));
    }
    Ok(token.to_owned())
}

impl Row for Token {
    const HEADERS: &'static [&'static str] =
        &["ID", "NAME", "PREFIX", "ROLE", "SANDBOXES", "CREATED BY", "CREATED", "LAST USED", "EXPIRES", "STATE"];

    fn cells(&self) -> Vec<String> {
        let state = if self.revoked_at.is_some() { "revoked" } else { "active" };
        vec![
            self.id.clone(),
            self.name.clone(),
            self.prefix.clone(),
            self.role.to_string(),
            self.sandboxes.join(","),
            self.created_by.clone(),
            short_time(Some(&self.created_at)),
            short_time(self.last_used_at.as_deref()),
            or_dash(self.expires_at.as_deref().map(|t| short_time(Some(t)))),
            state.to_owned(),
        ]
    }
}

fn fields(t: &Token) -> Vec<(&'static str, String)> {
    vec![
        ("id", t.id.clone()),
        ("name", t.name.clone()),
        ("prefix", t.prefix.clone()),
        ("role", t.role.to_string()),
        ("sandboxes", t.sandboxes.join(",")),
        ("created_by", t.created_by.clone()),
        ("created_at", t.created_at.clone()),
        ("expires_at", or_dash(t.expires_at.as_deref())),
        ("revoked_at", or_dash(t.revoked_at.as_deref())),
    ]
}

pub(crate) async fn cmd_token(client: &Client, cmd: TokenCmd, json: bool) -> CmdResult {
    match cmd {
        TokenCmd::Create { name, role, sandboxes, expires } => {
            let request = TokenRequest {
                name,
                role,
                sandboxes: (!sandboxes.is_empty()).then_some(sandboxes),
                expires_in: expires,
            };
            let created = client.create_token(&request).await?;
            if json {
                print_json(&created);
            } else {
                emit(&key_values(&fields(&created.token)));
                eprintln!("the token's secret follows; it is shown this once, keep it somewhere safe:");
                emit(&format!("{}\n", created.secret));
            }
        }
        TokenCmd::Ls => {
            let list = client.tokens().await?;
            if json {
                print_json(&list);
            } else {
                emit(&rows_table(&list.tokens));
            }
        }
        TokenCmd::Revoke { id } => {
            let revoked = client.revoke_token(&id).await?;
            if json {
                print_json(&revoked);
            } else {
                emit(&format!("revoked token {} ({}, {})\n", revoked.id, revoked.name, revoked.prefix));
            }
        }
    }
    Ok(EXIT_OK)
}

/// The client with the token the options name, or the error saying why there is none.
pub(crate) fn authenticated(client: Client, opts: &GlobalOpts) -> Result<Client, Error> {
    match resolve(opts).map_err(Error::Other)? {
        Some(token) => client.with_token(token),
        None => Ok(client),
    }
}
