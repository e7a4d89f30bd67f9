//! `hearth-server`: parse flags, set up logging, hand over to the library.

use clap::Parser;
use hearth_server::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    hearth_server::cli::init_logging();
    match cli.command {
        Command::Serve(args) => hearth_server::cli::serve(args).await,
        Command::Fetch(args) => hearth_server::cli::fetch(args).await,
    }
}
