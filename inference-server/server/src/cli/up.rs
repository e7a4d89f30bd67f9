//! `hearth-server up -f stack.yaml`: a whole stack in one process (local mode).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use hearth_crds::model::ModelTask;
use hearth_engine::registry::Registry;

use super::serve::{HttpArgs, ServePlan, load_into};
use super::shutdown_signal;
use crate::api::{self, AppState};
use crate::local::stack::{serve_agents, serve_knowledge_bases};

/// Flags of `up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// The stack: multi-document YAML of Model, Cascade, KnowledgeBase and Agent resources.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// The model cache, where remote weights are fetched and what `${HEARTH_MODELS}` means in
    /// the stack (default: $HEARTH_CACHE/models, else ~/.cache/hearth/models).
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// CPU threads for model work (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where models run: cpu, cuda, metal or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Where knowledge bases keep their vectors (default: $XDG_DATA_HOME/hearth, else
    /// ~/.local/share/hearth).
    #[arg(long, env = "HEARTH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Listening address, API keys and limits.
    #[command(flatten)]
    pub http: HttpArgs,
}

/// The default data directory of local mode.
pub fn default_data_dir() -> PathBuf {
    match (std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME")) {
        (Some(xdg), _) if !xdg.is_empty() => PathBuf::from(xdg).join("hearth"),
        (_, Some(home)) => PathBuf::from(home).join(".local/share/hearth"),
        _ => PathBuf::from(".hearth"),
    }
}

/// Reads and validates a stack file, and plans it against the model cache.
pub(super) fn read_stack(
    file: &std::path::Path,
    models_dir: &std::path::Path,
) -> anyhow::Result<(Vec<hearth_crds::Model>, crate::local::StackPlan)> {
    let shown = file.display().to_string();
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {shown}"))?;
    let resources = hearth_crds::parse_stack(&text, &shown)?;
    let stack = crate::local::stack_models(&resources);
    Ok((stack, crate::local::plan(resources, models_dir)?))
}

/// Makes the models' weights local (fetching with progress bars on a terminal) and plans
/// their loading on `device`.
pub(super) async fn materialize_all<'a>(
    models: impl IntoIterator<Item = &'a crate::local::LocalModel>,
    models_dir: &std::path::Path,
    device: &str,
) -> anyhow::Result<Vec<ServePlan>> {
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut loads = Vec::new();
    for model in models {
        let path = crate::local::materialize(model, models_dir, progress).await?;
        loads.push(ServePlan {
            name: model.name.clone(),
            path,
            task: model.task,
            limits: model.limits.clone(),
            device: device.to_owned(),
            // Tenants are the HTTP layer's business in `up` (read from the stack).
            tenants: Vec::new(),
        });
    }
    Ok(loads)
}

/// A random key for this process's calls to itself (32 bytes from the thread's CSPRNG, which
/// the OS seeds; hex).
pub(super) fn internal_key() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The base URL this process reaches itself at (a wildcard address becomes loopback).
pub(super) fn self_base(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        if addr.is_ipv4() { std::net::IpAddr::from([127, 0, 0, 1]) } else { std::net::Ipv6Addr::LOCALHOST.into() }
    } else {
        addr.ip()
    };
    format!("http://{}/v1", SocketAddr::new(ip, addr.port()))
}

/// Runs `up`: validates the stack, fetches missing weights, listens, loads every model, then
/// serves Models and Cascades on one port until SIGTERM or Ctrl-C.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    if let Some(threads) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().context("cannot size the thread pool")?;
    }
    let shown = args.file.display().to_string();
    let models_dir = args.models_dir.clone().unwrap_or_else(crate::fetch::model_cache_dir);
    let (stack, plan) = read_stack(&args.file, &models_dir)?;
    if plan.models.is_empty() {
        bail!("{shown} holds no Model: nothing to serve");
    }
    let loads = materialize_all(&plan.models, &models_dir, &args.device).await?;

    let tenanted: Vec<(String, Vec<hearth_crds::model::Tenant>)> = stack
        .iter()
        .filter(|m| !m.spec.tenants.is_empty())
        .map(|m| (m.metadata.name.clone().unwrap_or_default(), m.spec.tenants.clone()))
        .collect();
    let mut api_config = args.http.api_config_with_tenants(&tenanted)?;
    // The cascades and agents call this process's own routes, with its own key when keys are
    // required: an operator key, made up for this process when only tenants have keys.
    if api_config.api_keys.is_empty() && !api_config.tenants.is_empty() {
        api_config.api_keys.push(internal_key());
    }
    let self_key = api_config.api_keys.first().cloned();
    let (listener, addr) = args.http.listen().await?;
    let base = self_base(addr);
    let routers = plan.routers(&base, &stack);
    let registry = Arc::new(Registry::default());
    let state = AppState::new(registry.clone(), api_config).with_cascades(|metrics| {
        routers
            .into_iter()
            .map(|config| hearth_cascade::CascadeRouter::new(config, metrics.clone(), self_key.clone()))
            .collect::<Result<Vec<_>, _>>()
    })?;
    tracing::info!(%addr, models = loads.len(), cascades = plan.cascades.len(), "listening; loading the models");
    // Ready only once the knowledge bases are ingested too: loading models marks the registry
    // ready, so it is held back until then.
    let server = tokio::spawn(api::serve(listener, state.clone(), shutdown_signal()));
    let loader = {
        let registry = registry.clone();
        let loads = loads.clone();
        tokio::task::spawn_blocking(move || load_into(&registry, &loads))
    };
    match loader.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(e) => bail!("the loader panicked: {e}"),
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let base_dir = args.file.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    registry.set_ready(false);
    let ingested = serve_knowledge_bases(&plan, &registry, &state, &data_dir, &base_dir).await?;
    serve_agents(&plan, &state, &base, self_key.as_deref(), &data_dir, &base_dir).await?;
    registry.set_ready(true);
    println!("{}", up_banner(&base, &loads, &plan, &ingested));
    server.await.context("the server task failed")??;
    Ok(())
}

/// What `up` prints once everything is loaded: what is served and how to reach it.
fn up_banner(
    base: &str,
    loads: &[ServePlan],
    plan: &crate::local::StackPlan,
    ingested: &[(String, hearth_knowledge::IngestReport)],
) -> String {
    let names =
        |task: ModelTask| -> Vec<&str> { loads.iter().filter(|l| l.task == task).map(|l| l.name.as_str()).collect() };
    let mut out = format!("Hearth is up: {base}\n");
    let chat = names(ModelTask::Chat);
    if !chat.is_empty() {
        out.push_str(&format!("  chat models:      {}\n", chat.join(", ")));
    }
    let embedding = names(ModelTask::Embedding);
    if !embedding.is_empty() {
        out.push_str(&format!("  embedding models: {}\n", embedding.join(", ")));
    }
    for cascade in &plan.cascades {
        let stages: Vec<&str> = cascade.spec.stages.iter().map(|s| s.model.as_str()).collect();
        out.push_str(&format!(
            "  cascade:          {} ({})\n",
            cascade.metadata.name.as_deref().unwrap_or_default(),
            stages.join(" → ")
        ));
    }
    for (name, report) in ingested {
        out.push_str(&format!(
            "  knowledge base:   {name} ({} documents, {} chunks; {base}/knowledgebases/{name}/query)\n",
            report.documents, report.chunks
        ));
    }
    for agent in &plan.agents {
        let name = agent.metadata.name.as_deref().unwrap_or_default();
        out.push_str(&format!("  agent:            {name} ({base}/agents/{name}/runs)\n"));
    }
    let chat_example = plan
        .agents
        .first()
        .and_then(|a| a.metadata.name.clone())
        .or_else(|| plan.cascades.first().and_then(|c| c.metadata.name.clone()))
        .or_else(|| chat.first().map(|s| (*s).to_owned()));
    let (route, body) = match (chat_example, ingested.first(), embedding.first()) {
        (Some(model), _, _) => (
            "chat/completions".to_owned(),
            format!("{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}"),
        ),
        (None, Some((kb, _)), _) => {
            (format!("knowledgebases/{kb}/query"), "{\"query\": \"What is in here?\"}".to_owned())
        }
        (None, None, Some(model)) => {
            ("embeddings".to_owned(), format!("{{\"model\": \"{model}\", \"input\": \"Hello!\"}}"))
        }
        (None, None, None) => return out,
    };
    out.push_str(&format!(
        "Point an OpenAI client at it:\n  export OPENAI_BASE_URL={base} OPENAI_API_KEY=unused\n  \
         curl {base}/{route} -H 'Content-Type: application/json' \\\n    -d '{body}'"
    ));
    out
}
