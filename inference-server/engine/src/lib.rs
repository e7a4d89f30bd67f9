//! The engine: a bounded queue in front of one model worker thread that runs continuous
//! batching. Waiting requests join the running batch between decode steps (under a token
//! budget); each sequence keeps its own KV cache; finished, cancelled and timed-out
//! sequences leave the batch at once.

pub mod constraint;
pub mod registry;
pub mod sampling;
mod scheduler;
pub mod stop;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Instant;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use hearth_model::{CausalLm, Vocabulary};
pub use sampling::{SamplingParams, TokenLogprob};

/// Limits of one engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Most sequences decoded together.
    pub max_batch_size: usize,
    /// Most requests waiting for a slot; beyond it `submit` fails at once with QueueFull.
    pub max_queue: usize,
    /// Most tokens (prompt + max_tokens) reserved by the running batch together.
    pub max_batch_tokens: usize,
    /// Longest prompt piece run in one forward pass (bounds prefill memory).
    pub prefill_chunk: usize,
    /// Longest sequence (prompt + output) the model serves.
    pub context_length: usize,
    /// Compute grammar masks on a thread beside the forward pass instead of before it: a gain
    /// where the forward pass leaves a core idle (a GPU model, or fewer compute threads than
    /// cores), a loss where it keeps every core busy (see [`overlap_grammar_on`]).
    pub overlap_grammar: bool,
}

/// Whether grammar masks should overlap the forward pass: yes on a GPU (the CPU waits for the
/// kernels) and when the CPU kernels use fewer threads than there are cores. On a CPU whose
/// every core runs the forward pass, a mask thread preempts a kernel worker that the others
/// then wait for: measured on 2 cores with 8 constrained streams, 0.81x of free decode
/// overlapped against 0.84x computed first.
pub fn overlap_grammar_on(gpu: bool, compute_threads: usize) -> bool {
    gpu || std::thread::available_parallelism().is_ok_and(|cores| compute_threads < cores.get())
}

/// Longest prompt piece run in one forward pass unless configured otherwise.
pub const PREFILL_CHUNK: usize = 512;

impl EngineConfig {
    /// A Model's default serving limits (the CRD's) for a model with this context length.
    pub fn for_context(context_length: usize) -> Self {
        let serving = hearth_crds::model::Serving::default();
        let max_batch_size = serving.max_batch_size as usize;
        Self {
            max_batch_size,
            max_queue: serving.max_queue as usize,
            max_batch_tokens: context_length * max_batch_size,
            prefill_chunk: PREFILL_CHUNK,
            context_length,
            overlap_grammar: false,
        }
    }
}

/// One generation request, already tokenized.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// How tokens are chosen.
    pub sampling: SamplingParams,
    /// Text that ends generation (not included in the output).
    pub stop: Vec<String>,
    /// Generate even past end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
    /// When the request gives up.
    pub deadline: Instant,
    /// The grammar the output must follow (compiled for this model), if any.
    pub constraint: Option<constraint::Constraint>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop sequence.
    Stop,
    /// max_tokens or the context length was reached.
    Length,
}

impl FinishReason {
    /// The OpenAI `finish_reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// One generated token with the text it completed.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratedToken {
    /// Token id.
    pub id: u32,
    /// Text this token made complete (may be empty: a partial character, or text held back
    /// because it might start a stop sequence).
    pub text: String,
    /// Log-probabilities, when asked for.
    pub logprob: Option<TokenLogprob>,
}

/// The end of a successful generation.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    /// Why it ended.
    pub reason: FinishReason,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Text released at the end (held back for stop matching, never stopped).
    pub tail: String,
    /// Seconds spent waiting for a batch slot.
    pub queue_seconds: f64,
}

/// What a request's receiver gets, in order: tokens, then `Done` or `Failed`.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A token.
    Token(GeneratedToken),
    /// Generation ended normally.
    Done(Finished),
    /// Generation ended with an error.
    Failed(EngineError),
}

/// Why the engine could not serve a request.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The queue is full; retry later.
    #[error("the server is at capacity: {max_queue} requests are already waiting; retry later")]
    QueueFull {
        /// The queue bound.
        max_queue: usize,
    },
    /// The prompt plus max_tokens exceeds the context length.
    #[error(
        "this model's context length is {context} tokens, but the prompt has {prompt} tokens and max_tokens is {max_tokens} ({total} in total); shorten the prompt or lower max_tokens"
    )]
    ContextExceeded {
        /// Prompt tokens.
        prompt: usize,
        /// Requested output tokens.
        max_tokens: usize,
        /// Their sum.
        total: usize,
        /// The model's context length.
        context: usize,
    },
    /// The prompt has no tokens.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// The request's deadline passed.
    #[error("the request timed out")]
    Timeout,
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The model failed.
    #[error("the model failed: {0}")]
    Backend(String),
}

/// Live counters of an engine, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Requests waiting for a slot.
    pub waiting: AtomicUsize,
    /// Sequences in the running batch.
    pub running: AtomicUsize,
    /// Decode steps run.
    pub decode_steps: AtomicU64,
    /// Sequences summed over all decode steps (÷ steps = mean batch size).
    pub decoded_sequences: AtomicU64,
    /// Grammar masks computed during decode steps.
    pub grammar_masks: AtomicU64,
    /// Nanoseconds spent computing them (÷ masks = mean mask time in the running server).
    pub grammar_mask_nanos: AtomicU64,
}

pub(crate) struct Admission {
    request: GenerateRequest,
    events: UnboundedSender<Event>,
    enqueued: Instant,
}

/// A handle to a running engine; cheap to clone. The worker stops when every handle is gone
/// and the running batch has finished.
#[derive(Clone)]
pub struct Engine {
    tx: SyncSender<Admission>,
    stats: Arc<EngineStats>,
    config: Arc<EngineConfig>,
    abort: Arc<AtomicBool>,
}

impl Engine {
    /// Starts the worker thread for `model`.
    pub fn start<M: CausalLm>(model: M, vocab: Arc<dyn Vocabulary>, config: EngineConfig) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(config.max_queue);
        let stats = Arc::new(EngineStats::default());
        let abort = Arc::new(AtomicBool::new(false));
        let worker = scheduler::Worker::new(model, vocab, config.clone(), rx, stats.clone(), abort.clone());
        std::thread::Builder::new().name("hearth-engine".into()).spawn(move || worker.run())?;
        Ok(Self { tx, stats, config: Arc::new(config), abort })
    }

    /// Queues a request. Fails at once when the queue is full or the request cannot fit the
    /// context; otherwise events arrive on the returned receiver. Dropping the receiver
    /// cancels the request and frees its slot.
    pub fn submit(&self, request: GenerateRequest) -> Result<UnboundedReceiver<Event>, EngineError> {
        if request.prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let total = request.prompt.len() + request.max_tokens;
        if total > self.config.context_length {
            return Err(EngineError::ContextExceeded {
                prompt: request.prompt.len(),
                max_tokens: request.max_tokens,
                total,
                context: self.config.context_length,
            });
        }
        if self.abort.load(Ordering::Relaxed) {
            return Err(EngineError::ShuttingDown);
        }
        let (events, rx) = tokio::sync::mpsc::unbounded_channel();
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Admission { request, events, enqueued: Instant::now() }) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => EngineError::QueueFull { max_queue: self.config.max_queue },
                    TrySendError::Disconnected(_) => EngineError::ShuttingDown,
                })
            }
        }
    }

    /// Live counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The engine's limits.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Ends every queued and running request with ShuttingDown (the drain deadline passed)
    /// and refuses new ones.
    pub fn abort_all(&self) {
        self.abort.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
