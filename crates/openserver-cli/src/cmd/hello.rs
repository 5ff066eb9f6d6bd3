//! `openserver hello`: log in to a server and say hello, the smallest end-to-end check.

use crate::cmd::connect::{connect_and_login, explain_request, ConnectArgs};
use anyhow::Result;
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
    let answer = client.hello(&args.message).await;
    client.quit().await;
    let answer = answer.map_err(|e| explain_request(e, &args.connect, "hello"))?;
    println!("{answer}");
    Ok(())
}
