//! `hearth-server serve`: one model over the OpenAI-compatible API, and the HTTP flags every
//! listening subcommand shares.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use hearth_crds::Resource;
use hearth_crds::model::ModelTask;
use hearth_engine::registry::{ChatModel, EmbeddingService, Registry, ServedModel, ServingLimits};

use super::shutdown_signal;
use crate::api::{self, ApiConfig, AppState};

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
pub(super) fn read_keys(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the API key file {}", path.display()))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
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
