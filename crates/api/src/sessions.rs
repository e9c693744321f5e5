//! `/api/v1/sessions`: people log in (a user's name and password for a `shoal_session`
//! cookie, whose SHA-256 the store keeps, so any node takes it) and out. Failed logins are
//! slowed per client address on each node ([`Throttle`]); passwords are checked off the async
//! threads, two at a time (`shoal_service::passwords`).

use crate::auth::{self, SESSION_COOKIE};
use crate::body;
use crate::error::{ApiError, ApiResult};
use crate::State;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use parking_lot::Mutex;
use shoal_wire as wire;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Failed logins from one address within [`WINDOW`] after which its attempts are refused.
pub const MAX_FAILURES: usize = 5;
/// How long a failed login counts against its address.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most: past it, those with no failure within [`WINDOW`] go first,
/// then the one whose last failure is oldest.
const MAX_ADDRESSES: usize = 10_000;

/// Failed logins by client address, in this node's memory (no store write per failure, so a
/// flood of wrong passwords costs the store nothing; the price is that each node counts
/// apart, and a client that spreads its attempts over N nodes gets N times as many).
///
/// An attempt counts from when it starts, before its password is checked, so that many sent
/// at once cannot all slip past the count while their hashes are queued; one that succeeds
/// clears its address's record, one that fails for another reason than the credentials (the
/// store away) is taken back.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

/// What an address is counted by: an IPv4 address itself (an IPv4-mapped IPv6 one too), an
/// IPv6 address by its /64 (one machine is commonly given a whole /64 to pick from).
pub fn throttle_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl Throttle {
    /// Counts an attempt from `addr` at `now`, or says how long until it may try again.
    pub fn begin(&self, addr: IpAddr, now: Instant) -> Result<Instant, Duration> {
        let key = throttle_key(addr);
        let mut failures = self.failures.lock();
        if !failures.contains_key(&key) && failures.len() >= MAX_ADDRESSES {
            failures.retain(|_, f| f.back().is_some_and(|&t| now.saturating_duration_since(t) < WINDOW));
            if failures.len() >= MAX_ADDRESSES {
                let oldest = failures.iter().min_by_key(|(_, f)| f.back().copied()).map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    failures.remove(&oldest);
                }
            }
        }
        let record = failures.entry(key).or_default();
        while record.front().is_some_and(|&t| now.saturating_duration_since(t) >= WINDOW) {
            record.pop_front();
        }
        if record.len() >= MAX_FAILURES {
            // Until the oldest of the last MAX_FAILURES is WINDOW old.
            let oldest = record[record.len() - MAX_FAILURES];
            return Err(WINDOW.saturating_sub(now.saturating_duration_since(oldest)));
        }
        record.push_back(now);
        Ok(now)
    }

    /// An attempt that [`Self::begin`] counted did not get as far as the credentials.
    pub fn release(&self, addr: IpAddr, at: Instant) {
        let mut failures = self.failures.lock();
        if let Some(record) = failures.get_mut(&throttle_key(addr)) {
            if let Some(i) = record.iter().position(|&t| t == at) {
                record.remove(i);
            }
        }
    }

    /// A login from `addr` succeeded: its record goes.
    pub fn succeeded(&self, addr: IpAddr) {
        self.failures.lock().remove(&throttle_key(addr));
    }
}

/// The `Set-Cookie` of a new session.
fn session_cookie(text: &str, ttl: Duration, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={text}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        ttl.as_secs()
    ))
    .expect("a session's text is base58")
}

fn secure(state: &State) -> bool {
    state.node.url.starts_with("https://")
}

const WRONG: &str = "the user name or the password is wrong";

#[utoipa::path(post, path = "/sessions", operation_id = "createSession", tag = "sessions", request_body = wire::LoginRequest,
    responses((status = 201, description = "Logged in. `Set-Cookie` carries the session (`shoal_session=...; HttpOnly; SameSite=Strict; Path=/; Max-Age=TTL`, plus `Secure` when the node is served over HTTPS), valid on every node of the cluster until `expires_at` or logout. Send `csrf_token` as `X-CSRF-Token` with every change made with the cookie. After 5 failed logins from one address within 60 s, this node refuses that address's logins (429, `Retry-After`) until the oldest of them is 60 s old.", body = wire::Session,
        headers(("set-cookie" = String, description = "The session cookie.")))))]
pub async fn login(state: State, request: Request) -> ApiResult<Response> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(a)| a.ip());
    let (parts, body) = request.into_parts();
    let (req, _): (wire::LoginRequest, _) = body::json(&parts.headers, body, state.limits.max_request_bytes).await?;
    let auth = &state.auth;
    let attempt = match auth.throttle.begin(peer, Instant::now()) {
        Ok(at) => at,
        Err(wait) => {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let secs = secs.max(1);
            tracing::info!(peer = %peer, retry_after = secs, "login refused: too many failed attempts from this address");
            let mut res = ApiError::too_many_attempts(format!(
                "too many failed logins from this address: {MAX_FAILURES} within {} s; try again in {secs} s",
                WINDOW.as_secs()
            ))
            .into_response();
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return Ok(res);
        }
    };
    crate::audit::note_login(&parts.extensions, &req.name);
    let checked = async {
        let user = state.store.user_by_name(&req.name).await?;
        let ok = auth.passwords.verify(req.password, user.as_ref().map(|u| u.password_hash.clone())).await?;
        ApiResult::Ok(user.filter(|_| ok))
    }
    .await;
    let user = match checked {
        Ok(Some(user)) => user,
        Ok(None) => {
            // The name may be a password typed in the wrong field: not logged.
            tracing::info!(peer = %peer, "login failed: wrong user name or password");
            return Err(ApiError::invalid_credentials(WRONG));
        }
        Err(e) => {
            auth.throttle.release(peer, attempt);
            return Err(e);
        }
    };
    auth.throttle.succeeded(peer);
    let (text, hash) = shoal_service::sessions::generate();
    let ttl_ms = i64::try_from(auth.session_ttl.as_millis()).unwrap_or(i64::MAX);
    let expires_at = state.store.create_session(&hash, &user.id, ttl_ms).await?;
    tracing::info!(user = %user.name, peer = %peer, "logged in");
    let answer = wire::Session {
        user: user.name,
        role: user.role,
        sandboxes: user.sandboxes,
        expires_at: crate::rfc3339(expires_at),
        csrf_token: shoal_service::sessions::csrf_token(&text),
    };
    let mut res = (StatusCode::CREATED, Json(answer)).into_response();
    res.headers_mut().insert(header::SET_COOKIE, session_cookie(&text, auth.session_ttl, secure(&state)));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

#[utoipa::path(delete, path = "/sessions", operation_id = "deleteSession", tag = "sessions",
    responses((status = 204, description = "Logged out: the session of the request's `shoal_session` cookie has ended, and every node refuses it within a second. `Set-Cookie` clears the cookie. Needs the cookie (and, when the cookie is the credential, `X-CSRF-Token`).",
        headers(("set-cookie" = String, description = "Clears the session cookie.")))))]
pub async fn logout(state: State, _who: auth::Principal, headers: HeaderMap) -> ApiResult<Response> {
    let Some(text) = auth::session_cookie(&headers)? else {
        return Err(ApiError::unauthenticated(format!(
            "logging out ends the session of the `{SESSION_COOKIE}` cookie, and this request carries none (an API token is revoked with `shoal token revoke`)"
        )));
    };
    if shoal_wire::parse_token(&text) != Ok(shoal_wire::TokenKind::Session) {
        return Err(ApiError::invalid_token(format!("the `{SESSION_COOKIE}` cookie holds no session")));
    }
    let ended = state.store.delete_session(&shoal_service::tokens::hash(&text)).await?;
    state.auth.forget_session(&text);
    let mut res = if ended {
        StatusCode::NO_CONTENT.into_response()
    } else {
        ApiError::invalid_token("this session had already ended; there is nothing to log out of").into_response()
    };
    res.headers_mut().insert(header::SET_COOKIE, auth::clearing_cookie(secure(&state)));
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_per_address_within_the_window() {
        let t = Throttle::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        for i in 0..MAX_FAILURES as u64 {
            t.begin(a, at(i * 10)).unwrap();
        }
        // The sixth: until the first is 60 s old (at 60 s), asked at 45 s.
        assert_eq!(t.begin(a, at(45)), Err(Duration::from_secs(15)));
        assert!(t.begin(b, at(45)).is_ok(), "another address is not slowed");
        // The first failure has aged out: one more try, then the next wait.
        assert!(t.begin(a, at(60)).is_ok());
        assert_eq!(t.begin(a, at(61)), Err(Duration::from_secs(9)));
        // A success clears the record.
        t.succeeded(a);
        assert!(t.begin(a, at(62)).is_ok());
        // An attempt taken back does not count.
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        for _ in 0..10 {
            let started = t.begin(c, at(70)).unwrap();
            t.release(c, started);
        }
        assert!(t.begin(c, at(70)).is_ok());
    }

    #[test]
    fn the_cookie_is_secure_under_https_only() {
        let plain = session_cookie("shoal_ses_x", Duration::from_secs(300), false);
        assert_eq!(plain, "shoal_session=shoal_ses_x; HttpOnly; SameSite=Strict; Path=/; Max-Age=300");
        let tls = session_cookie("shoal_ses_x", Duration::from_secs(300), true);
        assert_eq!(tls, "shoal_session=shoal_ses_x; HttpOnly; SameSite=Strict; Path=/; Max-Age=300; Secure");
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(throttle_key(one), throttle_key(other));
        assert_ne!(throttle_key(one), throttle_key("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(throttle_key("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn memory_is_bounded_stale_addresses_first() {
        let t = Throttle::default();
        let start = Instant::now();
        for i in 0..MAX_ADDRESSES as u32 {
            t.begin(IpAddr::V4(Ipv4Addr::from(i)), start).unwrap();
        }
        // A fresh one pushes out the oldest.
        let later = start + Duration::from_secs(1);
        t.begin(IpAddr::V4(Ipv4Addr::from(u32::MAX)), later).unwrap();
        assert_eq!(t.failures.lock().len(), MAX_ADDRESSES);
        // Once they are all stale, they all go.
        t.begin(IpAddr::V4(Ipv4Addr::from(u32::MAX - 1)), start + WINDOW + Duration::from_secs(2)).unwrap();
        assert_eq!(t.failures.lock().len(), 1);
    }
}
