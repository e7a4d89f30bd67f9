//! `hearth-server cascade`: a Cascade's router, as the operator runs it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use hearth_engine::registry::Registry;

use super::serve::{HttpArgs, read_keys};
use super::shutdown_signal;
use crate::api::{self, AppState};

/// Flags of `cascade`.
#[derive(Debug, Args)]
pub struct CascadeArgs {
    /// The router configuration (`router.yaml`, as the operator writes it).
    #[arg(long)]
    pub config: PathBuf,
    /// A file whose first key is sent to every stage as `Authorization: Bearer KEY`.
    #[arg(long, env = "HEARTH_UPSTREAM_API_KEY_FILE")]
    pub upstream_api_key_file: Option<PathBuf>,
    /// Listening address, API keys and limits.
    #[command(flatten)]
    pub http: HttpArgs,
}

/// Reads a router configuration file.
pub fn read_router_config(path: &std::path::Path) -> anyhow::Result<hearth_crds::router::RouterConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if text.lines().any(|l| l.trim_start().starts_with("kind:")) {
        bail!(
            "{} is a Kubernetes resource; `cascade` reads the router configuration the operator writes \
             (`hearth-server up -f stack.yaml` serves a Cascade from a stack file)",
            path.display()
        );
    }
    serde_yaml::from_str(&text).with_context(|| format!("{}: not a router configuration", path.display()))
}

/// Runs `cascade`: routes requests through the stages until SIGTERM or Ctrl-C.
pub async fn cascade(args: CascadeArgs) -> anyhow::Result<()> {
    let config = read_router_config(&args.config)?;
    let upstream_key = match &args.upstream_api_key_file {
        Some(path) => read_keys(path)?.into_iter().next(),
        None => None,
    };
    let registry = Arc::new(Registry::default());
    registry.set_ready(true);
    let name = config.name.clone();
    let stages: Vec<String> = config.stages.iter().map(|s| format!("{} at {}", s.model, s.endpoint)).collect();
    let state = AppState::new(registry, args.http.api_config()?).with_cascades(|metrics| {
        hearth_cascade::CascadeRouter::new(config, metrics.clone(), upstream_key).map(|r| vec![r])
    })?;
    let (listener, addr) = args.http.listen().await?;
    tracing::info!(%addr, cascade = %name, stages = ?stages, "routing");
    api::serve(listener, state, shutdown_signal()).await?;
    Ok(())
}
