//! The `hearth-server` command line: parse flags, build the pieces, hand over.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use hearth_crds::Resource;
use hearth_crds::model::ModelTask;

use crate::api::{self, ApiConfig, AppState};
use crate::registry::{ChatModel, EmbeddingService, Registry, ServedModel, ServingLimits};

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

/// Flags of `fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// hf://ORG/REPO/FILE[@REV], https://…, file:///PATH or pvc://CLAIM/PATH.
    pub uri: String,
    /// Expected SHA-256 (hex); a mismatch deletes the file and fails.
    #[arg(long)]
    pub sha256: Option<String>,
    /// Cache directory (default: $HEARTH_CACHE/models, else ~/.cache/hearth/models).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `fetch`.
pub async fn fetch(args: FetchArgs) -> anyhow::Result<()> {
    let cache = args.cache.unwrap_or_else(crate::fetch::model_cache_dir);
    let progress = !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fetched = crate::fetch::fetch(&args.uri, args.sha256.as_deref(), &cache, progress).await?;
    if fetched.downloaded_bytes == 0 {
        tracing::info!(path = %fetched.path.display(), "already present and verified");
    } else {
        tracing::info!(path = %fetched.path.display(), bytes = fetched.downloaded_bytes, "downloaded and verified");
    }
    println!("{}", fetched.path.display());
    Ok(())
}

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Weights: a GGUF file (chat) or a directory with model.safetensors, config.json and
    /// tokenizer.json (embeddings); a `file://` URI works too. Defaults to the source of --config.
    #[arg(long)]
    pub model: Option<String>,
    /// A Model resource (YAML, as `kubectl apply` takes it) whose spec configures the server.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Name clients pass as `model`; defaults to the Model's name or the file stem.
    #[arg(long)]
    pub name: Option<String>,
    /// Serve embeddings instead of chat (implied by a directory or `task: embedding`).
    #[arg(long)]
    pub embedding: bool,
    /// Listening address, API keys and limits.
    #[command(flatten)]
    pub http: HttpArgs,
    /// CPU threads for model work (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where the model runs: cpu, cuda (build with `--features cuda`), metal (`--features
    /// metal`), or auto (the first accelerator available, else cpu).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Longest context served, in tokens.
    #[arg(long)]
    pub context_length: Option<usize>,
    /// Most sequences decoded together.
    #[arg(long)]
    pub max_batch_size: Option<usize>,
    /// Most requests waiting; beyond it requests get 429 at once.
    #[arg(long)]
    pub max_queue: Option<usize>,
    /// Largest max_tokens a request may ask for.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Per-request timeout in seconds.
    #[arg(long)]
    pub timeout_seconds: Option<u64>,
}

/// Flags every listening subcommand shares.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// A file of API keys, one per line; when given, requests need `Authorization: Bearer KEY`.
    #[arg(long, env = "HEARTH_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Where tenants' keys are read from: DIR/<Secret name>/<key>, as Kubernetes mounts a
    /// Secret (the Model's `spec.tenants[].apiKeySecretRef`).
    #[arg(long, env = "HEARTH_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Seconds in-flight requests may run after SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub drain_seconds: u64,
}

impl HttpArgs {
    /// The HTTP layer's settings, with no tenants.
    pub fn api_config(&self) -> anyhow::Result<ApiConfig> {
        self.api_config_with_tenants(&[])
    }

    /// The HTTP layer's settings, with the tenants of each `(model name, spec.tenants)`.
    pub fn api_config_with_tenants(
        &self,
        models: &[(String, Vec<hearth_crds::model::Tenant>)],
    ) -> anyhow::Result<ApiConfig> {
        let api_keys = match &self.api_key_file {
            Some(path) => read_keys(path)?,
            None => Vec::new(),
        };
        let mut tenants = Vec::new();
        for (name, listed) in models {
            tenants.extend(crate::api::tenants::tenants_of_model(name, listed, self.secrets_dir.as_deref())?);
        }
        crate::api::tenants::Keys::new(api_keys.clone(), tenants.clone()).map_err(anyhow::Error::msg)?;
        Ok(ApiConfig {
            api_keys,
            tenants,
            body_limit_bytes: self.max_body_bytes,
            drain: Duration::from_secs(self.drain_seconds),
        })
    }

    /// Binds the listening socket.
    pub async fn listen(&self) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
        let addr: SocketAddr =
            format!("{}:{}", self.host, self.port).parse().context("--host/--port do not form an address")?;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let bound = listener.local_addr().with_context(|| format!("cannot read the address bound for {addr}"))?;
        Ok((listener, bound))
    }
}

/// Reads a key file: one key per line, blank lines and `#` comments skipped.
fn read_keys(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the API key file {}", path.display()))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

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
        crate::cascade::CascadeRouter::new(config, metrics.clone(), upstream_key).map(|r| vec![r])
    })?;
    let (listener, addr) = args.http.listen().await?;
    tracing::info!(%addr, cascade = %name, stages = ?stages, "routing");
    api::serve(listener, state, shutdown_signal()).await?;
    Ok(())
}

/// What `serve` resolved from its flags and config.
#[derive(Clone, Debug)]
pub struct ServePlan {
    /// Served name.
    pub name: String,
    /// Weights path.
    pub path: PathBuf,
    /// Chat or embedding.
    pub task: ModelTask,
    /// Limits.
    pub limits: ServingLimits,
    /// cpu, cuda, metal or auto.
    pub device: String,
    /// The Model's tenants (`spec.tenants`), when a config gave them.
    pub tenants: Vec<hearth_crds::model::Tenant>,
}

/// Opens the compute device named on the command line.
pub fn open_device(name: &str) -> anyhow::Result<candle_core::Device> {
    use candle_core::Device;
    Ok(match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0).context("--device cuda: no CUDA device (or built without --features cuda)")?,
        "metal" => {
            Device::new_metal(0).context("--device metal: no Metal device (or built without --features metal)")?
        }
        "auto" => {
            let cuda = Device::cuda_if_available(0).unwrap_or(Device::Cpu);
            if cuda.is_cpu() { Device::metal_if_available(0).unwrap_or(Device::Cpu) } else { cuda }
        }
        other => bail!("--device must be cpu, cuda, metal or auto, got {other:?}"),
    })
}

fn path_of(uri: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = uri.strip_prefix("file://") {
        return Ok(PathBuf::from(path));
    }
    if uri.contains("://") {
        bail!(
            "{uri}: only local files can be served directly; download it first with `hearth-server fetch` (coming) or scripts/fetch-models.py"
        );
    }
    Ok(PathBuf::from(uri))
}

impl ServeArgs {
    /// Resolves flags and the optional Model config into a plan; flags win over the config.
    pub fn plan(&self) -> anyhow::Result<ServePlan> {
        let model = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                let resources = hearth_crds::parse_stack(&text, &path.display().to_string())?;
                let mut models = resources.into_iter().filter_map(|r| match r {
                    Resource::Model(m) => Some(m),
                    _ => None,
                });
                let model = models.next().with_context(|| format!("{} holds no Model", path.display()))?;
                if models.next().is_some() {
                    bail!("{} holds several Models; `serve` serves one (use `up` for a stack)", path.display());
                }
                Some(model)
            }
            None => None,
        };
        let uri = match (&self.model, &model) {
            (Some(uri), _) => uri.clone(),
            (None, Some(m)) => m.spec.source.uri.clone(),
            (None, None) => bail!("give --model PATH or --config model.yaml"),
        };
        let path = path_of(&uri)?;
        let mut limits = model.as_ref().map(|m| ServingLimits::from(&m.spec)).unwrap_or_default();
        limits.context_length = self.context_length.or(limits.context_length);
        limits.max_batch_size = self.max_batch_size.unwrap_or(limits.max_batch_size);
        limits.max_queue = self.max_queue.unwrap_or(limits.max_queue);
        limits.max_tokens = self.max_tokens.unwrap_or(limits.max_tokens);
        if let Some(t) = self.timeout_seconds {
            limits.timeout = Duration::from_secs(t);
        }
        let task = if self.embedding || path.is_dir() {
            ModelTask::Embedding
        } else {
            model.as_ref().map_or(ModelTask::Chat, |m| m.spec.task)
        };
        let name = self
            .name
            .clone()
            .or_else(|| model.as_ref().and_then(|m| m.metadata.name.clone()))
            .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into());
        let tenants = model.map(|m| m.spec.tenants).unwrap_or_default();
        Ok(ServePlan { name, path, task, limits, device: self.device.clone(), tenants })
    }
}

/// Loads one planned model on `device`.
fn load_served(plan: &ServePlan, device: &candle_core::Device) -> anyhow::Result<ServedModel> {
    let started = std::time::Instant::now();
    let served = match plan.task {
        ModelTask::Chat => {
            ServedModel::Chat(Arc::new(ChatModel::load_gguf(&plan.name, &plan.path, plan.limits.clone(), device)?))
        }
        ModelTask::Embedding => {
            ServedModel::Embedding(Arc::new(EmbeddingService::load(&plan.name, &plan.path, &plan.limits, device)?))
        }
    };
    tracing::info!(model = %plan.name, seconds = started.elapsed().as_secs_f64(), "model loaded");
    Ok(served)
}

/// Loads the planned models into the registry (call on a blocking thread), then marks it ready.
pub fn load_into(registry: &Registry, plans: &[ServePlan]) -> anyhow::Result<()> {
    let mut devices: BTreeMap<String, candle_core::Device> = BTreeMap::new();
    for plan in plans {
        if !devices.contains_key(&plan.device) {
            let device = open_device(&plan.device)?;
            tracing::info!(device = ?device, "compute device");
            devices.insert(plan.device.clone(), device);
        }
        let served = load_served(plan, &devices[&plan.device]).with_context(|| format!("loading `{}`", plan.name))?;
        registry.insert(&plan.name, served);
    }
    registry.set_ready(true);
    Ok(())
}

/// Runs `serve`: listens at once (healthz answers, readyz says 503), loads the model, then
/// serves until SIGTERM or Ctrl-C.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if let Some(threads) = args.threads {
        // main re-executed us with the environment set; the global pool follows it too.
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().context("cannot size the thread pool")?;
    }
    let plan = args.plan()?;
    let registry = Arc::new(Registry::default());
    let api_config = args.http.api_config_with_tenants(&[(plan.name.clone(), plan.tenants.clone())])?;
    let state = AppState::new(registry.clone(), api_config);
    let (listener, addr) = args.http.listen().await?;
    tracing::info!(%addr, model = %plan.name, path = %plan.path.display(), "listening; loading the model");
    let loader = {
        let registry = registry.clone();
        tokio::task::spawn_blocking(move || load_into(&registry, std::slice::from_ref(&plan)))
    };
    let server = tokio::spawn(api::serve(listener, state, shutdown_signal()));
    match loader.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.context("loading the model failed")),
        Err(e) => bail!("the loader panicked: {e}"),
    }
    server.await.context("the server task failed")??;
    Ok(())
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

/// The stores of a process's knowledge bases: one embedded store (opened when first needed)
/// shared by every knowledge base without `spec.store.qdrant`, one client per Qdrant server.
struct Stores {
    data_dir: PathBuf,
    embedded: Option<Arc<crate::kb::any::AnyStore>>,
}

impl Stores {
    fn new(data_dir: &std::path::Path) -> Self {
        Self { data_dir: data_dir.to_owned(), embedded: None }
    }

    /// The store a knowledge base's spec asks for. A Qdrant API key comes from the environment
    /// variable QDRANT_API_KEY (in a cluster, from `apiKeySecretRef`).
    fn for_spec(
        &mut self,
        name: &str,
        spec: &hearth_crds::KnowledgeBaseSpec,
    ) -> anyhow::Result<Arc<crate::kb::any::AnyStore>> {
        use crate::kb::any::AnyStore;
        if let Some(qdrant) = &spec.store.qdrant {
            let key = std::env::var("QDRANT_API_KEY").ok().filter(|k| !k.is_empty());
            let store = crate::kb::qdrant::QdrantStore::connect(&qdrant.url, key)
                .with_context(|| format!("KnowledgeBase `{name}`: spec.store.qdrant.url"))?;
            return Ok(Arc::new(AnyStore::Qdrant(store)));
        }
        if let Some(store) = &self.embedded {
            return Ok(store.clone());
        }
        let dir = self.data_dir.join("store");
        let store = crate::kb::embedded::EmbeddedStore::open(&dir).with_context(|| {
            format!("cannot open the embedded store in {} (does a running `up` hold it?)", dir.display())
        })?;
        let store = Arc::new(AnyStore::Embedded(store));
        self.embedded = Some(store.clone());
        Ok(store)
    }
}

/// Opens, ingests and serves the plan's knowledge bases (after the models have loaded).
async fn serve_knowledge_bases(
    plan: &crate::local::StackPlan,
    registry: &Registry,
    state: &AppState,
    data_dir: &std::path::Path,
    base_dir: &std::path::Path,
) -> anyhow::Result<Vec<(String, crate::kb::IngestReport)>> {
    if plan.knowledge_bases.is_empty() {
        return Ok(Vec::new());
    }
    let mut stores = Stores::new(data_dir);
    let mut reports = Vec::new();
    for kb in &plan.knowledge_bases {
        let name = kb.metadata.name.clone().unwrap_or_default();
        let Some(ServedModel::Embedding(embedder)) = registry.get(&kb.spec.embedding.model) else {
            bail!(
                "KnowledgeBase `{name}`: spec.embedding.model: `{}` is not a loaded embedding model",
                kb.spec.embedding.model
            );
        };
        let store = stores.for_spec(&name, &kb.spec)?;
        let schedule = kb
            .spec
            .schedule
            .as_deref()
            .map(crate::kb::schedule::Schedule::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("KnowledgeBase `{name}`: spec.schedule: {e}"))?;
        let opened = crate::kb::KnowledgeBase::open(&name, kb.spec.clone(), base_dir, embedder, store).await?;
        tracing::info!(knowledge_base = %name, "ingesting");
        let report = opened.ingest().await?;
        for skipped in &report.skipped {
            tracing::warn!(knowledge_base = %name, source = %skipped.source, reason = %skipped.reason, "source skipped");
        }
        let opened = Arc::new(opened);
        if let Some(schedule) = schedule {
            tokio::spawn(reindex_on_schedule(opened.clone(), schedule));
        }
        state.knowledge_bases.insert(opened);
        reports.push((name, report));
    }
    Ok(reports)
}

/// Builds and serves the plan's agents (after the knowledge bases): each reasons through
/// this process's own chat API (`base`), so a Cascade works as its model just as in a
/// cluster; memory lives in `data_dir/agents`.
async fn serve_agents(
    plan: &crate::local::StackPlan,
    state: &AppState,
    base: &str,
    key: Option<&str>,
    data_dir: &std::path::Path,
    base_dir: &std::path::Path,
) -> anyhow::Result<()> {
    use crate::agent::llm::ChatClient;
    if plan.agents.is_empty() {
        return Ok(());
    }
    let memory = Arc::new(crate::agent::memory::MemoryStore::open(&data_dir.join("agents"))?);
    let client = |name: &str| ChatClient::new(base, name, key.map(str::to_owned));
    for agent in &plan.agents {
        let name = agent.metadata.name.clone().unwrap_or_default();
        let target = agent.spec.model.model.clone().or_else(|| agent.spec.model.cascade.clone()).unwrap_or_default();
        let knowledge_base = |kb: &str| state.knowledge_bases.get(kb);
        let delegate = |other: &str| Some(client(other));
        let env = crate::agent::tools::ToolEnv {
            knowledge_base: &knowledge_base,
            agent: &delegate,
            openapi_dir: base_dir.to_owned(),
        };
        let tools = crate::agent::tools::build_tools(&agent.spec, &env)
            .await
            .map_err(|e| anyhow::anyhow!("Agent `{name}`: {e}"))?;
        let long_term = agent.spec.memory.long_term.as_ref().and_then(|l| state.knowledge_bases.get(&l.knowledge_base));
        state.agents.insert(Arc::new(crate::agent::AgentRuntime::new(
            &name,
            agent.spec.clone(),
            client(&target),
            tools,
            memory.clone(),
            long_term,
            state.metrics.agent.clone(),
        )));
    }
    Ok(())
}

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
    use crate::agent::llm::ChatClient;
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
        let store = crate::kb::qdrant::QdrantStore::connect(&qdrant.url, qdrant_key.clone())
            .with_context(|| format!("{shown}: knowledgeBases `{}`: spec.store.qdrant.url", binding.name))?;
        let embedder = crate::kb::embedder::RemoteEmbedder::connect(
            &binding.embedding.endpoint,
            &binding.embedding.name,
            key.clone(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{shown}: knowledgeBases `{}`: embedding: {e}", binding.name))?;
        let kb = crate::kb::KnowledgeBase::open(
            &binding.name,
            binding.spec.clone(),
            std::path::Path::new("."),
            crate::kb::embedder::Embedder::Remote(embedder),
            Arc::new(crate::kb::any::AnyStore::Qdrant(store)),
        )
        .await?;
        state.knowledge_bases.insert(Arc::new(kb));
    }
    let knowledge_base = |kb: &str| state.knowledge_bases.get(kb);
    let delegate = |other: &str| {
        config.agents.iter().find(|a| a.name == other).map(|a| ChatClient::new(&a.endpoint, &a.name, key.clone()))
    };
    let env = crate::agent::tools::ToolEnv {
        knowledge_base: &knowledge_base,
        agent: &delegate,
        openapi_dir: config.openapi_dir.clone().unwrap_or_else(|| hearth_crds::runtime::OPENAPI_DIR.to_owned()).into(),
    };
    let tools = crate::agent::tools::build_tools(&config.spec, &env)
        .await
        .map_err(|e| anyhow::anyhow!("Agent `{}`: {e}", config.name))?;
    let memory =
        Arc::new(crate::agent::memory::MemoryStore::open(&args.data_dir.clone().unwrap_or_else(default_data_dir))?);
    let long_term = config.spec.memory.long_term.as_ref().and_then(|l| state.knowledge_bases.get(&l.knowledge_base));
    let runtime = crate::agent::AgentRuntime::new(
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

/// Re-ingests a knowledge base whenever its schedule fires (checked each minute, UTC); a failed
/// run is logged and leaves the store as it was.
async fn reindex_on_schedule(kb: Arc<crate::kb::KnowledgeBase>, schedule: crate::kb::schedule::Schedule) {
    loop {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        tokio::time::sleep(std::time::Duration::from_secs(60 - now.as_secs() % 60)).await;
        if !schedule.matches(crate::kb::schedule::Moment::now()) {
            continue;
        }
        match kb.ingest().await {
            Ok(report) => tracing::info!(knowledge_base = %kb.name(), added = report.added, removed = report.removed,
                "scheduled re-index done"),
            Err(e) => tracing::warn!(knowledge_base = %kb.name(), "scheduled re-index failed: {e}"),
        }
    }
}

/// Reads and validates a stack file, and plans it against the model cache.
fn read_stack(
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
async fn materialize_all<'a>(
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
fn internal_key() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The base URL this process reaches itself at (a wildcard address becomes loopback).
fn self_base(addr: SocketAddr) -> String {
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
            .map(|config| crate::cascade::CascadeRouter::new(config, metrics.clone(), self_key.clone()))
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
    ingested: &[(String, crate::kb::IngestReport)],
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

/// Flags of `ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// A stack file with the KnowledgeBases and their embedding Models.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Only this knowledge base (default: every one in the file).
    #[arg(long)]
    pub knowledge_base: Option<String>,
    /// The model cache (see `up`).
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// Where the vectors live (see `up`; a running `up` holds it: use its
    /// `POST /v1/knowledgebases/NAME/ingest` instead).
    #[arg(long, env = "HEARTH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where the embedding model runs: cpu, cuda, metal or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Also write a compact summary per knowledge base (JSON lines of
    /// `hearth_crds::runtime::IngestSummary`, an error included) to this file; in a cluster the
    /// ingestion Job points it at `/dev/termination-log` and the operator reads it into status.
    #[arg(long)]
    pub report_file: Option<PathBuf>,
}

/// Runs `ingest` and, when asked, leaves its summary (or why it failed) in the report file.
pub async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let report_file = args.report_file.clone();
    let only = args.knowledge_base.clone().unwrap_or_default();
    let mut summaries = Vec::new();
    let result = ingest_all(args, &mut summaries).await;
    if let Some(path) = report_file {
        if let Err(e) = &result {
            summaries.push(hearth_crds::runtime::IngestSummary {
                knowledge_base: only,
                error: Some(format!("{e:#}")),
                ..Default::default()
            });
        }
        let mut text = String::new();
        for summary in &summaries {
            text.push_str(&serde_json::to_string(summary)?);
            text.push('\n');
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    result
}

/// Runs `ingest`: loads only the embedding models the knowledge bases need, ingests each one
/// and prints its report as JSON.
async fn ingest_all(args: IngestArgs, summaries: &mut Vec<hearth_crds::runtime::IngestSummary>) -> anyhow::Result<()> {
    let shown = args.file.display().to_string();
    let models_dir = args.models_dir.clone().unwrap_or_else(crate::fetch::model_cache_dir);
    let (_, mut plan) = read_stack(&args.file, &models_dir)?;
    if let Some(only) = &args.knowledge_base {
        plan.knowledge_bases.retain(|kb| kb.metadata.name.as_deref() == Some(only.as_str()));
        if plan.knowledge_bases.is_empty() {
            bail!("{shown} has no KnowledgeBase `{only}`");
        }
    }
    if plan.knowledge_bases.is_empty() {
        bail!("{shown} holds no KnowledgeBase to ingest");
    }
    let wanted: std::collections::BTreeSet<&str> =
        plan.knowledge_bases.iter().map(|kb| kb.spec.embedding.model.as_str()).collect();
    let wanted_models = plan.models.iter().filter(|m| wanted.contains(m.name.as_str()));
    let loads = materialize_all(wanted_models, &models_dir, &args.device).await?;
    let registry = Arc::new(Registry::default());
    {
        let registry = registry.clone();
        tokio::task::spawn_blocking(move || load_into(&registry, &loads)).await.context("the loader panicked")??;
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let mut stores = Stores::new(&data_dir);
    let base_dir = args.file.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    for kb in &plan.knowledge_bases {
        let name = kb.metadata.name.clone().unwrap_or_default();
        let Some(ServedModel::Embedding(embedder)) = registry.get(&kb.spec.embedding.model) else {
            bail!("KnowledgeBase `{name}`: spec.embedding.model: `{}` did not load", kb.spec.embedding.model);
        };
        let store = stores.for_spec(&name, &kb.spec)?;
        let opened = crate::kb::KnowledgeBase::open(&name, kb.spec.clone(), &base_dir, embedder, store).await?;
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
            if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} {pos}/{len} chunks embedded, {per_sec}") {
                bar.set_style(style);
            }
            bar.set_message(name.clone());
            bar
        });
        let report = opened
            .ingest_with(&|done, total| {
                if let Some(bar) = &bar {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                }
            })
            .await?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        summaries.push(hearth_crds::runtime::IngestSummary {
            knowledge_base: name.clone(),
            documents: report.documents as u64,
            chunks: opened.count().await?,
            added: report.added as u64,
            removed: report.removed,
            skipped: report.skipped.len() as u64,
            seconds: report.seconds,
            error: None,
        });
        println!("{}", serde_json::json!({"knowledge_base": name, "report": report}));
    }
    Ok(())
}
