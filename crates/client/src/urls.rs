//! Building request URLs: server base URLs, percent-encoded path segments, query strings.
//!
//! Everything a user typed (sandbox names, execution ids, file paths) is percent-encoded
//! segment by segment, so a `?`, `#` or `%` in a name reaches the server as part of the name
//! instead of changing the request. The one thing encoding cannot protect is a `.` or `..`
//! segment: URL parsing (WHATWG, which the `url` crate follows) folds those away even when
//! written as `%2e`, so a `..` is refused here rather than silently turned into another path.

use crate::error::{Error, Result};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use url::Url;

/// Everything but RFC 3986's unreserved characters is encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// The API's prefix under a server's base URL.
pub const API_PREFIX: &str = "/api/v1";

/// Checks and normalises one server base URL. A bare `host:port` means `http://host:port`.
pub fn parse_server(raw: &str) -> Result<String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(Error::Other("an empty server URL was given".into()));
    }
    let with_scheme = if raw.contains("://") { raw.to_owned() } else { format!("http://{raw}") };
    let url = Url::parse(&with_scheme)
        .map_err(|e| Error::Other(format!("server URL `{raw}` is not valid: {e}; give it as http://HOST:PORT")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(Error::Other(format!("server URL `{raw}` must start with http:// or https://")));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Error::Other(format!("server URL `{raw}` has no host")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::Other(format!("server URL `{raw}` may not have a query or fragment")));
    }
    // A trailing slash would double up with the paths appended to it.
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// One percent-encoded path segment (a sandbox name, an execution id, a node id).
pub fn segment(value: &str) -> Result<String> {
    if value == "." || value == ".." {
        return Err(Error::Other(format!("`{value}` cannot be used as a name")));
    }
    Ok(utf8_percent_encode(value, SEGMENT).to_string())
}

/// A sandbox file path: each segment encoded, the `/` between them kept.
pub fn file_path(path: &str) -> Result<String> {
    let mut out = Vec::new();
    for part in path.split('/') {
        match part {
            ".." => {
                return Err(Error::Other(format!(
                    "path `{path}` has a `..` component; sandbox paths cannot leave the sandbox"
                )))
            }
            // The server ignores `.` segments too; dropping them here keeps the URL unambiguous.
            "." => {}
            p => out.push(utf8_percent_encode(p, SEGMENT).to_string()),
        }
    }
    Ok(out.join("/"))
}

/// The full URL of an API path (already encoded, starting with `/`) on one server.
pub fn endpoint(base: &str, path: &str, query: &[(&str, String)]) -> Result<Url> {
    let mut url = Url::parse(&format!("{base}{API_PREFIX}{path}"))
        .map_err(|e| Error::Other(format!("cannot build a URL from `{base}` and `{path}`: {e}")))?;
    if !query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query {
            pairs.append_pair(k, v);
        }
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_normalised() {
        assert_eq!(parse_server("http://127.0.0.1:7700").unwrap(), "http://127.0.0.1:7700");
        assert_eq!(parse_server("http://127.0.0.1:7700/").unwrap(), "http://127.0.0.1:7700");
        assert_eq!(parse_server(" 127.0.0.1:7700 ").unwrap(), "http://127.0.0.1:7700");
        assert_eq!(parse_server("https://lb.example/shoal/").unwrap(), "https://lb.example/shoal");
        for bad in ["", "ftp://x", "http://", "http://h:99999", "http://h/?q=1"] {
            assert!(parse_server(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("plain-name_1.x~").unwrap(), "plain-name_1.x~");
        assert_eq!(segment("a b/c?d#e%f").unwrap(), "a%20b%2Fc%3Fd%23e%25f");
        assert_eq!(segment("é").unwrap(), "%C3%A9");
        assert!(segment("..").is_err());
        assert!(segment(".").is_err());
    }

    #[test]
    fn file_paths_keep_their_slashes() {
        assert_eq!(file_path("data/in put/x?.csv").unwrap(), "data/in%20put/x%3F.csv");
        assert_eq!(file_path("./a/./b").unwrap(), "a/b");
        assert_eq!(file_path("").unwrap(), "");
        assert!(file_path("a/../../etc/passwd").is_err());
    }

    #[test]
    fn endpoints_join_base_prefix_and_query() {
        let u = endpoint("http://h:1", "/executions", &[("state", "running".into()), ("job", "jobs/a b.toml".into())])
            .unwrap();
        assert_eq!(u.as_str(), "http://h:1/api/v1/executions?state=running&job=jobs%2Fa+b.toml");
        let u = endpoint("https://lb/shoal", &format!("/sandboxes/{}/files/{}", segment("s").unwrap(), "a%20b"), &[])
            .unwrap();
        assert_eq!(u.as_str(), "https://lb/shoal/api/v1/sandboxes/s/files/a%20b");
    }
}
