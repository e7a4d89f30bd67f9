//! The `hearth-server` command line: parse flags, build the pieces, hand over. One file per
//! subcommand: its flags and what it runs.

mod agent;
mod cascade;
mod fetch;
mod ingest;
mod serve;
mod up;

use clap::{Parser, Subcommand};

pub use agent::{AgentArgs, agent};
pub use cascade::{CascadeArgs, cascade, read_router_config};
pub use fetch::{FetchArgs, fetch};
pub use ingest::{IngestArgs, ingest};
pub use serve::{HttpArgs, ServeArgs, ServePlan, load_into, open_device, serve};
pub use up::{UpArgs, default_data_dir, up};

/// Hearth's inference server.
#[derive(Debug, Parser)]
#[command(
    name = "hearth-server",
    version,
    about = "Hearth's inference server: an OpenAI-compatible API over local models"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve one model over the OpenAI-compatible API.
    Serve(ServeArgs),
    /// Download model weights into the cache and verify their SHA-256; prints the path.
    Fetch(FetchArgs),
    /// Route requests through a Cascade: the cheapest stage first, escalating on low confidence.
    Cascade(CascadeArgs),
    /// Serve a whole stack (Models, Cascades, KnowledgeBases, Agents) from one process: the YAML a cluster takes.
    Up(UpArgs),
    /// Ingest the knowledge bases of a stack file into the embedded store, with progress bars.
    Ingest(IngestArgs),
    /// Serve one Agent (its `agent.yaml`, as the operator writes it): the chat API with
    /// model = the agent's name, and the runs API.
    Agent(AgentArgs),
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Sets up logging: JSON lines when LOG_FORMAT=json, else human-readable; RUST_LOG filters.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
