//! `hearth-server agent`: one Agent, as the operator runs it, against its endpoints.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use hearth_engine::registry::Registry;

use super::serve::{HttpArgs, read_keys};
use super::shutdown_signal;
use super::up::default_data_dir;
use crate::api::{self, AppState};

/// Flags of `agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The agent runtime configuration (`agent.yaml`, as the operator writes it).
    #[arg(long, default_value = hearth_crds::runtime::AGENT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Where short-term and episodic memory are kept.
    #[arg(long, env = "HEARTH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// A file whose first key is sent to the model, embedding and delegated-agent endpoints
    /// as `Authorization: Bearer KEY`.
    #[arg(long, env = "HEARTH_UPSTREAM_API_KEY_FILE")]
    pub upstream_api_key_file: Option<PathBuf>,
    /// Listening address, API keys and limits.
    #[command(flatten)]
    pub http: HttpArgs,
}

/// Runs `agent`: serves one Agent until SIGTERM or Ctrl-C. Knowledge bases are queried in
/// their Qdrant with queries embedded by their embedding Model's endpoint.
pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    use hearth_agent::llm::ChatClient;
    let shown = args.config.display().to_string();
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("cannot read {shown}"))?;
    let config: hearth_crds::runtime::AgentRuntimeConfig =
        serde_yaml::from_str(&text).with_context(|| format!("{shown}: not an agent runtime configuration"))?;
    let key = match &args.upstream_api_key_file {
        Some(path) => read_keys(path)?.into_iter().next(),
        None => None,
    };
    let state = AppState::new(Arc::new(Registry::default()), args.http.api_config()?);
    let qdrant_key = std::env::var("QDRANT_API_KEY").ok().filter(|k| !k.is_empty());
    for binding in &config.knowledge_bases {
        let Some(qdrant) = &binding.spec.store.qdrant else {
            bail!("{shown}: knowledgeBases `{}`: spec.store.qdrant must be resolved", binding.name);
        };
        let store = hearth_knowledge::qdrant::QdrantStore::connect(&qdrant.url, qdrant_key.clone())
            .with_context(|| format!("{shown}: knowledgeBases `{}`: spec.store.qdrant.url", binding.name))?;
        let embedder = hearth_knowledge::embedder::RemoteEmbedder::connect(
            &binding.embedding.endpoint,
            &binding.embedding.name,
            key.clone(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{shown}: knowledgeBases `{}`: embedding: {e}", binding.name))?;
        let kb = hearth_knowledge::KnowledgeBase::open(
            &binding.name,
            binding.spec.clone(),
            std::path::Path::new("."),
            hearth_knowledge::embedder::Embedder::Remote(embedder),
            Arc::new(hearth_knowledge::any::AnyStore::Qdrant(store)),
        )
        .await?;
        state.knowledge_bases.insert(Arc::new(kb));
    }
    let knowledge_base = |kb: &str| state.knowledge_bases.get(kb);
    let delegate = |other: &str| {
        config.agents.iter().find(|a| a.name == other).map(|a| ChatClient::new(&a.endpoint, &a.name, key.clone()))
    };
    let env = hearth_agent::tools::ToolEnv {
        knowledge_base: &knowledge_base,
        agent: &delegate,
        openapi_dir: config.openapi_dir.clone().unwrap_or_else(|| hearth_crds::runtime::OPENAPI_DIR.to_owned()).into(),
    };
    let tools = hearth_agent::tools::build_tools(&config.spec, &env)
        .await
        .map_err(|e| anyhow::anyhow!("Agent `{}`: {e}", config.name))?;
    let memory =
        Arc::new(hearth_agent::memory::MemoryStore::open(&args.data_dir.clone().unwrap_or_else(default_data_dir))?);
    let long_term = config.spec.memory.long_term.as_ref().and_then(|l| state.knowledge_bases.get(&l.knowledge_base));
    let runtime = hearth_agent::AgentRuntime::new(
        &config.name,
        config.spec.clone(),
        ChatClient::new(&config.model.endpoint, &config.model.name, key.clone()),
        tools,
        memory,
        long_term,
        state.metrics.agent.clone(),
    );
    let tool_names = runtime.tool_names().join(", ");
    state.agents.insert(Arc::new(runtime));
    state.registry.set_ready(true);
    let (listener, addr) = args.http.listen().await?;
    tracing::info!(%addr, agent = %config.name, model = %config.model.name, tools = %tool_names, "serving the agent");
    api::serve(listener, state, shutdown_signal()).await?;
    Ok(())
}
