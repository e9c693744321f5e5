//! Black-box tests of the client commands' argument handling and exit codes that need no
//! node: usage errors exit 2, and servers that cannot be reached exit 3 naming them.

use std::process::{Command, Output};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// Runs `shoal` with these arguments and no `SHOAL_SERVER` from the caller's environment.
fn shoal(args: &[&str]) -> Output {
    Command::new(SHOAL).args(args).env_remove("SHOAL_SERVER").output().expect("the shoal binary runs")
}

fn shown(out: &Output) -> String {
    format!(
        "exit status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A URL nothing listens on: a port bound, then released.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

#[test]
fn run_without_a_job_is_a_usage_error() {
    let out = shoal(&["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(stderr(&out).contains("SANDBOX/JOB"), "{}", shown(&out));
}

#[test]
fn a_job_without_its_sandbox_is_a_usage_error() {
    let out = shoal(&["run", "hello.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(stderr(&out).contains("is not SANDBOX/JOB"), "{}", shown(&out));
}

#[test]
fn inline_command_options_are_checked() {
    for args in [
        &["run", "--command"][..],
        &["run", "examples/jobs/hello.toml", "--", "echo", "hi"][..],
        &["run", "examples/jobs/hello.toml", "--timeout", "3s"][..],
        &["run", "--command", "-p", "a=1", "--", "echo"][..],
        &["run", "examples/jobs/hello.toml", "-p", "novalue"][..],
        &["logs", "some-id", "--stream", "both"][..],
        &["sandbox", "create", "sb"][..],
    ] {
        let out = shoal(args);
        assert_eq!(out.status.code(), Some(2), "shoal {}\n{}", args.join(" "), shown(&out));
    }
}

#[test]
fn an_invalid_server_url_is_a_usage_error() {
    let out = shoal(&["ps", "--server", "ftp://example"]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(stderr(&out).contains("ftp://example"), "{}", shown(&out));
}

#[test]
fn an_unreachable_server_exits_3_and_is_named() {
    let url = dead_url();
    let out = shoal(&["ps", "--server", &url]);
    assert_eq!(out.status.code(), Some(3), "{}", shown(&out));
    let err = stderr(&out);
    assert!(err.starts_with("error: ") && err.contains(&url), "{}", shown(&out));
    assert!(out.stdout.is_empty(), "{}", shown(&out));
}

#[test]
fn every_server_is_tried_and_named() {
    let (a, b) = (dead_url(), dead_url());
    let out = Command::new(SHOAL).args(["nodes", "--json"]).env("SHOAL_SERVER", format!("{a},{b}")).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", shown(&out));
    let err = stderr(&out);
    assert!(err.contains(&a) && err.contains(&b), "{}", shown(&out));

    // --server given on the command line wins over the environment.
    let c = dead_url();
    let out = Command::new(SHOAL).args(["nodes", "--server", &c]).env("SHOAL_SERVER", &a).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", shown(&out));
    assert!(stderr(&out).contains(&c) && !stderr(&out).contains(&a), "{}", shown(&out));
}
