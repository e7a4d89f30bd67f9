//! Sentence embeddings with a BERT-family encoder (all-MiniLM-L6-v2 by default).
//!
//! A model directory holds `model.safetensors`, `config.json` and `tokenizer.json`, plus
//! optionally `sentence_bert_config.json` (whose `max_seq_length` caps the input length, as in
//! sentence-transformers). A text becomes one vector: the encoder's last hidden states,
//! mean-pooled over the text's real tokens (padding masked out of both the attention and the
//! pooling), then L2-normalised, which is what sentence-transformers computes for these models.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::CandlePool;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config, HiddenAct};
use hearth_kernels::encoder::{BertConfig, BertEncoder, Text};
use tokenizers::{Encoding, PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Weights file in a model directory.
const WEIGHTS_FILE: &str = "model.safetensors";
/// Hugging Face model configuration in a model directory.
const CONFIG_FILE: &str = "config.json";
/// Hugging Face tokenizer in a model directory.
const TOKENIZER_FILE: &str = "tokenizer.json";
/// Optional sentence-transformers configuration carrying `max_seq_length`.
const SENTENCE_BERT_CONFIG_FILE: &str = "sentence_bert_config.json";

/// Input length used when neither the sentence-transformers config nor `config.json` gives one.
const DEFAULT_MAX_TOKENS: usize = 512;
/// Most texts in one forward pass; larger requests are split into chunks of this size.
const MAX_BATCH_TEXTS: usize = 32;
/// Most padded tokens in one forward pass, bounding the attention scores' memory for long texts
/// (batch × heads × tokens² floats).
const MAX_BATCH_TOKENS: usize = 4096;
/// Floor of the vector norm in the L2 normalisation (as torch's `F.normalize`).
const NORM_EPSILON: f64 = 1e-12;

/// Why a model could not be loaded or a batch not embedded.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddingError {
    /// A file of the model directory is missing or unreadable.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A JSON file of the model directory does not parse into the expected shape.
    #[error("invalid {}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What was expected and where (serde names the field).
        source: serde_json::Error,
    },
    /// A configuration field has a value the model cannot run with.
    #[error("invalid {}: field `{field}`: {reason}", path.display())]
    InvalidConfig {
        /// The file.
        path: PathBuf,
        /// The offending field.
        field: &'static str,
        /// What was expected and what was found.
        reason: String,
    },
    /// `tokenizer.json` could not be loaded or configured.
    #[error("cannot load tokenizer {}: {source}", path.display())]
    TokenizerFile {
        /// The file.
        path: PathBuf,
        /// What the tokenizers crate said.
        source: tokenizers::Error,
    },
    /// The weights are missing, corrupt or do not match `config.json`.
    #[error("cannot load BERT weights from {}: {source}", path.display())]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What candle said (e.g. the missing tensor or the mismatched shape).
        source: candle_core::Error,
    },
    /// A text could not be tokenized.
    #[error("tokenization failed: {0}")]
    Tokenize(tokenizers::Error),
    /// A setting (environment variable) has a value that means nothing.
    #[error("{name}: {reason}")]
    Setting {
        /// The variable.
        name: &'static str,
        /// What was expected and what was found.
        reason: String,
    },
    /// The weights do not fit Hearth's encoder (a missing tensor, a wrong shape).
    #[error("cannot load {} into Hearth's encoder: {reason}", path.display())]
    Encoder {
        /// The weights file.
        path: PathBuf,
        /// Which tensor and what was wrong.
        reason: String,
    },
    /// The forward pass or the pooling failed.
    #[error("embedding forward pass failed: {0}")]
    Inference(#[from] candle_core::Error),
}

/// Which encoder runs the forward pass (`HEARTH_CPU_ENCODER`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncoderChoice {
    /// Hearth's encoder where the CPU has AMX-BF16 (several times faster there), else candle's.
    Auto,
    /// Hearth's encoder: AMX tiles where the CPU has them, else its portable (slow) loops.
    Hearth,
    /// candle's `BertModel` (f32 throughout).
    Candle,
}

impl EncoderChoice {
    /// Reads `HEARTH_CPU_ENCODER` (`auto`, `hearth` or `candle`; unset means `auto`).
    pub fn from_env() -> Result<Self, EmbeddingError> {
        Self::parse(std::env::var("HEARTH_CPU_ENCODER").ok().as_deref())
    }

    /// Parses a `HEARTH_CPU_ENCODER` value (`None` when unset).
    pub fn parse(value: Option<&str>) -> Result<Self, EmbeddingError> {
        match value.map(str::trim) {
            None | Some("" | "auto") => Ok(Self::Auto),
            Some("hearth") => Ok(Self::Hearth),
            Some("candle") => Ok(Self::Candle),
            Some(other) => Err(EmbeddingError::Setting {
                name: "HEARTH_CPU_ENCODER",
                reason: format!("expected auto, hearth or candle, found {other:?}"),
            }),
        }
    }
}

/// The forward pass: Hearth's bf16 encoder, or candle's f32 `BertModel`.
enum Encoder {
    Hearth(BertEncoder),
    Candle(BertModel),
}

/// A loaded sentence-embedding model: tokenizer plus BERT encoder, shareable across threads.
pub struct EmbeddingModel {
    encoder: Encoder,
    /// The tokenizer as shipped, without truncation or padding, so it measures text faithfully.
    tokenizer: Tokenizer,
    /// The same tokenizer truncating to `max_tokens` (special tokens included); pads nothing,
    /// since batches are padded here after sorting by length.
    truncating: Tokenizer,
    device: Device,
    dimension: usize,
    max_tokens: usize,
    pad_token_id: u32,
}

impl std::fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingModel")
            .field("encoder", &self.encoder_name())
            .field("device", &self.device)
            .field("dimension", &self.dimension)
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

impl EmbeddingModel {
    /// Loads `model.safetensors`, `config.json`, `tokenizer.json` (and `sentence_bert_config.json`
    /// when present) from `dir` onto `device`.
    ///
    /// The encoder is chosen by `HEARTH_CPU_ENCODER` (see [`EncoderChoice`]).
    pub fn load(dir: &Path, device: &Device) -> Result<Self, EmbeddingError> {
        Self::load_with(dir, device, EncoderChoice::from_env()?)
    }

    /// [`load`](Self::load) with an explicit encoder choice.
    pub fn load_with(dir: &Path, device: &Device, choice: EncoderChoice) -> Result<Self, EmbeddingError> {
        let config_path = dir.join(CONFIG_FILE);
        let config = read_config(&config_path)?;
        let max_tokens = resolve_max_tokens(dir, config.max_position_embeddings)?;

        let tokenizer_path = dir.join(TOKENIZER_FILE);
        if !tokenizer_path.is_file() {
            return Err(not_found(tokenizer_path));
        }
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|source| EmbeddingError::TokenizerFile { path: tokenizer_path.clone(), source })?;
        // tokenizer.json files exported by sentence-transformers carry their own truncation
        // (often 128) and fixed-length padding; both would distort token counts and embeddings.
        tokenizer
            .with_truncation(None)
            .map_err(|source| EmbeddingError::TokenizerFile { path: tokenizer_path.clone(), source })?;
        tokenizer.with_padding(None);
        let special_tokens = tokenizer.get_post_processor().map_or(0, |p| p.added_tokens(false));
        if max_tokens <= special_tokens {
            return Err(EmbeddingError::InvalidConfig {
                path: dir.join(SENTENCE_BERT_CONFIG_FILE),
                field: "max_seq_length",
                reason: format!(
                    "the maximum input length {max_tokens} leaves no room for text after the tokenizer's \
                     {special_tokens} special tokens"
                ),
            });
        }
        let mut truncating = tokenizer.clone();
        truncating
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|source| EmbeddingError::TokenizerFile { path: tokenizer_path.clone(), source })?;

        let weights_path = dir.join(WEIGHTS_FILE);
        if !weights_path.is_file() {
            return Err(not_found(weights_path));
        }
        let tensors = candle_core::safetensors::load(&weights_path, device)
            .map_err(|source| EmbeddingError::Weights { path: weights_path.clone(), source })?;
        let hearth = match choice {
            EncoderChoice::Candle => false,
            EncoderChoice::Hearth => true,
            EncoderChoice::Auto => device.is_cpu() && hearth_kernels::amx::available() && hearth_supports(&config),
        };
        let encoder = if hearth {
            let encoder = load_hearth(&tensors, &config)
                .map_err(|reason| EmbeddingError::Encoder { path: weights_path.clone(), reason: reason.to_string() })?;
            Encoder::Hearth(encoder)
        } else {
            Encoder::Candle(
                load_bert(tensors, &config, device)
                    .map_err(|source| EmbeddingError::Weights { path: weights_path.clone(), source })?,
            )
        };

        let pad_token_id = u32::try_from(config.pad_token_id).map_err(|_| EmbeddingError::InvalidConfig {
            path: config_path,
            field: "pad_token_id",
            reason: format!("{} does not fit a token id", config.pad_token_id),
        })?;
        Ok(Self {
            encoder,
            tokenizer,
            truncating,
            device: device.clone(),
            dimension: config.hidden_size,
            max_tokens,
            pad_token_id,
        })
    }

    /// L2-normalised mean-pooled embeddings, one per text, in order. Empty strings are allowed.
    ///
    /// Texts longer than [`max_tokens`](Self::max_tokens) are truncated. Texts are grouped by
    /// length into forward passes of at most 32 texts, so a text's embedding does not depend on
    /// what it is batched with (beyond float rounding).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbeddingError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self.truncating.encode_batch_fast(texts.to_vec(), true).map_err(EmbeddingError::Tokenize)?;

        // Longest first: neighbours in a chunk have similar lengths, so little compute goes to
        // padding, and the first chunk shows the peak memory early.
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].len()));

        let mut embeddings: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        let mut start = 0;
        while start < order.len() {
            let longest = encodings[order[start]].len().max(1);
            let fit = (MAX_BATCH_TOKENS / longest).clamp(1, MAX_BATCH_TEXTS);
            let end = (start + fit).min(order.len());
            let chunk: Vec<&Encoding> = order[start..end].iter().map(|&i| &encodings[i]).collect();
            for (&index, embedding) in order[start..end].iter().zip(self.forward(&chunk)?) {
                embeddings[index] = embedding;
            }
            start = end;
        }
        Ok(embeddings)
    }

    /// Which encoder runs: `hearth (AMX tiles)`, `hearth (portable)` or `candle`.
    pub fn encoder_name(&self) -> &'static str {
        match &self.encoder {
            Encoder::Hearth(e) if e.uses_amx() => "hearth (AMX tiles)",
            Encoder::Hearth(_) => "hearth (portable)",
            Encoder::Candle(_) => "candle",
        }
    }

    /// Length of the embedding vectors (the encoder's hidden size; 384 for MiniLM-L6).
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Most tokens of a text the model sees, special tokens included; the rest is truncated.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Tokens a text occupies (without special tokens), for chunking and usage counts.
    pub fn count_tokens(&self, text: &str) -> Result<usize, EmbeddingError> {
        let encoding = self.tokenizer.encode_fast(text, false).map_err(EmbeddingError::Tokenize)?;
        Ok(encoding.len())
    }

    /// Token count per text, including special tokens and truncation, as used for `usage.prompt_tokens`.
    pub fn usage_tokens(&self, texts: &[&str]) -> Result<usize, EmbeddingError> {
        if texts.is_empty() {
            return Ok(0);
        }
        let encodings = self.truncating.encode_batch_fast(texts.to_vec(), true).map_err(EmbeddingError::Tokenize)?;
        Ok(encodings.iter().map(Encoding::len).sum())
    }

    /// Exposes the tokenizer (the KnowledgeBase splitter measures chunks in these tokens).
    ///
    /// It neither truncates nor pads, whatever `tokenizer.json` asked for.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// One forward pass over encodings of at most `max_tokens` tokens; pads them to the longest.
    fn forward(&self, chunk: &[&Encoding]) -> Result<Vec<Vec<f32>>, EmbeddingError> {
        let model = match &self.encoder {
            Encoder::Hearth(encoder) => {
                // Texts are packed, not padded; an empty encoding (a tokenizer without special
                // tokens given "") becomes one padding token, as the padded path sees it.
                let pad = [self.pad_token_id];
                let zero = [0u32];
                let texts: Vec<Text<'_>> = chunk
                    .iter()
                    .map(|e| {
                        if e.is_empty() {
                            Text { ids: &pad, type_ids: &zero }
                        } else {
                            Text { ids: e.get_ids(), type_ids: e.get_type_ids() }
                        }
                    })
                    .collect();
                return encoder
                    .embed(&CandlePool, &texts)
                    .map_err(|e| EmbeddingError::Inference(candle_core::Error::Msg(e.to_string())));
            }
            Encoder::Candle(model) => model,
        };
        let batch = chunk.len();
        let seq_len = chunk.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
        let mut input_ids = Vec::with_capacity(batch * seq_len);
        let mut type_ids = Vec::with_capacity(batch * seq_len);
        let mut mask = Vec::with_capacity(batch * seq_len);
        for encoding in chunk {
            let padding = seq_len - encoding.len();
            input_ids.extend_from_slice(encoding.get_ids());
            input_ids.extend(std::iter::repeat_n(self.pad_token_id, padding));
            type_ids.extend_from_slice(encoding.get_type_ids());
            type_ids.extend(std::iter::repeat_n(0u32, padding));
            mask.extend(std::iter::repeat_n(1u32, encoding.len()));
            mask.extend(std::iter::repeat_n(0u32, padding));
        }
        let input_ids = Tensor::from_vec(input_ids, (batch, seq_len), &self.device)?;
        let type_ids = Tensor::from_vec(type_ids, (batch, seq_len), &self.device)?;
        let mask = Tensor::from_vec(mask, (batch, seq_len), &self.device)?;

        // (batch, seq, hidden); the mask keeps padding out of every token's attention.
        let hidden = model.forward(&input_ids, &type_ids, Some(&mask))?;
        let mask = mask.to_dtype(hidden.dtype())?;
        let summed = hidden.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?;
        // Every text has at least its special tokens; the floor only guards a tokenizer without any.
        let counts = mask.sum_keepdim(1)?.maximum(1f64)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(NORM_EPSILON)?;
        let normalised = mean.broadcast_div(&norms)?.to_dtype(DType::F32)?;
        Ok(normalised.to_vec2::<f32>()?)
    }
}

/// An `Io` error for a file that is not there, naming it.
fn not_found(path: PathBuf) -> EmbeddingError {
    EmbeddingError::Io { path, source: std::io::Error::new(std::io::ErrorKind::NotFound, "file not found") }
}

/// Reads a file into a JSON value, naming the file on failure.
fn read_json(path: &Path) -> Result<serde_json::Value, EmbeddingError> {
    let text = std::fs::read_to_string(path).map_err(|source| EmbeddingError::Io { path: path.to_owned(), source })?;
    serde_json::from_str(&text).map_err(|source| EmbeddingError::Json { path: path.to_owned(), source })
}

/// Parses and checks `config.json`.
fn read_config(path: &Path) -> Result<Config, EmbeddingError> {
    let mut value = read_json(path)?;
    let Some(object) = value.as_object_mut() else {
        return Err(EmbeddingError::InvalidConfig {
            path: path.to_owned(),
            field: "(top level)",
            reason: "expected a JSON object".to_owned(),
        });
    };
    // Older BERT exports omit these; Hugging Face's defaults apply.
    object.entry("max_position_embeddings").or_insert_with(|| DEFAULT_MAX_TOKENS.into());
    object.entry("pad_token_id").or_insert_with(|| 0.into());
    object.entry("initializer_range").or_insert_with(|| 0.02.into());
    object.entry("hidden_dropout_prob").or_insert_with(|| 0.1.into());
    object.entry("type_vocab_size").or_insert_with(|| 2.into());
    object.entry("layer_norm_eps").or_insert_with(|| 1e-12.into());
    object.entry("hidden_act").or_insert_with(|| "gelu".into());
    let config: Config =
        serde_json::from_value(value).map_err(|source| EmbeddingError::Json { path: path.to_owned(), source })?;

    let invalid =
        |field: &'static str, reason: String| EmbeddingError::InvalidConfig { path: path.to_owned(), field, reason };
    if config.hidden_size == 0 {
        return Err(invalid("hidden_size", "expected a positive number, found 0".to_owned()));
    }
    if config.num_attention_heads == 0 || !config.hidden_size.is_multiple_of(config.num_attention_heads) {
        return Err(invalid(
            "num_attention_heads",
            format!(
                "expected a positive divisor of hidden_size {}, found {}",
                config.hidden_size, config.num_attention_heads
            ),
        ));
    }
    if config.max_position_embeddings == 0 {
        return Err(invalid("max_position_embeddings", "expected a positive number, found 0".to_owned()));
    }
    if config.pad_token_id >= config.vocab_size {
        return Err(invalid(
            "pad_token_id",
            format!("expected an id below vocab_size {}, found {}", config.vocab_size, config.pad_token_id),
        ));
    }
    Ok(config)
}

/// The longest input the model takes: `max_seq_length` of `sentence_bert_config.json` when the
/// file is present (sentence-transformers trains and evaluates with it, 256 for MiniLM), else
/// `max_position_embeddings`; never more than the position table holds.
fn resolve_max_tokens(dir: &Path, max_position_embeddings: usize) -> Result<usize, EmbeddingError> {
    let path = dir.join(SENTENCE_BERT_CONFIG_FILE);
    if !path.exists() {
        return Ok(max_position_embeddings);
    }
    let value = read_json(&path)?;
    match value.get("max_seq_length") {
        None | Some(serde_json::Value::Null) => Ok(max_position_embeddings),
        Some(length) => match length.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) if n > 0 => Ok(n.min(max_position_embeddings)),
            _ => Err(EmbeddingError::InvalidConfig {
                path,
                field: "max_seq_length",
                reason: format!("expected a positive integer, found {length}"),
            }),
        },
    }
}

/// Whether Hearth's encoder computes what `config` describes (erf GELU, absolute positions) with
/// widths its tiles take (layers a multiple of 32 wide, heads of a multiple of 16).
fn hearth_supports(config: &Config) -> bool {
    matches!(config.hidden_act, HiddenAct::Gelu)
        && config.hidden_size.is_multiple_of(32)
        && config.intermediate_size.is_multiple_of(32)
        && (config.hidden_size / config.num_attention_heads.max(1)).is_multiple_of(16)
}

/// Hearth's encoder from the checkpoint's tensors (names with or without a `bert.` or
/// `<model_type>.` prefix, as candle's loader accepts).
fn load_hearth(tensors: &HashMap<String, Tensor>, config: &Config) -> Result<BertEncoder, String> {
    if !matches!(config.hidden_act, HiddenAct::Gelu) {
        return Err(
            "config.json: field `hidden_act`: Hearth's encoder runs \"gelu\" (erf) only; set HEARTH_CPU_ENCODER=candle"
                .into(),
        );
    }
    let bert = BertConfig {
        hidden: config.hidden_size,
        heads: config.num_attention_heads,
        layers: config.num_hidden_layers,
        intermediate: config.intermediate_size,
        max_positions: config.max_position_embeddings,
        type_vocab: config.type_vocab_size,
        vocab: config.vocab_size,
        eps: config.layer_norm_eps as f32,
    };
    let prefixes: Vec<String> = ["".to_owned(), "bert.".to_owned()]
        .into_iter()
        .chain(config.model_type.iter().map(|t| format!("{t}.")))
        .collect();
    let amx = hearth_kernels::amx::available();
    BertEncoder::new(bert, amx, |name, len| {
        let tensor = prefixes
            .iter()
            .find_map(|p| tensors.get(&format!("{p}{name}")))
            .ok_or_else(|| "not in the checkpoint".to_owned())?;
        if tensor.elem_count() != len {
            return Err(format!("shape {:?} has {} values, expected {len}", tensor.dims(), tensor.elem_count()));
        }
        tensor
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| e.to_string())
    })
    .map_err(|e| e.to_string())
}

/// candle's encoder from loaded tensors (with or without a `bert.` prefix).
fn load_bert(tensors: HashMap<String, Tensor>, config: &Config, device: &Device) -> candle_core::Result<BertModel> {
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    BertModel::load(vb, config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;
    use std::time::Instant;

    const REFERENCE: &str = include_str!("../../../tests/fixtures/reference/all-minilm-l6-v2.embeddings.json");

    fn model_dir() -> PathBuf {
        let dir = hearth_testkit::models::path("all-minilm-l6-v2");
        assert!(
            dir.join(WEIGHTS_FILE).is_file(),
            "all-MiniLM-L6-v2 not found in {}: run `scripts/fetch-models.py minilm` first",
            dir.display()
        );
        dir
    }

    fn model() -> &'static EmbeddingModel {
        static MODEL: OnceLock<EmbeddingModel> = OnceLock::new();
        MODEL.get_or_init(|| EmbeddingModel::load(&model_dir(), &Device::Cpu).expect("load all-MiniLM-L6-v2"))
    }

    fn reference() -> Vec<(String, Vec<f32>)> {
        let value: serde_json::Value = serde_json::from_str(REFERENCE).expect("reference JSON");
        value["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|case| {
                let text = case["text"].as_str().expect("text").to_owned();
                let embedding =
                    case["embedding"].as_array().expect("embedding").iter().map(|x| x.as_f64().expect("float") as f32);
                (text, embedding.collect())
            })
            .collect()
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (na * nb)
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    fn assert_matches_reference(embeddings: &[Vec<f32>], cases: &[(String, Vec<f32>)], how: &str) {
        assert_eq!(embeddings.len(), cases.len());
        let mut min = f32::MAX;
        for (embedding, (text, expected)) in embeddings.iter().zip(cases) {
            assert_eq!(embedding.len(), expected.len(), "dimension for {text:?}");
            let c = cosine(embedding, expected);
            assert!(c >= 0.999, "{how}: cosine {c} with sentence-transformers for {text:?}");
            min = min.min(c);
        }
        println!("{how}: minimum cosine with sentence-transformers {min:.7}");
    }

    /// A scratch directory for file-error tests, removed on drop.
    struct ScratchDir(PathBuf);

    impl ScratchDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("hearth-embedding-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create scratch dir");
            Self(dir)
        }
    }

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn model_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<EmbeddingModel>();
    }

    #[test]
    fn matches_sentence_transformers_in_one_batch() {
        let cases = reference();
        assert_eq!(cases.len(), 16);
        let texts: Vec<&str> = cases.iter().map(|(t, _)| t.as_str()).collect();
        let embeddings = model().embed(&texts).expect("embed");
        assert_matches_reference(&embeddings, &cases, "one batch of 16");
    }

    /// Both encoders, whatever `auto` picks on this machine: Hearth's (AMX tiles where the CPU
    /// has them, else its portable loops) and candle's.
    #[test]
    fn both_encoders_match_sentence_transformers() {
        let cases = reference();
        let texts: Vec<&str> = cases.iter().map(|(t, _)| t.as_str()).collect();
        let mut outputs = Vec::new();
        for choice in [EncoderChoice::Hearth, EncoderChoice::Candle] {
            let model = EmbeddingModel::load_with(&model_dir(), &Device::Cpu, choice).expect("load");
            let embeddings = model.embed(&texts).expect("embed");
            assert_matches_reference(&embeddings, &cases, model.encoder_name());
            outputs.push(embeddings);
        }
        for ((hearth, candle), text) in outputs[0].iter().zip(&outputs[1]).zip(&texts) {
            let c = cosine(hearth, candle);
            assert!(c >= 0.9999, "Hearth's and candle's encoders differ on {text:?}: cosine {c}");
        }
    }

    /// Requests embed concurrently in the server: each thread's results must equal the serial
    /// ones (the AMX tile state is per thread; the thread pool is shared).
    #[test]
    fn concurrent_calls_give_the_serial_results() {
        let cases = reference();
        let texts: Vec<&str> = cases.iter().map(|(t, _)| t.as_str()).collect();
        let serial = model().embed(&texts).expect("embed");
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|k| {
                    let texts: Vec<&str> = texts.iter().skip(k).copied().collect();
                    scope.spawn(move || (k, model().embed(&texts).expect("embed")))
                })
                .collect();
            for handle in handles {
                let (k, got) = handle.join().expect("thread");
                for (i, embedding) in got.iter().enumerate() {
                    let d = max_abs_diff(embedding, &serial[i + k]);
                    assert!(d < 1e-5, "thread {k}, text {}: differs by {d}", i + k);
                }
            }
        });
    }

    #[test]
    fn encoder_setting_is_parsed_and_bad_values_are_named() {
        assert_eq!(EncoderChoice::parse(None).expect("unset"), EncoderChoice::Auto);
        assert_eq!(EncoderChoice::parse(Some(" hearth ")).expect("hearth"), EncoderChoice::Hearth);
        assert_eq!(EncoderChoice::parse(Some("candle")).expect("candle"), EncoderChoice::Candle);
        let err = EncoderChoice::parse(Some("onnx")).expect_err("onnx").to_string();
        assert!(
            err.contains("HEARTH_CPU_ENCODER") && err.contains("auto, hearth or candle") && err.contains("onnx"),
            "{err}"
        );
    }

    #[test]
    fn hearth_encoder_rejects_what_it_cannot_compute() {
        let mut config: Config =
            serde_json::from_str(&std::fs::read_to_string(model_dir().join(CONFIG_FILE)).expect("read config"))
                .expect("parse config");
        assert!(hearth_supports(&config));
        config.hidden_act = HiddenAct::GeluApproximate;
        assert!(!hearth_supports(&config), "tanh GELU is not what the encoder computes");
        let err = load_hearth(&HashMap::new(), &config).expect_err("tanh GELU").to_string();
        assert!(err.contains("hidden_act") && err.contains("HEARTH_CPU_ENCODER=candle"), "{err}");
        config.hidden_act = HiddenAct::Gelu;
        config.num_attention_heads = 32; // heads of 12 values
        assert!(!hearth_supports(&config));
        let err = load_hearth(&HashMap::new(), &config).expect_err("narrow heads").to_string();
        assert!(err.contains("multiple of 16"), "{err}");
        config.num_attention_heads = 12;
        let err = load_hearth(&HashMap::new(), &config).expect_err("no tensors").to_string();
        assert!(err.contains("embeddings.word_embeddings.weight") && err.contains("not in the checkpoint"), "{err}");
    }

    #[test]
    fn matches_sentence_transformers_one_at_a_time() {
        let cases = reference();
        let embeddings: Vec<Vec<f32>> =
            cases.iter().map(|(text, _)| model().embed(&[text]).expect("embed").remove(0)).collect();
        assert_matches_reference(&embeddings, &cases, "one text at a time");
    }

    #[test]
    fn batch_order_and_composition_do_not_change_embeddings() {
        let cases = reference();
        let texts: Vec<&str> = cases.iter().map(|(t, _)| t.as_str()).collect();
        let forward = model().embed(&texts).expect("embed");

        let reversed_texts: Vec<&str> = texts.iter().rev().copied().collect();
        let reversed = model().embed(&reversed_texts).expect("embed reversed");
        for (i, embedding) in reversed.iter().rev().enumerate() {
            let d = max_abs_diff(embedding, &forward[i]);
            assert!(d < 1e-5, "reordering changed {:?} by {d}", texts[i]);
        }

        // A different neighbourhood: every other text, next to a long newcomer (more padding).
        let long = "An unrelated and deliberately long companion sentence pads the batch well beyond the \
                    length of most fixture sentences, so the others carry many padding positions.";
        let mut mixed: Vec<&str> = vec![long];
        mixed.extend(texts.iter().step_by(2));
        let mixed_embeddings = model().embed(&mixed).expect("embed mixed");
        for (embedding, i) in mixed_embeddings[1..].iter().zip((0..texts.len()).step_by(2)) {
            let d = max_abs_diff(embedding, &forward[i]);
            assert!(d < 1e-5, "batch composition changed {:?} by {d}", texts[i]);
        }
    }

    #[test]
    fn large_batches_are_split_into_chunks_without_changing_results() {
        let cases = reference();
        // 5 × 16 = 80 texts: three forward passes of at most 32.
        let texts: Vec<&str> = cases.iter().cycle().take(80).map(|(t, _)| t.as_str()).collect();
        let embeddings = model().embed(&texts).expect("embed");
        assert_eq!(embeddings.len(), 80);
        for (i, embedding) in embeddings.iter().enumerate() {
            let c = cosine(embedding, &cases[i % cases.len()].1);
            assert!(c >= 0.999, "text {i} ({:?}) cosine {c}", texts[i]);
        }
    }

    #[test]
    fn embeddings_are_unit_length() {
        let texts = ["", "short", "Ünïcödé and emoji 🚀", "Paris is the capital of France."];
        let embeddings = model().embed(&texts).expect("embed");
        for (text, embedding) in texts.iter().zip(&embeddings) {
            assert_eq!(embedding.len(), model().dimension());
            let norm = embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "norm of {text:?} is {norm}");
        }
        assert!(model().embed(&[]).expect("embed nothing").is_empty());
    }

    #[test]
    fn reports_dimension_and_max_tokens_of_minilm() {
        assert_eq!(model().dimension(), 384);
        let dir = model_dir();
        let expected = if dir.join(SENTENCE_BERT_CONFIG_FILE).exists() { 256 } else { 512 };
        assert_eq!(model().max_tokens(), expected);
    }

    #[test]
    fn long_texts_are_truncated_but_counted_in_full() {
        let long = "hearth ".repeat(1000);
        let max = model().max_tokens();
        let counted = model().count_tokens(&long).expect("count");
        assert!(counted >= 1000, "count_tokens must not truncate, got {counted}");
        assert_eq!(model().usage_tokens(&[&long]).expect("usage"), max);
        let encoding = model().tokenizer().encode(long.as_str(), true).expect("encode");
        assert!(encoding.len() > max, "the exposed tokenizer must not truncate");
        let embedding = model().embed(&[&long, "short"]).expect("embed long");
        assert_eq!(embedding[0].len(), 384);
    }

    #[test]
    fn usage_counts_special_tokens() {
        let texts = ["", "short", "A cat sits on the mat."];
        let expected: usize = texts.iter().map(|t| model().count_tokens(t).expect("count") + 2).sum();
        assert_eq!(model().usage_tokens(&texts).expect("usage"), expected);
        assert_eq!(model().count_tokens("").expect("count"), 0);
        assert_eq!(model().usage_tokens(&[]).expect("usage"), 0);
    }

    #[test]
    fn sentence_bert_config_caps_max_tokens() {
        let dir = ScratchDir::new("sbert");
        assert_eq!(resolve_max_tokens(&dir.0, 512).expect("no file"), 512);
        std::fs::write(dir.0.join(SENTENCE_BERT_CONFIG_FILE), r#"{"max_seq_length": 256, "do_lower_case": false}"#)
            .expect("write");
        assert_eq!(resolve_max_tokens(&dir.0, 512).expect("256"), 256);
        assert_eq!(resolve_max_tokens(&dir.0, 128).expect("capped"), 128);
        std::fs::write(dir.0.join(SENTENCE_BERT_CONFIG_FILE), r#"{"max_seq_length": "long"}"#).expect("write");
        let err = resolve_max_tokens(&dir.0, 512).expect_err("bad value").to_string();
        assert!(err.contains(SENTENCE_BERT_CONFIG_FILE) && err.contains("max_seq_length"), "{err}");
    }

    #[test]
    fn missing_files_are_named() {
        let source = model_dir();
        let dir = ScratchDir::new("missing");
        let err = EmbeddingModel::load(&dir.0, &Device::Cpu).expect_err("empty dir").to_string();
        assert!(err.contains(CONFIG_FILE), "{err}");

        std::fs::copy(source.join(CONFIG_FILE), dir.0.join(CONFIG_FILE)).expect("copy config");
        let err = EmbeddingModel::load(&dir.0, &Device::Cpu).expect_err("no tokenizer").to_string();
        assert!(err.contains(TOKENIZER_FILE), "{err}");

        std::fs::copy(source.join(TOKENIZER_FILE), dir.0.join(TOKENIZER_FILE)).expect("copy tokenizer");
        let err = EmbeddingModel::load(&dir.0, &Device::Cpu).expect_err("no weights").to_string();
        assert!(err.contains(WEIGHTS_FILE), "{err}");

        std::fs::write(dir.0.join(WEIGHTS_FILE), b"not safetensors").expect("write weights");
        let err = EmbeddingModel::load(&dir.0, &Device::Cpu).expect_err("corrupt weights").to_string();
        assert!(err.contains(WEIGHTS_FILE), "{err}");

        std::fs::write(dir.0.join(TOKENIZER_FILE), b"{").expect("write tokenizer");
        let err = EmbeddingModel::load(&dir.0, &Device::Cpu).expect_err("corrupt tokenizer").to_string();
        assert!(err.contains(TOKENIZER_FILE), "{err}");
    }

    #[test]
    fn bad_configs_are_named() {
        let dir = ScratchDir::new("config");
        let path = dir.0.join(CONFIG_FILE);
        let minilm = std::fs::read_to_string(model_dir().join(CONFIG_FILE)).expect("read config");
        let mut config: serde_json::Value = serde_json::from_str(&minilm).expect("parse config");

        std::fs::write(&path, "{ not json").expect("write");
        let err = EmbeddingModel::load(&dir.0, &Device::Cpu).expect_err("not json").to_string();
        assert!(err.contains(CONFIG_FILE), "{err}");

        config["hidden_size"] = "big".into();
        std::fs::write(&path, config.to_string()).expect("write");
        let err = EmbeddingModel::load(&dir.0, &Device::Cpu).expect_err("string size").to_string();
        assert!(err.contains(CONFIG_FILE) && err.contains("invalid type"), "{err}");

        config["hidden_size"] = 384.into();
        config["num_attention_heads"] = 5.into();
        std::fs::write(&path, config.to_string()).expect("write");
        let err = EmbeddingModel::load(&dir.0, &Device::Cpu).expect_err("bad heads").to_string();
        assert!(err.contains(CONFIG_FILE) && err.contains("num_attention_heads"), "{err}");

        config["num_attention_heads"] = 12.into();
        config.as_object_mut().expect("object").remove("vocab_size");
        std::fs::write(&path, config.to_string()).expect("write");
        let err = EmbeddingModel::load(&dir.0, &Device::Cpu).expect_err("no vocab").to_string();
        assert!(err.contains(CONFIG_FILE) && err.contains("vocab_size"), "{err}");
    }

    #[test]
    fn weights_that_do_not_match_the_config_are_reported() {
        let source = model_dir();
        let dir = ScratchDir::new("mismatch");
        let minilm = std::fs::read_to_string(source.join(CONFIG_FILE)).expect("read config");
        let mut config: serde_json::Value = serde_json::from_str(&minilm).expect("parse config");
        config["hidden_size"] = 768.into();
        std::fs::write(dir.0.join(CONFIG_FILE), config.to_string()).expect("write config");
        std::fs::copy(source.join(TOKENIZER_FILE), dir.0.join(TOKENIZER_FILE)).expect("copy tokenizer");
        // Loading reads the weights in place, so a link avoids copying 90 MB where links work.
        let weights = dir.0.join(WEIGHTS_FILE);
        if std::fs::hard_link(source.join(WEIGHTS_FILE), &weights).is_err() {
            std::fs::copy(source.join(WEIGHTS_FILE), &weights).expect("copy weights");
        }
        let err = EmbeddingModel::load(&dir.0, &Device::Cpu).expect_err("mismatched weights").to_string();
        assert!(err.contains(WEIGHTS_FILE) && err.contains("shape"), "{err}");
    }

    /// Throughput on this machine: `cargo test -- --ignored --nocapture embedding_throughput`.
    #[test]
    #[ignore = "benchmark; prints sentences per second"]
    fn embedding_throughput() {
        let sentence = "Hearth runs private AI agents on hardware you own: the operator reconciles models, \
                        cascades, knowledge bases and agents into deployments, and the same spec also drives \
                        a single-process local mode with an embedded vector store for laptops and workstations.";
        let texts: Vec<String> = (0..32).map(|i| format!("{i}: {sentence}")).collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let tokens = model().usage_tokens(&texts).expect("usage") / texts.len();
        model().embed(&texts).expect("warm-up");
        let rounds = 5;
        let start = Instant::now();
        for _ in 0..rounds {
            model().embed(&texts).expect("embed");
        }
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "batch of 32 × ~{tokens} tokens: {:.1} sentences/s ({:.1} ms per batch)",
            (rounds * texts.len()) as f64 / seconds,
            seconds * 1000.0 / rounds as f64
        );
    }
}
