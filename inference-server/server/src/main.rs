//! `hearth-server`: parse flags, set up logging, hand over to the library.

use clap::Parser;
use hearth_server::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Serve(args) => args.threads,
        Command::Up(args) => args.threads,
        _ => None,
    };
    if let Some(threads) = threads {
        pin_threads(threads)?;
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(cli))
}

/// candle's CPU kernels size their thread pools from RAYON_NUM_THREADS and
/// CANDLE_NUM_THREADS when they start, and the environment cannot be changed safely once
/// threads run: so `--threads N` re-executes the process with both set to N.
fn pin_threads(threads: usize) -> anyhow::Result<()> {
    let wanted = threads.to_string();
    let set = |name: &str| std::env::var(name).is_ok_and(|v| v == wanted);
    if set("RAYON_NUM_THREADS") && set("CANDLE_NUM_THREADS") {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe()?;
        let error = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("RAYON_NUM_THREADS", &wanted)
            .env("CANDLE_NUM_THREADS", &wanted)
            .exec();
        Err(anyhow::anyhow!("cannot re-execute with {threads} threads: {error}"))
    }
    #[cfg(not(unix))]
    {
        anyhow::bail!(
            "--threads needs RAYON_NUM_THREADS={threads} and CANDLE_NUM_THREADS={threads} in the environment here"
        )
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    hearth_server::cli::init_logging();
    match cli.command {
        Command::Serve(args) => hearth_server::cli::serve(args).await,
        Command::Fetch(args) => hearth_server::cli::fetch(args).await,
        Command::Cascade(args) => hearth_server::cli::cascade(args).await,
        Command::Up(args) => hearth_server::cli::up(args).await,
        Command::Ingest(args) => hearth_server::cli::ingest(args).await,
        Command::Agent(args) => hearth_server::cli::agent(args).await,
    }
}
