//! Backends: the model code and tokenizers the engine drives. The engine sees a model only
//! through [`CausalLm`] and a tokenizer only through [`Vocabulary`], so it can be tested
//! with scripted models and any backend can be swapped in.

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// A decoder-only language model with one KV cache per sequence.
pub trait CausalLm: Send + 'static {
    /// A sequence's KV cache.
    type Cache: Send + 'static;
    /// An empty cache for a new sequence.
    fn new_cache(&self) -> Self::Cache;
    /// Runs prompt tokens for one sequence (appending to its cache) and returns the logits of
    /// the last position.
    fn prefill(&self, tokens: &[u32], cache: &mut Self::Cache) -> Result<Vec<f32>, BackendError>;
    /// One decode step for several sequences: `tokens[i]` continues the sequence of
    /// `caches[i]`. Returns one logits vector per sequence.
    fn decode(&self, tokens: &[u32], caches: &mut [&mut Self::Cache]) -> Result<Vec<Vec<f32>>, BackendError>;
}

/// What the engine needs from a tokenizer.
pub trait Vocabulary: Send + Sync {
    /// Text of a run of ids (special tokens skipped; invalid UTF-8 as U+FFFD).
    fn decode(&self, ids: &[u32]) -> String;
    /// Text of one token, for log-probability listings.
    fn token_text(&self, id: u32) -> String;
    /// Ids that end generation (EOS, end of turn).
    fn stop_ids(&self) -> &[u32];
}

pub mod chat_template;
pub mod embedding;
pub mod tokenizer;
pub mod transformer;

/// candle's CPU thread pool, for Hearth's kernels (generation and the embedding encoder): its
/// workers spin for a while after each of candle's operators, so kernels on a second pool
/// (rayon's) would fight them for the cores (measured: decode 15% slower on two cores).
pub(crate) struct CandlePool;

impl hearth_kernels::Parallel for CandlePool {
    fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        candle_core::utils::barrier_pool().execute_chunked(tasks, |range| range.for_each(task));
    }
}

/// The quantized transformer as the engine's [`CausalLm`].
pub struct TransformerLm {
    model: transformer::QuantizedTransformer,
}

impl TransformerLm {
    /// Wraps a loaded model.
    pub fn new(model: transformer::QuantizedTransformer) -> Self {
        Self { model }
    }
}

fn backend_error(e: impl std::fmt::Display) -> BackendError {
    BackendError(e.to_string())
}

impl CausalLm for TransformerLm {
    type Cache = transformer::KvCache;

    fn new_cache(&self) -> Self::Cache {
        self.model.new_cache()
    }

    fn prefill(&self, tokens: &[u32], cache: &mut Self::Cache) -> Result<Vec<f32>, BackendError> {
        let logits = self.model.forward(tokens, cache, false).map_err(backend_error)?;
        logits.to_vec1::<f32>().map_err(backend_error)
    }

    fn decode(&self, tokens: &[u32], caches: &mut [&mut Self::Cache]) -> Result<Vec<Vec<f32>>, BackendError> {
        if let ([token], [cache]) = (tokens, &mut *caches) {
            let logits = self.model.forward(&[*token], cache, false).map_err(backend_error)?;
            return Ok(vec![logits.to_vec1::<f32>().map_err(backend_error)?]);
        }
        let logits = self.model.forward_batch(tokens, caches).map_err(backend_error)?;
        logits.to_vec2::<f32>().map_err(backend_error)
    }
}

impl Vocabulary for tokenizer::TextTokenizer {
    fn decode(&self, ids: &[u32]) -> String {
        tokenizer::TextTokenizer::decode(self, ids, true).unwrap_or_default()
    }

    fn token_text(&self, id: u32) -> String {
        tokenizer::TextTokenizer::token_text(self, id).unwrap_or_default()
    }

    fn stop_ids(&self) -> &[u32] {
        tokenizer::TextTokenizer::stop_ids(self)
    }
}
