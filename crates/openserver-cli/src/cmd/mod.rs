//! The subcommands, one file each, and what they share.

pub mod bench;
pub mod channels;
pub mod config;
pub mod connect;
pub mod hello;
pub mod reload;
pub mod serve;
pub mod sessions;
pub mod token;
pub mod user;

use anyhow::{bail, Context as _, Result};
use openserver::wire::Secret;
use std::io::BufRead as _;

/// Reads a password from the first line of standard input.
pub fn read_stdin_line() -> Result<Secret> {
    let mut line = String::new();
    let read = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    if read == 0 {
        bail!("no password on standard input");
    }
    // Only the line ending goes; spaces may be part of the password.
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    Ok(Secret::new(line))
}

/// Reads a password from stdin (`--password-stdin`) or prompts for it without echo.
pub fn read_password(from_stdin: bool, prompt: &str) -> Result<String> {
    if from_stdin {
        return Ok(read_stdin_line()?.expose().to_owned());
    }
    rpassword::prompt_password(prompt)
        .context("cannot read the password from the terminal (use --password-stdin?)")
}
