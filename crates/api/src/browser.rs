//! The browser is not a way in. A web page the user has open can send requests to a node on
//! their machine or network; two checks stop it from using the answers or the side effects:
//!
//! - **Host**: a request whose `Host` is a name the node does not know is refused (403
//!   `foreign_host`). That stops DNS rebinding, where `evil.example` is made to resolve to
//!   `127.0.0.1` so that the page's same-origin requests reach the node. An IP address
//!   (v4 or v6) and `localhost` (exactly: a resolver may send `x.localhost` to DNS) are
//!   always accepted, as no rebinding can produce them;
//!   names must be the host of `http.advertise` or listed in `http.hosts`.
//! - **Origin**: a request that carries `Origin` (browsers send it on every cross-origin
//!   request, and on same-origin ones but GET and HEAD) must come from the node's own
//!   origin, `Origin` naming the same host and port as `Host` (403 `foreign_origin`). Tools
//!   (the CLI, curl, other nodes) send no `Origin` and are not affected.
//!
//! With JSON bodies that must say `Content-Type: application/json` (`body.rs`), a cross-site
//! page can neither read an answer nor cause a change. The health routes are open to load
//! balancers, which may send any `Host`.

use crate::error::ApiError;
use axum::extract::Request;
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// The host names a node answers to, beside IP addresses and `localhost`.
#[derive(Clone, Debug, Default)]
pub struct HostPolicy {
    names: Vec<String>,
    /// `http` or `https`: the scheme of the node's own pages.
    scheme: String,
}

impl HostPolicy {
    /// `advertise`: the node's URL; `names`: `http.hosts`.
    pub fn new(advertise: &str, names: &[String]) -> HostPolicy {
        let mut all: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        if let Some(host) = advertise.split_once("://").map(|(_, rest)| rest.split('/').next().unwrap_or(rest)) {
            all.push(split_port(host).0.to_ascii_lowercase());
        }
        all.sort();
        all.dedup();
        let scheme = advertise.split_once("://").map_or("http", |(s, _)| s).to_ascii_lowercase();
        HostPolicy { names: all, scheme }
    }

    /// Whether `authority` (a `Host` header: `name[:port]`, `[v6][:port]`) is this node's.
    pub fn allows(&self, authority: &str) -> bool {
        let host = split_port(authority).0.to_ascii_lowercase();
        let address = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
            None => host.parse::<Ipv4Addr>().is_ok(),
        };
        address || host == "localhost" || self.names.contains(&host)
    }
}

/// `host` and `port` of an authority (the port empty when none is given).
fn split_port(authority: &str) -> (&str, &str) {
    if let Some(rest) = authority.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        return match rest.split_once(']') {
            Some((v6, tail)) => (&authority[..v6.len() + 2], tail.strip_prefix(':').unwrap_or("")),
            None => (authority, ""),
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p),
        _ => (authority, ""),
    }
}

/// `Origin`'s authority with the scheme's default port dropped, lowercased: the form it is
/// compared to `Host` in.
fn normalized(scheme: &str, authority: &str) -> String {
    let (host, port) = split_port(authority);
    let default = matches!((scheme, port), ("http", "80") | ("https", "443"));
    if port.is_empty() || default {
        host.to_ascii_lowercase()
    } else {
        format!("{}:{port}", host.to_ascii_lowercase())
    }
}

fn single(headers: &HeaderMap, name: header::HeaderName) -> Result<Option<&str>, ()> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v.to_str().map(Some).map_err(|_| ()),
        _ => Err(()),
    }
}

/// Refuses a foreign `Host` or `Origin`; see the module's text.
pub fn check(policy: &HostPolicy, headers: &HeaderMap, authority: Option<&str>) -> Result<(), ApiError> {
    let host = single(headers, header::HOST)
        .map_err(|()| ApiError::foreign_host("the request has more than one Host header, or one that is not text"))?;
    // No Host header: the authority of an absolute-form target (HTTP/2's `:authority`).
    let host = host.or(authority);
    if let Some(h) = host {
        if !policy.allows(h) {
            return Err(ApiError::foreign_host(format!(
                "this node does not answer to host `{}`; use its address, or add the name to `http.hosts` in the node's configuration",
                h.chars().take(100).collect::<String>()
            )));
        }
    }
    let origin = single(headers, header::ORIGIN).map_err(|()| {
        ApiError::foreign_origin("the request has more than one Origin header, or one that is not text")
    })?;
    let Some(origin) = origin else { return Ok(()) };
    let own = host.map(|h| (policy.scheme.clone(), normalized(&policy.scheme, h)));
    let theirs = origin
        .split_once("://")
        .map(|(scheme, authority)| (scheme.to_ascii_lowercase(), normalized(scheme, authority)));
    match (own, theirs) {
        (Some(own), Some(theirs)) if own == theirs => Ok(()),
        _ => Err(ApiError::foreign_origin(format!(
            "requests from web pages of origin `{}` are refused: only pages this node serves may call it",
            origin.chars().take(100).collect::<String>()
        ))),
    }
}

/// The layer: every route but the health checks.
pub async fn guard(state: axum::extract::State<Arc<crate::AppState>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path.starts_with("/health/") || path.starts_with("/api/v1/health/") {
        return next.run(request).await;
    }
    match check(&state.hosts, request.headers(), request.uri().authority().map(|a| a.as_str())) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn code(policy: &HostPolicy, pairs: &[(&'static str, &'static str)]) -> &'static str {
        match check(policy, &headers(pairs), None) {
            Ok(()) => "ok",
            Err(e) => e.code.as_str(),
        }
    }

    #[test]
    fn hosts_are_addresses_localhost_or_named() {
        let p = HostPolicy::new("http://shoal-1.internal:7700", &["Shoal.Example.com".into()]);
        for ok in [
            "127.0.0.1:7700",
            "10.1.2.3",
            "[::1]:7700",
            "[fe80::1]",
            "localhost:7700",
            "shoal-1.internal:7700",
            "shoal.example.com",
            "SHOAL.EXAMPLE.COM:443",
        ] {
            assert!(p.allows(ok), "{ok}");
        }
        for foreign in [
            "evil.example:7700",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "app.localhost",
            "",
            "[::1",
            "shoal",
        ] {
            assert!(!p.allows(foreign), "{foreign}");
        }
    }

    #[test]
    fn origins_must_be_the_nodes_own() {
        let p = HostPolicy::new("http://127.0.0.1:7700", &[]);
        assert_eq!(code(&p, &[("host", "127.0.0.1:7700")]), "ok");
        assert_eq!(code(&p, &[]), "ok", "no Host (HTTP/1.0): nothing to check");
        assert_eq!(code(&p, &[("host", "127.0.0.1:7700"), ("origin", "http://127.0.0.1:7700")]), "ok");
        assert_eq!(code(&p, &[("host", "localhost"), ("origin", "http://localhost:80")]), "ok");
        assert_eq!(code(&p, &[("host", "evil.example:7700")]), "foreign_host");
        assert_eq!(code(&p, &[("host", "127.0.0.1:7700"), ("host", "evil.example")]), "foreign_host");
        for origin in [
            "http://evil.example",
            "http://127.0.0.1:7701",
            "https://127.0.0.1:8443",
            "null",
            "http://192.168.1.5:7700",
        ] {
            let h = [("host", "127.0.0.1:7700"), ("origin", origin)];
            assert_eq!(code(&p, &h), "foreign_origin", "{origin}");
        }
        assert_eq!(code(&p, &[("origin", "http://127.0.0.1:7700")]), "foreign_origin", "an Origin but no Host");
        // With no Host header, the target's authority is what is checked.
        let absolute = check(&p, &HeaderMap::new(), Some("evil.example")).unwrap_err();
        assert_eq!(absolute.code.as_str(), "foreign_host");
        assert!(check(&p, &HeaderMap::new(), Some("127.0.0.1:7700")).is_ok());
    }
}
