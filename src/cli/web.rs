//! `fieldgate web`: lines for the web console's users file (`web.users_file`).
//!
//! `passwd NAME` reads a password (on a terminal: typed twice with echo off, through
//! rpassword; otherwise one line from stdin, for scripts) and prints
//! `user NAME ROLE <argon2id hash>`; `token NAME` makes a random bearer token, prints it once on
//! stderr and the line `token NAME ROLE sha256:<hex>` on stdout. Only the lines go to stdout, so
//! `fieldgate web passwd alice >> users` appends just the entry.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum WebCommand {
    /// Print a users-file line for NAME with an argon2id hash of the password read from stdin.
    Passwd {
        name: String,
        /// `view` (see only) or `operate` (also write, when web.allow_writes is on).
        #[arg(long, default_value = "view", value_parser = ["view", "operate"])]
        role: String,
    },
    /// Make a bearer token for scripts: the token on stderr (shown once), the users-file line
    /// with its SHA-256 on stdout.
    Token {
        name: String,
        #[arg(long, default_value = "view", value_parser = ["view", "operate"])]
        role: String,
    },
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
}

/// The password for `name`: on a terminal typed twice with echo off (the two must agree);
/// otherwise one line from stdin (scripts, pipes).
fn read_password(name: &str) -> Result<String, String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("password for {name}: "))
            .map_err(|e| format!("cannot read the password: {e}"))?;
        let again = rpassword::prompt_password("the same password again: ")
            .map_err(|e| format!("cannot read the password: {e}"))?;
        if first != again {
            return Err("the two passwords differ; nothing was written".into());
        }
        return Ok(first);
    }
    eprintln!("password for {name} (one line on stdin):");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|_| "cannot read the password from stdin".to_owned())?;
    Ok(line)
}

pub(crate) fn run(command: WebCommand) -> ExitCode {
    let (name, role) = match &command {
        WebCommand::Passwd { name, role } | WebCommand::Token { name, role } => (name, role),
    };
    if !valid_name(name) {
        eprintln!("fieldgate: a name may hold letters, digits and . _ - @ only");
        return ExitCode::FAILURE;
    }
    match command {
        WebCommand::Passwd { .. } => {
            let line = match read_password(name) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("fieldgate: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let password = line.trim_end_matches(['\r', '\n']);
            if password.len() < 8 {
                eprintln!("fieldgate: the password must have at least 8 characters");
                return ExitCode::FAILURE;
            }
            match fieldgate::web::auth::hash_password(password) {
                Ok(hash) => {
                    println!("user {name} {role} {hash}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fieldgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        WebCommand::Token { .. } => {
            let (token, stored) = fieldgate::web::auth::new_token();
            eprintln!(
                "bearer token for {name} (shown once; send it as `Authorization: Bearer <token>`):\n{token}"
            );
            println!("token {name} {role} {stored}");
            ExitCode::SUCCESS
        }
    }
}
