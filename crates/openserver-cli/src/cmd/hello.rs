//! `openserver hello`: log in to a server and say hello, the smallest end-to-end check.

use crate::cmd::connect::{connect_and_login, ConnectArgs};
use anyhow::{Context as _, Result};
use clap::Args;

/// Arguments of `openserver hello`.
#[derive(Args, Debug)]
pub struct HelloArgs {
    /// Where to connect and how to log in.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Text to send; the server answers "Hello MESSAGE".
    pub message: String,
}

/// Connects, logs in, says hello, prints the answer.
pub async fn run(args: HelloArgs) -> Result<()> {
    let client = connect_and_login(&args.connect).await?;
    let answer = client.hello(&args.message).await.context("hello failed")?;
    println!("{answer}");
    client.quit().await;
    Ok(())
}
