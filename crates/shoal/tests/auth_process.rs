//! Access control seen from outside, with a real `shoal server` process on an empty store: the
//! first admin token (its file, its mode, what the log says), the CLI's ways of finding a
//! token and their order, `shoal token create|ls|revoke`, and a debug log that never holds a
//! token.

mod common;

use shoal_testkit::procs::{Server, Spec};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// A node on a fresh SQLite store that the harness gave no token: it must make its own.
fn start(dir: &Path) -> (Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let store = format!("sqlite://{}/shoal.db", dir.display());
    let text = common::config_text(dir, &store, "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let cfg = dir.join("n1.toml");
    std::fs::write(&cfg, text).unwrap();
    let spec = Spec::server("n1", SHOAL, &cfg, dir.join("n1.log")).env("RUST_LOG", "debug,chitchat=info");
    (Server::spawn(spec).unwrap_or_else(|e| panic!("{e}")), format!("http://127.0.0.1:{port}"))
}

/// `shoal` with `args`, run in `cwd`, with exactly these token variables.
fn shoal(cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(SHOAL);
    cmd.args(args).current_dir(cwd).env_remove("SHOAL_TOKEN").env_remove("SHOAL_TOKEN_FILE");
    cmd.envs(env.iter().copied()).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}stderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_token_is_written_privately_found_by_the_cli_and_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, url) = start(dir.path());
    node.wait_ready(&url, Instant::now() + Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{e}"));

    let file = dir.path().join("data/admin.token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin.token is readable by others");
    let admin = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert!(admin.starts_with("shoal_api_") && shoal_wire::parse_token(&admin).is_ok(), "{admin}");
    assert!(
        node.logs().contains(&file.display().to_string()),
        "the log does not say where the token is:\n{}",
        node.logs()
    );

    // Without a token: 401, exit 1, and the message says where one is.
    let elsewhere = tempfile::tempdir().unwrap();
    let o = shoal(elsewhere.path(), &[], &["--server", &url, "ps"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("(unauthenticated)") && text(&o).contains("admin.token"), "{}", text(&o));

    // `.shoal/admin.token` in the current folder is found by itself (as after `shoal up`).
    let here = tempfile::tempdir().unwrap();
    std::fs::create_dir(here.path().join(".shoal")).unwrap();
    let found = here.path().join(".shoal/admin.token");
    std::fs::write(&found, format!("{admin}\n")).unwrap();
    // Others may read it: not taken by itself.
    std::fs::set_permissions(&found, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = shoal(here.path(), &[], &["--server", &url, "ps"]);
    assert!(o.status.code() == Some(2) && text(&o).contains("mode 644"), "{}", text(&o));
    std::fs::set_permissions(&found, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = shoal(here.path(), &[], &["--server", &url, "token", "create", "ci", "--role", "viewer", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let made: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ci = made["secret"].as_str().unwrap().to_owned();
    assert_eq!((made["role"].as_str(), made["created_by"].as_str()), (Some("viewer"), Some("token:admin")), "{made}");

    // The order: --token, then SHOAL_TOKEN, then SHOAL_TOKEN_FILE, then the file here. A viewer
    // cannot list tokens, so which one was used shows in the answer.
    let file_text = file.display().to_string();
    let ls = ["--server", url.as_str(), "token", "ls"];
    let viewer_refused = |o: &Output| o.status.code() == Some(1) && text(o).contains("(forbidden)");
    let o = shoal(here.path(), &[("SHOAL_TOKEN", &admin)], &[&["--token", &ci][..], &ls].concat());
    assert!(viewer_refused(&o), "--token first: {}", text(&o));
    let o = shoal(here.path(), &[("SHOAL_TOKEN", &ci), ("SHOAL_TOKEN_FILE", &file_text)], &ls);
    assert!(viewer_refused(&o), "SHOAL_TOKEN before the file: {}", text(&o));
    let ci_file = here.path().join("ci.token");
    std::fs::write(&ci_file, &ci).unwrap();
    let o = shoal(here.path(), &[("SHOAL_TOKEN_FILE", ci_file.to_str().unwrap())], &ls);
    assert!(viewer_refused(&o), "SHOAL_TOKEN_FILE before .shoal/admin.token: {}", text(&o));
    let o = shoal(here.path(), &[], &ls);
    assert!(o.status.success(), "{}", text(&o));
    let listing = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(listing.contains("admin") && listing.contains("ci") && !listing.contains(&ci[12..]), "{listing}");
    // A mistyped token is refused before anything is sent; a missing file names itself.
    let o = shoal(here.path(), &[], &[&["--token", &ci[..ci.len() - 2]][..], &ls].concat());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("truncated"), "{}", text(&o));
    let o = shoal(here.path(), &[("SHOAL_TOKEN_FILE", "/nonexistent/t")], &ls);
    assert!(o.status.code() == Some(2) && text(&o).contains("/nonexistent/t"), "{}", text(&o));

    // Revoked through the CLI: refused at once by this node.
    let o = shoal(here.path(), &[], &["--server", &url, "token", "revoke", "ci"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = shoal(here.path(), &[("SHOAL_TOKEN", &ci)], &["--server", &url, "ps"]);
    assert!(o.status.code() == Some(1) && text(&o).contains("(invalid_token)"), "{}", text(&o));

    // A restart on the same store makes no second admin token and keeps the file.
    node.terminate().unwrap();
    node.wait().unwrap();
    let first_log = node.logs();
    let (mut again, url) = start(dir.path());
    again.wait_ready(&url, Instant::now() + Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), admin);
    let o = shoal(here.path(), &[], &["--server", &url, "token", "ls", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    assert_eq!(list["tokens"].as_array().unwrap().len(), 2, "{list}");

    // Nothing any node wrote holds a token's secret (at debug level, both runs).
    let logs = first_log + &again.logs();
    assert!(logs.contains("token created"), "the log is not at debug level, or tokens are not logged at all");
    for secret in [&admin, &ci] {
        let body = &secret["shoal_api_".len()..];
        assert!(!logs.contains(body), "a log line holds a token");
    }
    again.terminate().unwrap();
}
