//! `shoal user create|ls|rm`: the people who log in with a password (`POST /api/v1/sessions`).
//! The password is read from standard input, never from the command line (which shows in `ps`
//! and shell history).

use crate::client_cmds::{CmdResult, EXIT_OK, EXIT_USAGE};
use crate::client_tokens::parse_role;
use crate::output::{emit, key_values, print_json, rows_table, short_time, Row};
use shoal_client::{Client, User, UserRequest};
use shoal_wire::Role;
use std::io::{BufRead, IsTerminal};

#[derive(clap::Subcommand, Debug)]
pub enum UserCmd {
    /// Make a user; the password is read from standard input (one line; on a terminal, asked
    /// for twice without echo). At least 12 characters; the server keeps only its hash
    Create {
        /// A name to log in with (letters, digits, `.`, `_`, `-`, `@`)
        name: String,
        /// viewer, runner, editor or admin
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Sandbox-name glob the user may act on (`*` and `?` wildcards); repeat for several; default every sandbox
        #[arg(long = "sandbox", value_name = "GLOB")]
        sandboxes: Vec<String>,
    },
    /// List users (never their passwords)
    Ls,
    /// Delete a user by name (or id), ending their sessions; every node refuses those within a second
    Rm {
        /// The user's name or id
        name: String,
    },
}

impl Row for User {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "ROLE", "SANDBOXES", "CREATED BY", "CREATED"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.role.to_string(),
            self.sandboxes.join(","),
            self.created_by.clone(),
            short_time(Some(&self.created_at)),
        ]
    }
}

/// The password for a new user: a line of standard input, or, on a terminal, typed twice
/// without echo (the prompts on stderr).
fn read_password(name: &str) -> Result<String, String> {
    let password = if std::io::stdin().is_terminal() {
        eprint!("password for user `{name}`: ");
        let first = rpassword::read_password().map_err(|e| format!("cannot read the password: {e}"))?;
        eprint!("the same again: ");
        let again = rpassword::read_password().map_err(|e| format!("cannot read the password: {e}"))?;
        if first != again {
            return Err("the two passwords differ; run the command again".into());
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if password.is_empty() {
        return Err(
            "the password is empty: give it on standard input, e.g. `shoal user create ann --role viewer < file`"
                .into(),
        );
    }
    Ok(password)
}

pub(crate) async fn cmd_user(client: &Client, cmd: UserCmd, json: bool) -> CmdResult {
    match cmd {
        UserCmd::Create { name, role, sandboxes } => {
            let password = match read_password(&name) {
                Ok(p) => p,
                Err(message) => {
                    eprintln!("error: {message}");
                    return Ok(EXIT_USAGE);
                }
            };
            let request = UserRequest { name, password, role, sandboxes: (!sandboxes.is_empty()).then_some(sandboxes) };
            let user = client.create_user(&request).await?;
            if json {
                print_json(&user);
            } else {
                emit(&key_values(&[
                    ("id", user.id.clone()),
                    ("name", user.name.clone()),
                    ("role", user.role.to_string()),
                    ("sandboxes", user.sandboxes.join(",")),
                    ("created_by", user.created_by.clone()),
                    ("created_at", user.created_at.clone()),
                ]));
            }
        }
        UserCmd::Ls => {
            let list = client.users().await?;
            if json {
                print_json(&list);
            } else {
                emit(&rows_table(&list.users));
            }
        }
        UserCmd::Rm { name } => {
            client.delete_user(&name).await?;
            if !json {
                emit(&format!("deleted user {name} and ended their sessions\n"));
            }
        }
    }
    Ok(EXIT_OK)
}
