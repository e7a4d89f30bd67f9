//! The models this process serves, by name: chat models behind an [`Engine`], embedding
//! models behind their own worker thread. Local mode serves many; `serve` serves one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use candle_core::Device;
use hearth_crds::model::{DEFAULT_CONTEXT_CAP, Serving};

use crate::constraint::{Constraint, Grammar, GrammarCompiler, GrammarError};
use crate::{Engine, EngineConfig, EngineError};
use hearth_model::chat_template::ChatTemplate;
use hearth_model::embedding::EmbeddingModel;
use hearth_model::tokenizer::TextTokenizer;
use hearth_model::transformer::QuantizedTransformer;

/// Per-model serving limits (from a Model's `spec.serving`, or flags).
#[derive(Clone, Debug)]
pub struct ServingLimits {
    /// Longest context served; the model's own maximum when larger or absent.
    pub context_length: Option<usize>,
    /// Most sequences per batch.
    pub max_batch_size: usize,
    /// Most waiting requests.
    pub max_queue: usize,
    /// Largest max_tokens a request may ask, and the default.
    pub max_tokens: usize,
    /// Per-request deadline.
    pub timeout: Duration,
}

/// The defaults are a Model's: `spec.serving` as the CRD defaults it, the context uncapped.
impl Default for ServingLimits {
    fn default() -> Self {
        Self::from(&Serving::default())
    }
}

impl From<&Serving> for ServingLimits {
    fn from(serving: &Serving) -> Self {
        Self {
            context_length: None,
            max_batch_size: serving.max_batch_size as usize,
            max_queue: serving.max_queue as usize,
            max_tokens: serving.max_tokens as usize,
            timeout: Duration::from_secs(u64::from(serving.timeout_seconds)),
        }
    }
}

impl From<&hearth_crds::model::ModelSpec> for ServingLimits {
    fn from(spec: &hearth_crds::model::ModelSpec) -> Self {
        Self { context_length: spec.context_length.map(|c| c as usize), ..Self::from(&spec.serving) }
    }
}

/// A chat model ready to serve.
pub struct ChatModel {
    /// Served name.
    pub name: String,
    /// The engine running it.
    pub engine: Engine,
    /// Its tokenizer.
    pub tokenizer: Arc<TextTokenizer>,
    /// Its chat template.
    pub template: ChatTemplate,
    /// Its limits.
    pub limits: ServingLimits,
    /// The GGUF architecture.
    pub architecture: String,
    /// Unix seconds when loaded.
    pub created: u64,
    /// A base (pretrained only) model: no chat template, no instruct finetune. Fine for text
    /// completion; its chat answers continue text instead of following instructions.
    pub base_model: bool,
    /// Compiles grammars for this vocabulary; built at the first constrained request.
    grammars: OnceLock<Result<GrammarCompiler, GrammarError>>,
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not what it should be.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl ChatModel {
    /// Loads a GGUF chat model and starts its engine.
    pub fn load_gguf(name: &str, path: &Path, limits: ServingLimits, device: &Device) -> Result<Self, LoadError> {
        let shown = path.display().to_string();
        let invalid = |message: String| LoadError::Invalid { path: shown.clone(), message };
        let mut file = std::fs::File::open(path).map_err(|source| LoadError::Io { path: shown.clone(), source })?;
        let content = candle_core::quantized::gguf_file::Content::read(&mut file)
            .map_err(|e| invalid(format!("not a GGUF file: {e}")))?;
        let tokenizer = TextTokenizer::from_gguf(&content).map_err(|e| invalid(e.to_string()))?;
        let base_model = hearth_model::chat_template::is_base_model(&content);
        if base_model {
            tracing::warn!(
                model = name,
                path = %shown,
                "a base model (no chat template, no instruct finetune in its GGUF): it continues text and \
                 does not follow instructions; serve it for /v1/completions, and use an instruct model for chat, \
                 Cascade stages and agents"
            );
        }
        let template = ChatTemplate::from_gguf(&content).map_err(|e| invalid(e.to_string()))?;
        let model = QuantizedTransformer::from_gguf(content, &mut file, device).map_err(|e| invalid(e.to_string()))?;
        let architecture = model.config().architecture.clone();
        let native_context = model.config().context_length;
        let context =
            limits.context_length.map_or(native_context.min(DEFAULT_CONTEXT_CAP as usize), |c| c.min(native_context));
        let limits = ServingLimits { context_length: Some(context), ..limits };
        let config = EngineConfig {
            max_batch_size: limits.max_batch_size,
            max_queue: limits.max_queue,
            max_batch_tokens: context * limits.max_batch_size,
            prefill_chunk: crate::PREFILL_CHUNK,
            context_length: context,
            overlap_grammar: crate::overlap_grammar_on(!device.is_cpu(), candle_core::utils::get_num_threads()),
        };
        let tokenizer = Arc::new(tokenizer);
        let engine = Engine::start(hearth_model::TransformerLm::new(model), tokenizer.clone(), config)
            .map_err(|e| invalid(format!("cannot start the engine thread: {e}")))?;
        Ok(Self {
            name: name.to_owned(),
            engine,
            tokenizer,
            template,
            limits,
            architecture,
            created: unix_now(),
            base_model,
            grammars: OnceLock::new(),
        })
    }

    /// A grammar compiled for this model, ready to constrain one request.
    pub fn constrain(&self, grammar: &Grammar) -> Result<Constraint, GrammarError> {
        let compiler = self.grammars.get_or_init(|| GrammarCompiler::new(self.tokenizer.clone()));
        compiler.as_ref().map_err(Clone::clone)?.compile(grammar)
    }

    /// The context length served.
    pub fn context_length(&self) -> usize {
        self.engine.config().context_length
    }
}

type EmbedReply = tokio::sync::oneshot::Sender<Result<(Vec<Vec<f32>>, usize), String>>;

/// An embedding model served by its own worker thread, one batch at a time.
pub struct EmbeddingService {
    /// Served name.
    pub name: String,
    tx: SyncSender<(Vec<String>, EmbedReply)>,
    max_queue: usize,
    /// Vector size.
    pub dimension: usize,
    /// Most tokens of a text the model sees (special tokens included); the rest is truncated.
    pub max_tokens: usize,
    /// The model's tokenizer without truncation, to measure text (e.g. chunk sizes).
    pub tokenizer: Arc<tokenizers::Tokenizer>,
    /// Unix seconds when loaded.
    pub created: u64,
}

impl EmbeddingService {
    /// Loads a safetensors embedding model from a directory and starts its worker.
    pub fn load(name: &str, dir: &Path, limits: &ServingLimits, device: &Device) -> Result<Self, LoadError> {
        let model = EmbeddingModel::load(dir, device)
            .map_err(|e| LoadError::Invalid { path: dir.display().to_string(), message: e.to_string() })?;
        let dimension = model.dimension();
        let max_tokens = model.max_tokens();
        let tokenizer = Arc::new(model.tokenizer().clone());
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<String>, EmbedReply)>(limits.max_queue);
        std::thread::Builder::new()
            .name("hearth-embed".into())
            .spawn(move || {
                while let Ok((texts, reply)) = rx.recv() {
                    if reply.is_closed() {
                        continue;
                    }
                    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                    let result = model
                        .embed(&refs)
                        .and_then(|vectors| Ok((vectors, model.usage_tokens(&refs)?)))
                        .map_err(|e| e.to_string());
                    let _ = reply.send(result);
                }
            })
            .map_err(|e| LoadError::Invalid { path: dir.display().to_string(), message: e.to_string() })?;
        Ok(Self {
            name: name.to_owned(),
            tx,
            max_queue: limits.max_queue,
            dimension,
            max_tokens,
            tokenizer,
            created: unix_now(),
        })
    }

    /// Embeds texts; returns the vectors and the tokens used. Fails at once when the queue is full.
    pub async fn embed(&self, texts: Vec<String>) -> Result<(Vec<Vec<f32>>, usize), EngineError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx.try_send((texts, reply)).map_err(|e| match e {
            TrySendError::Full(_) => EngineError::QueueFull { max_queue: self.max_queue },
            TrySendError::Disconnected(_) => EngineError::ShuttingDown,
        })?;
        rx.await.map_err(|_| EngineError::ShuttingDown)?.map_err(EngineError::Backend)
    }
}

/// A served model.
#[derive(Clone)]
pub enum ServedModel {
    /// Text generation.
    Chat(Arc<ChatModel>),
    /// Sentence embeddings.
    Embedding(Arc<EmbeddingService>),
}

impl ServedModel {
    /// Unix seconds when loaded.
    pub fn created(&self) -> u64 {
        match self {
            Self::Chat(m) => m.created,
            Self::Embedding(m) => m.created,
        }
    }
}

/// Every model of this process, and whether loading has finished.
#[derive(Default)]
pub struct Registry {
    models: RwLock<BTreeMap<String, ServedModel>>,
    ready: AtomicBool,
}

impl Registry {
    /// Adds (or replaces) a model.
    pub fn insert(&self, name: &str, model: ServedModel) {
        if let Ok(mut models) = self.models.write() {
            models.insert(name.to_owned(), model);
        }
    }

    /// The model of this name.
    pub fn get(&self, name: &str) -> Option<ServedModel> {
        self.models.read().ok()?.get(name).cloned()
    }

    /// Every model, by name.
    pub fn all(&self) -> Vec<(String, ServedModel)> {
        self.models.read().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
    }

    /// Marks loading finished: /readyz turns 200.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether every model is loaded.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
