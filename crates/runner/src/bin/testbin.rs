//! Test-only stand-in for the shoal binary: dispatches `__supervise` like shoal must, and
//! has a `parent` mode that starts a job and then waits to be killed by a test.

use std::io::Write;

use shoal_runner::{supervise_main, Launcher, SpawnSpec, SUPERVISE_SUBCOMMAND};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(SUPERVISE_SUBCOMMAND) {
        // Before anything else, and before any runtime exists, as in shoal.
        args.remove(0);
        supervise_main(args);
    }
    match args.first().map(String::as_str) {
        // parent -- PROGRAM ARGS...: spawn the job, print the supervisor pid, wait forever.
        Some("parent") if args.get(1).map(String::as_str) == Some("--") => {
            let argv = args.split_off(2);
            if let Err(e) = parent(argv) {
                eprintln!("shoal-runner-testbin: {e}");
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!("usage: shoal-runner-testbin __supervise ... | parent -- PROGRAM ARGS...");
            std::process::exit(2);
        }
    }
}

fn parent(argv: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(async {
        let launcher = Launcher::new(std::env::current_exe()?)?;
        let mut child = launcher
            .spawn(SpawnSpec {
                argv,
                cwd: std::env::current_dir()?,
                env: Vec::new(),
                kill_grace: std::time::Duration::from_secs(30),
                deadline_file: None,
            })
            .await?;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "{}", child.pid())?;
        stdout.flush()?;
        // Keep draining the job's output so it never blocks, and keep the handle alive.
        if let Some(mut output) = child.take_output() {
            while output.recv().await.is_some() {}
        }
        let _ = child.wait().await;
        std::future::pending::<()>().await;
        Ok(())
    })
}
