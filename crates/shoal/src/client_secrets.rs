//! `shoal secret set|ls|rm|rewrap`: job secrets (`{secret.NAME}` in a job file's `env`). A
//! value is read from standard input, never from the command line (which shows in `ps` and
//! shell history), and no command ever prints one: the API never answers it.

use crate::client_cmds::{CmdResult, EXIT_OK, EXIT_USAGE};
use crate::output::{emit, key_values, print_json, rows_table, short_time, Row};
use shoal_client::{Client, Secret, SecretRequest};
use std::io::{IsTerminal, Read};

const MAX_READ: u64 = 64 * 1024 + 3;

#[derive(clap::Subcommand, Debug)]
pub enum SecretCmd {
    /// Set a secret (made or replaced); the value is all of standard input, less one trailing
    /// newline (`\n` or `\r\n`), or on a terminal a line typed without echo. 4 bytes to 64 KiB
    Set {
        /// The name job files use, as `{secret.NAME}` (letters, digits, `_`, `-`; a letter first)
        name: String,
        /// The sandbox whose jobs see it (needs editor there); without: cluster-wide (needs admin)
        #[arg(long)]
        sandbox: Option<String>,
    },
    /// List secrets: names, sandbox, key id, who set them and when (never a value)
    Ls {
        /// Only this sandbox's secrets
        #[arg(long)]
        sandbox: Option<String>,
    },
    /// Remove a secret; attempts that start later and name it fail, saying so
    Rm {
        name: String,
        /// The sandbox it belongs to; without: the cluster-wide one
        #[arg(long)]
        sandbox: Option<String>,
    },
    /// Seal every secret again with the current key of the node that answers (after rotating
    /// `cluster.secrets_key_file`; docs/security.md) (admin)
    Rewrap,
}

impl Row for Secret {
    const HEADERS: &'static [&'static str] = &["NAME", "SANDBOX", "KEY ID", "UPDATED BY", "UPDATED", "CREATED"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.sandbox.clone().unwrap_or_else(|| "(cluster)".into()),
            self.key_id.clone(),
            self.updated_by.clone(),
            short_time(Some(&self.updated_at)),
            short_time(Some(&self.created_at)),
        ]
    }
}

/// The value: all of standard input less one trailing newline, or a line typed without echo.
fn read_value(name: &str) -> Result<String, String> {
    let value = if std::io::stdin().is_terminal() {
        eprint!("value of secret `{name}`: ");
        rpassword::read_password().map_err(|e| format!("cannot read the value: {e}"))?
    } else {
        let mut text = String::new();
        std::io::stdin()
            .lock()
            // A little over the server's limit (64 KiB): a larger value is refused by the
            // server, which says so, without this reading a whole file into memory.
            .take(MAX_READ)
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read the value from standard input (it must be UTF-8): {e}"))?;
        let trimmed = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
        trimmed.to_owned()
    };
    if value.is_empty() {
        return Err(format!("the value is empty: give it on standard input, e.g. `shoal secret set {name} < file`"));
    }
    Ok(value)
}

pub(crate) async fn cmd_secret(client: &Client, cmd: SecretCmd, json: bool) -> CmdResult {
    match cmd {
        SecretCmd::Set { name, sandbox } => {
            let value = match read_value(&name) {
                Ok(v) => v,
                Err(message) => {
                    eprintln!("error: {message}");
                    return Ok(EXIT_USAGE);
                }
            };
            let secret = client.set_secret(&name, sandbox.as_deref(), &SecretRequest { value }).await?;
            if json {
                print_json(&secret);
            } else {
                emit(&key_values(&[
                    ("name", secret.name.clone()),
                    ("sandbox", secret.sandbox.clone().unwrap_or_else(|| "(cluster)".into())),
                    ("key_id", secret.key_id.clone()),
                    ("updated_by", secret.updated_by.clone()),
                    ("updated_at", secret.updated_at.clone()),
                ]));
            }
        }
        SecretCmd::Ls { sandbox } => {
            let list = client.secrets(sandbox.as_deref()).await?;
            if json {
                print_json(&list);
            } else {
                emit(&rows_table(&list.secrets));
            }
        }
        SecretCmd::Rm { name, sandbox } => {
            client.delete_secret(&name, sandbox.as_deref()).await?;
            if !json {
                match &sandbox {
                    Some(s) => emit(&format!("removed secret {name} of sandbox {s}\n")),
                    None => emit(&format!("removed cluster-wide secret {name}\n")),
                }
            }
        }
        SecretCmd::Rewrap => {
            let done = client.rewrap_secrets().await?;
            if json {
                print_json(&done);
            } else {
                emit(&format!(
                    "sealed {} secret(s) again with key {} ({} set meanwhile, left as they are)\n",
                    done.rewrapped, done.key_id, done.skipped
                ));
            }
        }
    }
    Ok(EXIT_OK)
}
