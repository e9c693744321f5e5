//! `cargo xtask`: the project's own build and test tasks, in Rust so they run wherever cargo does.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const HELP: &str = "\
usage: cargo xtask <task> [-- <args>]
e.g.:  cargo xtask test -- -p shoal-testkit -- --nocapture

tasks:
  deps    install what the tests need beyond Rust (scripts/install-test-deps.sh)
  test    deps, then `cargo test --workspace --all-targets <args>`
          (without --workspace when <args> pick packages with -p)
  ci      `cargo fmt --check`, `cargo clippy -D warnings`, then what `test` does
  bench   deps, a release build of `shoal` and `shoal-bench`, a throwaway PostgreSQL,
          then every `shoal-bench` run behind BENCHMARKS.md, on SQLite and on
          PostgreSQL, in one go;
          `bench --soak` also runs the 10-minute soak at the end;
          `bench --triggers` runs only the schedule and file-listener benchmarks
  help    print this
";

fn main() {
    if let Err(e) = run(std::env::args_os().skip(1).collect()) {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Vec<OsString>) -> Result<()> {
    let mut args = args.into_iter();
    let task = args.next();
    // Everything after the task goes to `cargo test`; a leading `--` only
    // separates it, as in `cargo xtask test -- -p shoal-store`.
    let mut rest: Vec<OsString> = args.collect();
    if rest.first().is_some_and(|a| a == "--") {
        rest.remove(0);
    }
    let root = workspace_root();
    match task.as_ref().and_then(|t| t.to_str()) {
        Some("deps") => deps(&root),
        Some("test") => test(&root, &rest),
        Some("ci") => ci(&root, &rest),
        Some("bench") => bench(&root, &rest),
        Some("help" | "--help" | "-h") => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => bail!("unknown task `{other}`\n\n{HELP}"),
        None => bail!("no task given\n\n{HELP}"),
    }
}

fn workspace_root() -> PathBuf {
    // xtask/ sits directly in the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask's manifest directory has a parent").to_owned()
}

/// The cargo that is running us, so a toolchain picked by rustup or by
/// `cargo +toolchain xtask` carries over to the commands we run.
fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

/// Runs `cmd` with its output going straight to ours, failing with the
/// command's name if it fails.
fn run_cmd(mut cmd: Command) -> Result<()> {
    let shown = describe(&cmd);
    eprintln!("xtask: running {shown}");
    let status = cmd.status().with_context(|| format!("cannot run `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    // Show `cargo`, not the full path of the toolchain's cargo binary.
    let program = program.file_name().unwrap_or(program.as_os_str());
    std::iter::once(program).chain(cmd.get_args()).map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

fn deps(root: &Path) -> Result<()> {
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/install-test-deps.sh")).current_dir(root);
    run_cmd(cmd)
}

fn test(root: &Path, extra: &[OsString]) -> Result<()> {
    deps(root)?;
    let mut cmd = cargo(root);
    cmd.arg("test");
    // `--workspace` would override a package chosen in `extra`.
    if !names_package(extra) {
        cmd.arg("--workspace");
    }
    cmd.arg("--all-targets").args(extra);
    // A failing test's backtrace is the first thing anyone asks for; keep a
    // caller's own choice (`full`, `0`) if it made one.
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        cmd.env("RUST_BACKTRACE", "1");
    }
    run_cmd(cmd)
}

/// Whether cargo's own arguments (those before a `--` meant for the test
/// binaries) pick packages.
fn names_package(args: &[OsString]) -> bool {
    args.iter()
        .map(|a| a.to_string_lossy())
        .take_while(|a| a != "--")
        .any(|a| a == "-p" || a.starts_with("--package") || (a.starts_with("-p") && a.len() > 2))
}

fn ci(root: &Path, extra: &[OsString]) -> Result<()> {
    let mut fmt = cargo(root);
    fmt.args(["fmt", "--all", "--", "--check"]);
    run_cmd(fmt)?;
    let mut clippy = cargo(root);
    clippy.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    run_cmd(clippy)?;
    test(root, extra)
}

/// Where the PostgreSQL client tools are (pgbench is not always on PATH).
fn pg_bindir() -> String {
    Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "/usr/lib/postgresql/15/bin".into())
}

/// Runs every benchmark of BENCHMARKS.md in one process, so the SQLite and PostgreSQL
/// figures come from the same build, machine and moment. `--soak` adds the 10-minute soak.
fn bench(root: &Path, extra: &[OsString]) -> Result<()> {
    let soak = extra.iter().any(|a| a == "--soak");
    let triggers_only = extra.iter().any(|a| a == "--triggers");
    if let Some(other) = extra.iter().find(|a| *a != "--soak" && *a != "--triggers") {
        bail!("unknown bench option `{}`; the options are --soak and --triggers", other.to_string_lossy());
    }
    deps(root)?;
    // The benchmarks are a binary of their own; the nodes they start are the `shoal` built
    // beside it, which it finds next to itself.
    let mut build = cargo(root);
    build.args(["build", "--release", "-p", "shoal", "-p", "shoal-bench"]);
    run_cmd(build)?;
    // Where that build went: CARGO_TARGET_DIR if set (relative to the workspace), else target/.
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |d| root.join(d));
    let bench = target.join("release/shoal-bench");
    let pg = shoal_testkit::postgres();
    let stores = [("sqlite", None), ("postgres", Some(pg.fresh_database()))];
    let run = |args: &[&str], store: &Option<String>| -> Result<()> {
        let mut cmd = Command::new(&bench);
        cmd.args(args);
        if let Some(url) = store {
            cmd.args(["--store", url]);
        }
        run_cmd(cmd)
    };
    // Schedules and listeners on PostgreSQL: lateness with 1000 schedules firing every second
    // on 3 nodes, how many one node carries, and file events.
    let triggers = || -> Result<()> {
        run(
            &["schedules", "--nodes", "3", "--schedules", "1000", "--duration", "30s", "--slots", "1000"],
            &Some(pg.fresh_database()),
        )?;
        run(
            &[
                "schedules",
                "--nodes",
                "1",
                "--schedules",
                "100,250,500,1000,2000",
                "--duration",
                "20s",
                "--slots",
                "1000",
            ],
            &Some(pg.fresh_database()),
        )?;
        run(&["files", "--nodes", "3", "--files", "300"], &Some(pg.fresh_database()))
    };
    if triggers_only {
        return triggers();
    }
    for (_, store) in &stores {
        // A fresh database per run keeps one run's rows from slowing the next.
        let fresh = || store.as_ref().map(|_| pg.fresh_database());
        let noop = ["throughput", "--kind", "noop", "--count", "20000", "--concurrency", "32", "--slots", "64"];
        let true_ = ["throughput", "--kind", "true", "--count", "2000", "--concurrency", "16", "--slots", "16"];
        run(&noop, &fresh())?;
        if store.is_some() {
            // The same on 3 in-process nodes, side by side with the single node.
            run(&[&noop[..], &["--nodes", "3"]].concat(), &fresh())?;
        }
        run(&true_, &fresh())?;
        if store.is_some() {
            run(&[&true_[..], &["--nodes", "3"]].concat(), &fresh())?;
        }
        run(&["latency", "--count", "300"], &fresh())?;
        run(&["forwarding", "--count", "2000"], &fresh())?;
    }
    run(&["startup", "--count", "10"], &None)?;
    // Cluster behaviour on PostgreSQL: SIGKILL failover across real processes, and a node
    // cut off from the store.
    run(&["failover", "--nodes", "3", "--kills", "20", "--lease", "10s"], &Some(pg.fresh_database()))?;
    run(&["cutoff", "--rounds", "5", "--lease", "4s"], &Some(pg.fresh_database()))?;
    // Read replicas and a primary's failover, on servers of their own.
    run(&["replicas", "--concurrency", "16", "--duration", "5s", "--rounds", "3", "--requests", "2000"], &None)?;
    run(&["promotion", "--rounds", "7"], &None)?;
    // Behind PgBouncer in transaction mode, and prepared against unnamed statements.
    run(&["pooler", "--count", "5000", "--rounds", "5", "--requests", "2000", "--statements", "5000"], &None)?;
    triggers()?;
    // The reference point of the performance targets: small transactions per second this PostgreSQL
    // commits (pgbench's simple-update script, 8 clients), measured in the same run.
    let db = pg.fresh_database();
    let bin = Path::new(&pg_bindir()).join("pgbench");
    let mut init = Command::new(&bin);
    init.args(["-i", "-s", "1", "-q", &db]);
    run_cmd(init)?;
    let mut pgbench = Command::new(&bin);
    pgbench.args(["-N", "-c", "8", "-j", "2", "-T", "10", &db]);
    run_cmd(pgbench)?;
    if soak {
        run(&["soak", "--duration", "10m", "--nodes", "3", "--burn", "2"], &Some(pg.fresh_database()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::names_package;
    use std::ffi::OsString;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn package_selection_is_seen_only_in_cargo_args() {
        assert!(names_package(&args(&["-p", "shoal-store"])));
        assert!(names_package(&args(&["-pshoal-store"])));
        assert!(names_package(&args(&["--package=shoal-store"])));
        assert!(!names_package(&args(&["--release"])));
        assert!(!names_package(&args(&["--", "-p"])));
    }
}
