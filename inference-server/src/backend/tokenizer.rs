//! Text tokenizer for generation models.
//!
//! Built either from the tokenizer a GGUF file embeds in its metadata (`tokenizer.ggml.*`), or
//! from a Hugging Face `tokenizer.json`. The GGUF path reproduces llama.cpp's tokenization
//! exactly, so prompts tokenize the same way as in the peer implementation:
//!
//! - **SentencePiece** (`tokenizer.ggml.model = "llama"`, e.g. Gemma): spaces become `▁`, adjacent
//!   pieces are merged by the highest vocabulary score (a priority queue keeps long inputs
//!   linear-logarithmic), and characters outside the vocabulary fall back to `<0xXX>` byte tokens.
//! - **Byte-level BPE** (`tokenizer.ggml.model = "gpt2"`, e.g. Qwen, SmolLM, Llama 3): text is split
//!   by the pre-tokenizer regexes that `tokenizer.ggml.pre` selects, bytes are mapped through the
//!   GPT-2 byte-to-unicode table, and pairs are merged by rank from `tokenizer.ggml.merges`.
//!
//! In both, special tokens (control and user-defined tokens) written in the text are split out
//! first, longest first, exactly like llama.cpp's special-token partition.
//!
//! Decoding concatenates each token's bytes (`▁` becomes a space, byte tokens become bytes,
//! GPT-2 characters become bytes). Unlike llama.cpp it never applies `clean_up_tokenization_spaces`
//! (so `decode(encode(text))` gives the text back), and it ignores the per-model LSTRIP/RSTRIP
//! token attributes llama.cpp sets for Phi-3 and Jina vocabularies.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::utils::SysRegex;

/// Why a tokenizer could not be built, or could not encode or decode.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A GGUF metadata key the tokenizer needs is absent.
    #[error("GGUF metadata has no `{key}`: expected {expected}")]
    MissingMetadata {
        /// The metadata key.
        key: String,
        /// What the key should hold.
        expected: &'static str,
    },
    /// A GGUF metadata value has the wrong type or an impossible value.
    #[error("GGUF metadata `{key}` should be {expected}, found {found}")]
    InvalidMetadata {
        /// The metadata key.
        key: String,
        /// What the key should hold.
        expected: &'static str,
        /// What it holds.
        found: String,
    },
    /// The GGUF names a tokenizer algorithm this crate does not implement.
    #[error("GGUF tokenizer model `{0}` is not supported: expected `llama` (SentencePiece) or `gpt2` (byte-level BPE)")]
    UnsupportedModel(String),
    /// A pre-tokenizer regular expression does not compile.
    #[error("pre-tokenizer pattern `{pattern}` does not compile: {message}")]
    Pattern {
        /// The regular expression.
        pattern: String,
        /// The regex engine's complaint.
        message: String,
    },
    /// A token id is not in the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    UnknownTokenId {
        /// The offending id.
        id: u32,
        /// Number of tokens in the vocabulary.
        vocab_size: usize,
    },
    /// A byte cannot be encoded: the vocabulary has neither a byte token for it nor an unknown token.
    #[error(
        "cannot encode byte 0x{byte:02X}: the vocabulary has no byte-fallback token `<0x{byte:02X}>` and no unknown token"
    )]
    NoByteFallback {
        /// The byte.
        byte: u8,
    },
    /// A `tokenizer.json` (or a sibling config file) could not be read or parsed.
    #[error("cannot load tokenizer from {path}: {message}")]
    TokenizerFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The `tokenizers` library failed while encoding or decoding.
    #[error("tokenizer.json tokenizer failed: {0}")]
    Library(String),
}

type Result<T> = std::result::Result<T, TokenizerError>;

/// A text tokenizer: encodes prompts, decodes generated ids, knows the stop tokens.
///
/// `Send + Sync`; share it with `Arc`.
pub struct TextTokenizer {
    backend: Backend,
}

enum Backend {
    Gguf(Box<GgufVocab>),
    Json(Box<JsonTokenizer>),
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.backend {
            Backend::Gguf(v) => match v.algorithm {
                Algorithm::Spm => "gguf-spm",
                Algorithm::Bpe(_) => "gguf-bpe",
            },
            Backend::Json(_) => "tokenizer.json",
        };
        f.debug_struct("TextTokenizer")
            .field("kind", &kind)
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id())
            .field("stop_ids", &self.stop_ids())
            .finish()
    }
}

impl TextTokenizer {
    /// Builds the tokenizer embedded in a GGUF file's metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(content: &Content) -> Result<Self> {
        Ok(Self { backend: Backend::Gguf(Box::new(GgufVocab::load(content)?)) })
    }

    /// Loads a Hugging Face `tokenizer.json`. BOS/EOS come from a sibling `tokenizer_config.json`
    /// and `generation_config.json` when present, else from well-known token names. Padding and
    /// truncation configured in the file are turned off: prompts are encoded whole.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        Ok(Self { backend: Backend::Json(Box::new(JsonTokenizer::load(path)?)) })
    }

    /// Encodes text. With `add_special` true, prepends BOS when the model's metadata asks for it
    /// (tokenizer.ggml.add_bos_token; default per model type) — exactly as llama.cpp does.
    /// Special tokens written in the text (e.g. "<start_of_turn>", "<|im_start|>") are always
    /// parsed as their single special token id (chat templates emit them).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        match &self.backend {
            Backend::Gguf(v) => v.encode(text, add_special, true),
            Backend::Json(t) => t.encode(text, add_special),
        }
    }

    /// Encodes text in which control-token strings are ordinary text (for untrusted content that
    /// must not inject turn markers). User-defined tokens are still split out, as llama.cpp does
    /// with `parse_special = false`. Only GGUF tokenizers make the distinction; a
    /// `tokenizer.json` tokenizer always parses its special tokens.
    pub fn encode_literal(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        match &self.backend {
            Backend::Gguf(v) => v.encode(text, add_special, false),
            Backend::Json(t) => t.encode(text, add_special),
        }
    }

    /// Decodes ids to text; with `skip_special`, control tokens (BOS, EOS, turn markers) are
    /// dropped. Bytes that do not form valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        match &self.backend {
            Backend::Gguf(v) => {
                let mut bytes = Vec::new();
                let mut start = SequenceStart::Fresh;
                for &id in ids {
                    v.append_piece(id, skip_special, &mut start, &mut bytes)?;
                }
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Backend::Json(t) => t.decode(ids, skip_special),
        }
    }

    /// The model's BOS token id from its metadata, whether or not [`encode`](Self::encode) adds
    /// it (see [`add_bos`](Self::add_bos)).
    pub fn bos_id(&self) -> Option<u32> {
        match &self.backend {
            Backend::Gguf(v) => v.bos,
            Backend::Json(t) => t.bos,
        }
    }

    /// The model's EOS token id (`tokenizer.ggml.eos_token_id`); [`stop_ids`](Self::stop_ids)
    /// lists every id that ends generation.
    pub fn eos_id(&self) -> Option<u32> {
        match &self.backend {
            Backend::Gguf(v) => v.eos,
            Backend::Json(t) => t.eos,
        }
    }

    /// Whether `encode(text, true)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        match &self.backend {
            Backend::Gguf(v) => v.add_bos && v.bos.is_some(),
            Backend::Json(t) => t.add_bos,
        }
    }

    /// Every id that ends generation: tokenizer.ggml.eos_token_id plus end-of-turn tokens such as
    /// <end_of_turn> (gemma), <|im_end|> and <|endoftext|> (qwen/smollm), <|eot_id|> (llama3).
    pub fn stop_ids(&self) -> &[u32] {
        match &self.backend {
            Backend::Gguf(v) => &v.stop_ids,
            Backend::Json(t) => &t.stop_ids,
        }
    }

    /// Number of tokens in the vocabulary (including special tokens).
    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Gguf(v) => v.tokens.len(),
            Backend::Json(t) => t.vocab_size,
        }
    }

    /// The decoded text of one token, for logprobs; special tokens show their text. A token that
    /// is part of a multi-byte character shows U+FFFD.
    pub fn token_text(&self, id: u32) -> Option<String> {
        match &self.backend {
            Backend::Gguf(v) => v.pieces.get(id as usize).map(|p| String::from_utf8_lossy(p).into_owned()),
            Backend::Json(t) => {
                if (id as usize) < t.vocab_size {
                    t.tokenizer.decode(&[id], false).ok()
                } else {
                    None
                }
            }
        }
    }

    /// The id of the token whose vocabulary entry is exactly `text` (e.g. `"<end_of_turn>"`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match &self.backend {
            Backend::Gguf(v) => v.token_to_id.get(text).copied(),
            Backend::Json(t) => t.tokenizer.token_to_id(text),
        }
    }

    /// An incremental decoder for streaming that drops special tokens (like `decode(ids, true)`).
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        self.stream_decoder_with(true)
    }

    /// An incremental decoder for streaming; `skip_special` as in [`decode`](Self::decode).
    pub fn stream_decoder_with(&self, skip_special: bool) -> StreamDecoder<'_> {
        let state = match &self.backend {
            Backend::Gguf(v) => StreamState::Gguf { vocab: v, pending: Vec::new(), start: SequenceStart::Fresh },
            Backend::Json(t) => StreamState::Json { tokenizer: t, ids: Vec::new(), prefix_offset: 0, read_offset: 0 },
        };
        StreamDecoder { state, skip_special }
    }
}

/// Incremental detokenizer for streaming: push ids, get the newly completed text; never emits a
/// partial UTF-8 character (byte-fallback tokens like <0xE2>) or a half-decoded SentencePiece space.
///
/// The concatenation of everything `push` and `finish` return equals `decode(ids, skip_special)`.
pub struct StreamDecoder<'a> {
    state: StreamState<'a>,
    skip_special: bool,
}

enum StreamState<'a> {
    Gguf {
        vocab: &'a GgufVocab,
        /// Bytes not yet emitted because they end in an incomplete UTF-8 character.
        pending: Vec<u8>,
        start: SequenceStart,
    },
    Json {
        tokenizer: &'a JsonTokenizer,
        ids: Vec<u32>,
        prefix_offset: usize,
        read_offset: usize,
    },
}

impl StreamDecoder<'_> {
    /// Adds one generated id; returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        let skip_special = self.skip_special;
        match &mut self.state {
            StreamState::Gguf { vocab, pending, start } => {
                vocab.append_piece(id, skip_special, start, pending)?;
                Ok(drain_utf8(pending, false))
            }
            StreamState::Json { tokenizer, ids, prefix_offset, read_offset } => {
                tokenizer.check_id(id)?;
                ids.push(id);
                // Decode a window with some context before the unread ids, so decoders that treat
                // the first token specially (leading space, byte fallback) see it mid-sentence.
                let prefix = tokenizer.decode(&ids[*prefix_offset..*read_offset], skip_special)?;
                let full = tokenizer.decode(&ids[*prefix_offset..], skip_special)?;
                if full.len() > prefix.len()
                    && !full.ends_with('\u{FFFD}')
                    && let Some(new) = full.strip_prefix(prefix.as_str())
                {
                    let new = new.to_string();
                    *prefix_offset = *read_offset;
                    *read_offset = ids.len();
                    return Ok(new);
                }
                Ok(String::new())
            }
        }
    }

    /// Ends the stream; returns whatever was held back (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> Result<String> {
        let skip_special = self.skip_special;
        match &mut self.state {
            StreamState::Gguf { pending, .. } => Ok(drain_utf8(pending, true)),
            StreamState::Json { tokenizer, ids, prefix_offset, read_offset } => {
                let prefix = tokenizer.decode(&ids[*prefix_offset..*read_offset], skip_special)?;
                let full = tokenizer.decode(&ids[*prefix_offset..], skip_special)?;
                *prefix_offset = ids.len();
                *read_offset = ids.len();
                Ok(full.strip_prefix(prefix.as_str()).unwrap_or(full.as_str()).to_string())
            }
        }
    }
}

/// Moves the longest complete UTF-8 prefix of `pending` into a string. Invalid sequences become
/// U+FFFD exactly as `String::from_utf8_lossy` would; an incomplete trailing character is kept
/// for the next call unless `flush`.
fn drain_utf8(pending: &mut Vec<u8>, flush: bool) -> String {
    let mut out = String::new();
    let mut start = 0;
    while start < pending.len() {
        match std::str::from_utf8(&pending[start..]) {
            Ok(s) => {
                out.push_str(s);
                start = pending.len();
            }
            Err(e) => {
                let valid_end = start + e.valid_up_to();
                out.push_str(&String::from_utf8_lossy(&pending[start..valid_end]));
                start = valid_end;
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        start += n;
                    }
                    None => {
                        if flush {
                            out.push('\u{FFFD}');
                            start = pending.len();
                        }
                        break;
                    }
                }
            }
        }
    }
    pending.drain(..start);
    out
}

// ---------------------------------------------------------------------------------------------
// GGUF vocabulary
// ---------------------------------------------------------------------------------------------

/// Token attributes, as llama.cpp derives them from `tokenizer.ggml.token_type`.
mod attr {
    pub const UNKNOWN: u8 = 1 << 0;
    pub const UNUSED: u8 = 1 << 1;
    pub const NORMAL: u8 = 1 << 2;
    pub const CONTROL: u8 = 1 << 3;
    pub const USER_DEFINED: u8 = 1 << 4;
    pub const BYTE: u8 = 1 << 5;

    /// Maps a GGUF token type (llama.cpp's `llama_token_type`) to attributes.
    pub fn from_gguf_type(t: i64) -> u8 {
        match t {
            1 => NORMAL,
            2 => UNKNOWN,
            3 => CONTROL,
            4 => USER_DEFINED,
            5 => UNUSED,
            6 => BYTE,
            _ => 0,
        }
    }
}

/// Texts llama.cpp treats as end-of-generation (and forces to control type).
const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

/// FIM pad / repository / file-separator tokens, which llama.cpp also counts as end of generation.
const FIM_END_TEXTS: &[&str] = &[
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<reponame>",
    "<|file_sep|>",
];

/// Where a decoded sequence is relative to its SentencePiece prefix space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SequenceStart {
    /// No token seen yet.
    Fresh,
    /// The sequence began with BOS; the next text token may carry the prefix space.
    AfterBos,
    /// Past the first text token.
    Done,
}

enum Algorithm {
    Spm,
    Bpe(Box<BpeModel>),
}

struct GgufVocab {
    algorithm: Algorithm,
    tokens: Vec<String>,
    scores: Vec<f32>,
    attrs: Vec<u8>,
    token_to_id: HashMap<String, u32>,
    /// Each token's decoded bytes (special tokens render as their text).
    pieces: Vec<Vec<u8>>,
    specials: SpecialMatcher,
    /// SentencePiece byte-fallback token per byte.
    byte_tokens: Vec<Option<u32>>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    stop_ids: Vec<u32>,
}

/// BOS/EOS token texts and whether the tokenizer adds BOS, as read from GGUF metadata; chat
/// templates need them without building the whole tokenizer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GgufSpecialTokens {
    /// Text of the BOS token, if the vocabulary defines one.
    pub bos: Option<String>,
    /// Text of the EOS token, if the vocabulary defines one.
    pub eos: Option<String>,
    /// Whether encoding with `add_special` prepends BOS.
    pub add_bos: bool,
}

/// Reads the BOS/EOS token texts and the add-BOS flag from GGUF metadata. Works for tokenizer
/// types this module cannot encode with; fails only on malformed values.
pub fn gguf_special_tokens(content: &Content) -> Result<GgufSpecialTokens> {
    let model = meta_str(content, "tokenizer.ggml.model")?.unwrap_or_default();
    let pre = meta_str(content, "tokenizer.ggml.pre")?.unwrap_or("default");
    let tokens = meta_array(content, "tokenizer.ggml.tokens")?.unwrap_or_default();
    let defaults = TypeDefaults::for_model(model, pre).unwrap_or(TypeDefaults::OTHER);
    let n = tokens.len();
    let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
    let bos = meta_token_id(content, "tokenizer.ggml.bos_token_id", n)?.or(in_range(defaults.bos));
    let eos = meta_token_id(content, "tokenizer.ggml.eos_token_id", n)?.or(in_range(defaults.eos));
    let add_bos = meta_bool(content, "tokenizer.ggml.add_bos_token")?.unwrap_or(defaults.add_bos);
    let text = |id: Option<u32>| match id.and_then(|i| tokens.get(i as usize)) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    Ok(GgufSpecialTokens { bos: text(bos), eos: text(eos), add_bos: add_bos && bos.is_some() })
}

/// llama.cpp's per-type defaults, before metadata overrides them.
struct TypeDefaults {
    is_spm: bool,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    add_space_prefix: bool,
}

impl TypeDefaults {
    /// For tokenizer types without an encoder here: only what metadata states.
    const OTHER: Self =
        Self { is_spm: false, bos: None, eos: None, unk: None, add_bos: false, add_space_prefix: false };

    fn for_model(model: &str, pre: &str) -> Result<Self> {
        match model {
            "llama" => Ok(Self {
                is_spm: true,
                bos: Some(1),
                eos: Some(2),
                unk: Some(0),
                add_bos: true,
                add_space_prefix: true,
            }),
            // llama.cpp defaults BPE BOS/EOS to id 11 (a Falcon relic); without metadata we
            // would rather have none.
            "gpt2" => Ok(Self {
                is_spm: false,
                bos: None,
                eos: None,
                unk: None,
                add_bos: bpe_pre_adds_bos(pre),
                add_space_prefix: false,
            }),
            other => Err(TokenizerError::UnsupportedModel(other.to_string())),
        }
    }
}

impl GgufVocab {
    fn load(content: &Content) -> Result<Self> {
        let model = required_str(content, "tokenizer.ggml.model", "the tokenizer type (`llama` or `gpt2`)")?;
        let pre = meta_str(content, "tokenizer.ggml.pre")?.unwrap_or("default");
        let defaults = TypeDefaults::for_model(model, pre)?;

        let token_values = required_array(content, "tokenizer.ggml.tokens", "the vocabulary (array of strings)")?;
        if token_values.is_empty() {
            return Err(invalid("tokenizer.ggml.tokens", "a non-empty array of strings", "an empty array"));
        }
        let n = token_values.len();
        if u32::try_from(n).is_err() {
            return Err(invalid("tokenizer.ggml.tokens", "fewer than 2^32 tokens", &n.to_string()));
        }
        let mut tokens = Vec::with_capacity(n);
        for (i, v) in token_values.iter().enumerate() {
            match v {
                // llama.cpp gives empty entries a placeholder so every text maps to one id.
                Value::String(s) if s.is_empty() => tokens.push(format!("[EMPTY_{i}]")),
                Value::String(s) => tokens.push(s.clone()),
                other => {
                    return Err(invalid(
                        "tokenizer.ggml.tokens",
                        "an array of strings",
                        &format!("{:?} at index {i}", other.value_type()),
                    ));
                }
            }
        }

        let mut scores = vec![0.0f32; n];
        if let Some(values) = meta_array(content, "tokenizer.ggml.scores")? {
            for (i, v) in values.iter().take(n).enumerate() {
                scores[i] = match v {
                    Value::F32(x) => *x,
                    Value::F64(x) => *x as f32,
                    other => {
                        return Err(invalid(
                            "tokenizer.ggml.scores",
                            "an array of floats",
                            &format!("{:?} at index {i}", other.value_type()),
                        ));
                    }
                };
            }
        }

        let mut attrs = vec![attr::NORMAL; n];
        if let Some(values) = meta_array(content, "tokenizer.ggml.token_type")? {
            for (i, v) in values.iter().take(n).enumerate() {
                let t = value_as_i64(v).ok_or_else(|| {
                    invalid(
                        "tokenizer.ggml.token_type",
                        "an array of integers",
                        &format!("{:?} at index {i}", v.value_type()),
                    )
                })?;
                attrs[i] = attr::from_gguf_type(t);
            }
        }

        let mut token_to_id = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            // Later duplicates win, as in llama.cpp's map.
            token_to_id.insert(t.clone(), i as u32);
        }

        let add_space_prefix =
            meta_bool(content, "tokenizer.ggml.add_space_prefix")?.unwrap_or(defaults.add_space_prefix);
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        let bos = meta_token_id(content, "tokenizer.ggml.bos_token_id", n)?.or(in_range(defaults.bos));
        let eos = meta_token_id(content, "tokenizer.ggml.eos_token_id", n)?.or(in_range(defaults.eos));
        let unk = meta_token_id(content, "tokenizer.ggml.unknown_token_id", n)?.or(in_range(defaults.unk));
        let add_bos = meta_bool(content, "tokenizer.ggml.add_bos_token")?.unwrap_or(defaults.add_bos);
        let add_eos = meta_bool(content, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);

        // End of generation: explicit ids, then well-known texts (forced to control type, as
        // llama.cpp does, so they are parsed in text and hidden when decoding).
        let mut stop_ids = Vec::new();
        stop_ids.extend(eos);
        for key in [
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
            "tokenizer.ggml.fim_pad_token_id",
            "tokenizer.ggml.fim_rep_token_id",
            "tokenizer.ggml.fim_sep_token_id",
        ] {
            stop_ids.extend(meta_token_id(content, key, n)?);
        }
        for text in END_OF_GENERATION_TEXTS.iter().chain(FIM_END_TEXTS) {
            if let Some(&id) = token_to_id.get(*text) {
                attrs[id as usize] |= attr::CONTROL;
                stop_ids.push(id);
            }
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();

        let algorithm = if defaults.is_spm {
            Algorithm::Spm
        } else {
            Algorithm::Bpe(Box::new(BpeModel::load(content, pre, &token_to_id, n)?))
        };

        let mut byte_tokens = vec![None; 256];
        if defaults.is_spm {
            for (b, slot) in byte_tokens.iter_mut().enumerate() {
                let hex = format!("<0x{b:02X}>");
                *slot = token_to_id.get(&hex).copied().or_else(|| {
                    // llama.cpp falls back to the byte itself as a one-character token.
                    char::from_u32(b as u32)
                        .filter(|c| c.is_ascii())
                        .and_then(|c| token_to_id.get(c.to_string().as_str()).copied())
                });
            }
        }

        let pieces = tokens.iter().zip(&attrs).map(|(text, &a)| render_piece(text, a, &algorithm)).collect();

        let specials = SpecialMatcher::new(&tokens, &attrs);

        Ok(Self {
            algorithm,
            tokens,
            scores,
            attrs,
            token_to_id,
            pieces,
            specials,
            byte_tokens,
            bos,
            eos,
            unk,
            add_bos,
            add_eos,
            add_space_prefix,
            stop_ids,
        })
    }

    fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        let fragments = self.specials.partition(text, &self.attrs, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        match &self.algorithm {
            Algorithm::Spm => {
                let mut prev_special = true;
                for fragment in fragments {
                    match fragment {
                        Fragment::Text(start, end) => {
                            let raw = text.get(start..end).unwrap_or_default();
                            let mut escaped = String::with_capacity(raw.len() + 3);
                            if self.add_space_prefix && prev_special {
                                escaped.push('▁');
                            }
                            for c in raw.chars() {
                                escaped.push(if c == ' ' { '▁' } else { c });
                            }
                            self.spm_tokenize(&escaped, &mut out)?;
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Algorithm::Bpe(bpe) => {
                for fragment in fragments {
                    match fragment {
                        Fragment::Text(start, end) => {
                            let raw = text.get(start..end).unwrap_or_default();
                            for (s, e) in bpe.pretokenize(raw) {
                                self.bpe_word(bpe, &raw.as_bytes()[s..e], &mut out);
                            }
                        }
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        Ok(out)
    }

    /// llama.cpp's SentencePiece session: start from UTF-8 characters, repeatedly merge the
    /// adjacent pair whose concatenation is the highest-scoring vocabulary entry (ties: leftmost).
    fn spm_tokenize(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        const NONE: usize = usize::MAX;
        struct Symbol {
            start: usize,
            len: usize,
            prev: usize,
            next: usize,
        }
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            let len = c.len_utf8();
            symbols.push(Symbol {
                start,
                len,
                prev: if i == 0 { NONE } else { i - 1 },
                next: if start + len == text.len() { NONE } else { i + 1 },
            });
        }
        if symbols.is_empty() {
            return Ok(());
        }

        let mut queue: BinaryHeap<SpmBigram> = BinaryHeap::with_capacity(symbols.len());
        let try_add = |symbols: &[Symbol], queue: &mut BinaryHeap<SpmBigram>, left: usize, right: usize| {
            if left == NONE || right == NONE {
                return;
            }
            let start = symbols[left].start;
            let size = symbols[left].len + symbols[right].len;
            let Some(piece) = text.get(start..start + size) else { return };
            if let Some(&id) = self.token_to_id.get(piece) {
                queue.push(SpmBigram::new(self.scores[id as usize], left, right, size));
            }
        };
        for i in 1..symbols.len() {
            try_add(&symbols, &mut queue, i - 1, i);
        }
        while let Some(bigram) = queue.pop() {
            let (l, r) = (bigram.left, bigram.right);
            if symbols[l].len == 0 || symbols[r].len == 0 || symbols[l].len + symbols[r].len != bigram.size {
                continue;
            }
            symbols[l].len += symbols[r].len;
            symbols[r].len = 0;
            let next = symbols[r].next;
            symbols[l].next = next;
            if next != NONE {
                symbols[next].prev = l;
            }
            let prev = symbols[l].prev;
            try_add(&symbols, &mut queue, prev, l);
            try_add(&symbols, &mut queue, l, next);
        }

        let mut i = 0;
        while i != NONE {
            let sym = &symbols[i];
            let piece = text.get(sym.start..sym.start + sym.len).unwrap_or_default();
            match self.token_to_id.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for &b in piece.as_bytes() {
                        let id = self.byte_tokens[b as usize]
                            .or(self.unk)
                            .ok_or(TokenizerError::NoByteFallback { byte: b })?;
                        out.push(id);
                    }
                }
            }
            i = sym.next;
        }
        Ok(())
    }

    /// llama.cpp's BPE session for one pre-tokenized word: start from bytes (as GPT-2 unicode
    /// characters), repeatedly merge the adjacent pair with the lowest merge rank (ties: leftmost).
    fn bpe_word(&self, bpe: &BpeModel, word: &[u8], out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if bpe.ignore_merges {
            let encoded: String = word.iter().map(|&b| bpe.byte_encoder[b as usize]).collect();
            if let Some(&id) = self.token_to_id.get(&encoded) {
                out.push(id);
                return;
            }
        }
        const NONE: usize = usize::MAX;
        struct Symbol {
            sid: u32,
            alive: bool,
            prev: usize,
            next: usize,
        }
        let n = word.len();
        let mut symbols: Vec<Symbol> = word
            .iter()
            .enumerate()
            .map(|(i, &b)| Symbol {
                sid: bpe.byte_sids[b as usize],
                alive: true,
                prev: if i == 0 { NONE } else { i - 1 },
                next: if i + 1 == n { NONE } else { i + 1 },
            })
            .collect();
        // (rank, left) orders the queue; sids detect stale entries.
        let mut queue: BpeQueue = BinaryHeap::new();
        let try_add = |symbols: &[Symbol], queue: &mut BpeQueue, left: usize, right: usize| {
            if left == NONE || right == NONE {
                return;
            }
            let (ls, rs) = (symbols[left].sid, symbols[right].sid);
            if let Some(&(rank, _)) = bpe.merges.get(&(ls, rs)) {
                queue.push(Reverse((rank, left, right, ls, rs)));
            }
        };
        for i in 1..n {
            try_add(&symbols, &mut queue, i - 1, i);
        }
        while let Some(Reverse((_, l, r, ls, rs))) = queue.pop() {
            if !symbols[l].alive || !symbols[r].alive || symbols[l].sid != ls || symbols[r].sid != rs {
                continue;
            }
            let Some(&(_, merged)) = bpe.merges.get(&(ls, rs)) else { continue };
            symbols[l].sid = merged;
            symbols[r].alive = false;
            let next = symbols[r].next;
            symbols[l].next = next;
            if next != NONE {
                symbols[next].prev = l;
            }
            let prev = symbols[l].prev;
            try_add(&symbols, &mut queue, prev, l);
            try_add(&symbols, &mut queue, l, next);
        }

        let vocab_len = self.tokens.len() as u32;
        let mut i = 0;
        while i != NONE {
            let sym = &symbols[i];
            if sym.sid < vocab_len {
                out.push(sym.sid);
            } else {
                // Not a vocabulary entry: llama.cpp emits the single-byte tokens it can find.
                for b in bpe.sid_text(sym.sid).bytes() {
                    if b.is_ascii()
                        && let Some(&id) = self.token_to_id.get(char::from(b).to_string().as_str())
                    {
                        out.push(id);
                    }
                }
            }
            i = sym.next;
        }
    }

    /// Appends the decoded bytes of one token. `start` tracks the space SentencePiece puts before
    /// a prompt (`add_space_prefix`): in a sequence that begins with BOS (an encoded prompt) the
    /// first text token loses it; a sequence without BOS (generated text) keeps every space.
    fn append_piece(&self, id: u32, skip_special: bool, start: &mut SequenceStart, out: &mut Vec<u8>) -> Result<()> {
        let idx = id as usize;
        let Some(piece) = self.pieces.get(idx) else {
            return Err(TokenizerError::UnknownTokenId { id, vocab_size: self.tokens.len() });
        };
        if *start == SequenceStart::Fresh {
            *start = if Some(id) == self.bos { SequenceStart::AfterBos } else { SequenceStart::Done };
        }
        if skip_special && self.attrs[idx] & (attr::CONTROL | attr::UNKNOWN) != 0 {
            return Ok(());
        }
        let mut piece = piece.as_slice();
        if piece.is_empty() || Some(id) == self.bos {
            out.extend_from_slice(piece);
            return Ok(());
        }
        if *start == SequenceStart::AfterBos {
            *start = SequenceStart::Done;
            if self.add_space_prefix && piece.first() == Some(&b' ') {
                piece = &piece[1..];
            }
        }
        out.extend_from_slice(piece);
        Ok(())
    }
}

/// BPE merge candidates: (rank, left, right, left sid, right sid), lowest rank then leftmost first.
type BpeQueue = BinaryHeap<Reverse<(u32, usize, usize, u32, u32)>>;

/// A token's decoded bytes, as llama.cpp's `token_to_piece` with `special = true`.
fn render_piece(text: &str, a: u8, algorithm: &Algorithm) -> Vec<u8> {
    if a & (attr::CONTROL | attr::UNKNOWN | attr::USER_DEFINED) != 0 {
        return text.as_bytes().to_vec();
    }
    match algorithm {
        Algorithm::Spm => {
            if a & attr::NORMAL != 0 {
                text.replace('▁', " ").into_bytes()
            } else if a & attr::BYTE != 0 {
                parse_byte_token(text).map(|b| vec![b]).unwrap_or_else(|| text.as_bytes().to_vec())
            } else {
                Vec::new()
            }
        }
        Algorithm::Bpe(bpe) => {
            if a & attr::NORMAL != 0 {
                let mut bytes = Vec::with_capacity(text.len());
                for c in text.chars() {
                    match bpe.byte_decoder.get(&c) {
                        Some(&b) => bytes.push(b),
                        None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                bytes
            } else {
                Vec::new()
            }
        }
    }
}

/// Parses a SentencePiece byte token such as `<0x0A>`.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

/// A SentencePiece merge candidate; the queue pops the highest score, then the leftmost pair.
struct SpmBigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl SpmBigram {
    fn new(score: f32, left: usize, right: usize, size: usize) -> Self {
        // llama.cpp compares with `<`: -0.0 equals 0.0, and NaN never wins.
        let score = if score.is_nan() {
            f32::NEG_INFINITY
        } else if score == 0.0 {
            0.0
        } else {
            score
        };
        Self { score, left, right, size }
    }
}

impl Ord for SpmBigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for SpmBigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for SpmBigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for SpmBigram {}

// ---------------------------------------------------------------------------------------------
// Byte-level BPE
// ---------------------------------------------------------------------------------------------

struct BpeModel {
    pretokenizer: Vec<SysRegex>,
    ignore_merges: bool,
    /// (left sid, right sid) -> (rank, merged sid). A sid is a token id for vocabulary strings,
    /// or `vocab_len + i` for the i-th string that only appears in merges.
    merges: HashMap<(u32, u32), (u32, u32)>,
    extra_strings: Vec<String>,
    vocab_len: u32,
    /// Sid of each byte's GPT-2 character.
    byte_sids: [u32; 256],
    byte_encoder: [char; 256],
    byte_decoder: HashMap<char, u8>,
}

impl BpeModel {
    fn load(content: &Content, pre: &str, token_to_id: &HashMap<String, u32>, vocab_len: usize) -> Result<Self> {
        let (patterns, ignore_merges) = bpe_pre_patterns(pre);
        let mut pretokenizer = Vec::with_capacity(patterns.len());
        for pattern in patterns {
            let re = SysRegex::new(pattern)
                .map_err(|e| TokenizerError::Pattern { pattern: pattern.to_string(), message: e.to_string() })?;
            pretokenizer.push(re);
        }

        let vocab_len = vocab_len as u32;
        let mut extra_strings: Vec<String> = Vec::new();
        let mut extra_ids: HashMap<String, u32> = HashMap::new();
        let mut intern = |s: &str| -> u32 {
            if let Some(&id) = token_to_id.get(s) {
                return id;
            }
            if let Some(&id) = extra_ids.get(s) {
                return id;
            }
            let id = vocab_len + extra_strings.len() as u32;
            extra_strings.push(s.to_string());
            extra_ids.insert(s.to_string(), id);
            id
        };

        let byte_encoder = gpt2_byte_encoder();
        let mut byte_decoder = HashMap::with_capacity(256);
        let mut byte_sids = [0u32; 256];
        for (b, &c) in byte_encoder.iter().enumerate() {
            byte_decoder.insert(c, b as u8);
            byte_sids[b] = intern(c.encode_utf8(&mut [0; 4]));
        }

        let merge_values =
            required_array(content, "tokenizer.ggml.merges", "the BPE merges (array of \"left right\" strings)")?;
        let mut merges = HashMap::with_capacity(merge_values.len());
        for (rank, v) in merge_values.iter().enumerate() {
            let Value::String(merge) = v else {
                return Err(invalid(
                    "tokenizer.ggml.merges",
                    "an array of strings",
                    &format!("{:?} at index {rank}", v.value_type()),
                ));
            };
            // Split at the first space after the first byte, as llama.cpp does.
            let Some(pos) = merge.as_bytes().iter().skip(1).position(|&b| b == b' ').map(|p| p + 1) else {
                continue;
            };
            let (left, right) = (&merge[..pos], &merge[pos + 1..]);
            let (ls, rs) = (intern(left), intern(right));
            let merged = intern(&format!("{left}{right}"));
            // The first occurrence of a pair keeps its rank.
            merges.entry((ls, rs)).or_insert((rank as u32, merged));
        }

        Ok(Self {
            pretokenizer,
            ignore_merges,
            merges,
            extra_strings,
            vocab_len,
            byte_sids,
            byte_encoder,
            byte_decoder,
        })
    }

    fn sid_text(&self, sid: u32) -> &str {
        sid.checked_sub(self.vocab_len)
            .and_then(|i| self.extra_strings.get(i as usize))
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// Splits text into words with each regex in turn; text between matches is kept as words
    /// too (llama.cpp's `unicode_regex_split`). Returns byte ranges.
    fn pretokenize(&self, text: &str) -> Vec<(usize, usize)> {
        let mut pieces = vec![(0, text.len())];
        for re in &self.pretokenizer {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for &(start, end) in &pieces {
                let sub = &text[start..end];
                let mut prev = 0;
                for (ms, me) in re.find_iter(sub) {
                    if ms > prev {
                        next.push((start + prev, start + ms));
                    }
                    if me > ms {
                        next.push((start + ms, start + me));
                    }
                    prev = me.max(prev);
                }
                if prev < sub.len() {
                    next.push((start + prev, end));
                }
            }
            pieces = next;
        }
        pieces
    }
}

/// The GPT-2 byte-to-unicode table: printable Latin-1 bytes map to themselves, the rest to
/// U+0100 upwards.
fn gpt2_byte_encoder() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u32;
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let cp = if printable {
            b
        } else {
            shifted += 1;
            255 + shifted
        };
        *slot = char::from_u32(cp).unwrap_or('\u{FFFD}');
    }
    table
}

const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Whether llama.cpp adds BOS by default for a BPE pre-tokenizer type.
fn bpe_pre_adds_bos(pre: &str) -> bool {
    matches!(
        pre,
        "llama3"
            | "llama-v3"
            | "llama-bpe"
            | "falcon3"
            | "falcon-h1"
            | "pixtral"
            | "midm-2.0"
            | "lfm2"
            | "tekken"
            | "chameleon"
    )
}

/// The pre-tokenizer regexes llama.cpp applies for a `tokenizer.ggml.pre` value, and whether a
/// word found whole in the vocabulary skips merging. Unknown values get llama.cpp's default.
fn bpe_pre_patterns(pre: &str) -> (Vec<&'static str>, bool) {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" => {
            (vec![LLAMA3_PATTERN], true)
        }
        "dbrx" | "smaug-bpe" | "glm4" | "chatglm-bpe" => (vec![LLAMA3_PATTERN], false),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "stablelm2" | "megrez" | "hunyuan" | "solar-open" | "grok-2" => {
            (vec![QWEN2_PATTERN], false)
        }
        "qwen35" => (
            vec![
                r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ],
            false,
        ),
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => {
            (vec![r"\p{N}", GPT2_PATTERN], false)
        }
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum"
        | "modern-bert" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo" | "jais" | "trillion"
        | "granite-docling" | "exaone4" => (vec![GPT2_PATTERN], false),
        "deepseek-coder" => (vec![r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"], false),
        "deepseek-v3" | "hunyuan-dense" | "joyai-llm" => (
            vec![
                r"\p{N}{1,3}",
                r"[一-龥぀-ゟ゠-ヿ]+",
                r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""##,
            ],
            false,
        ),
        "falcon" => (vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2_PATTERN, r"[0-9][0-9][0-9]"], false),
        "poro-chat" | "bloom" | "gpt3-finnish" => (vec![r" ?[^(\s|.,!?…。，、।۔،)]+"], false),
        "viking" => (vec![r" ?[^(\s|.,!?…。，、।۔،)]+", r"\p{N}"], false),
        "tekken" => (
            vec![
                r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ],
            true,
        ),
        "gpt-4o" | "llama4" | "minimax-m2" => (
            vec![
                r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ],
            false,
        ),
        "seed-coder" => (
            vec![
                r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",
            ],
            false,
        ),
        "bailingmoe" | "bailingmoe2" | "llada-moe" => (
            vec![
                r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
            ],
            false,
        ),
        _ => (vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2_PATTERN, r"\p{N}+", r"[0-9][0-9][0-9]"], false),
    }
}

// ---------------------------------------------------------------------------------------------
// Special-token partition
// ---------------------------------------------------------------------------------------------

enum Fragment {
    Text(usize, usize),
    Token(u32),
}

/// Finds special tokens (control, user-defined, unknown) in text with a byte trie.
struct SpecialMatcher {
    nodes: Vec<TrieNode>,
}

#[derive(Default)]
struct TrieNode {
    /// Sorted by byte.
    children: Vec<(u8, u32)>,
    token: Option<u32>,
}

impl SpecialMatcher {
    fn new(tokens: &[String], attrs: &[u8]) -> Self {
        let mut nodes = vec![TrieNode::default()];
        for (id, (text, &a)) in tokens.iter().zip(attrs).enumerate() {
            if a & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) == 0 || text.is_empty() {
                continue;
            }
            let mut node = 0usize;
            for &b in text.as_bytes() {
                node = match nodes[node].children.binary_search_by_key(&b, |&(k, _)| k) {
                    Ok(i) => nodes[node].children[i].1 as usize,
                    Err(i) => {
                        let child = nodes.len();
                        nodes.push(TrieNode::default());
                        nodes[node].children.insert(i, (b, child as u32));
                        child
                    }
                };
            }
            // Duplicate texts: the lowest id wins, as in the tie-break below.
            nodes[node].token.get_or_insert(id as u32);
        }
        Self { nodes }
    }

    /// Splits text into raw-text fragments and special tokens like llama.cpp's
    /// `tokenizer_st_partition`: special tokens are taken longest first (ties by id), each
    /// occurrence left to right, never overlapping one already taken.
    fn partition(&self, text: &str, attrs: &[u8], parse_special: bool) -> Vec<Fragment> {
        let bytes = text.as_bytes();
        // (length, id, start) of every occurrence.
        let mut found: Vec<(usize, u32, usize)> = Vec::new();
        if self.nodes[0].children.is_empty() {
            return whole_text(text);
        }
        for start in 0..bytes.len() {
            let mut node = 0usize;
            let mut pos = start;
            loop {
                if let Some(id) = self.nodes[node].token {
                    let a = attrs[id as usize];
                    if parse_special || a & (attr::CONTROL | attr::UNKNOWN) == 0 {
                        found.push((pos - start, id, start));
                    }
                }
                let Some(&b) = bytes.get(pos) else { break };
                match self.nodes[node].children.binary_search_by_key(&b, |&(k, _)| k) {
                    Ok(i) => node = self.nodes[node].children[i].1 as usize,
                    Err(_) => break,
                }
                pos += 1;
            }
        }
        if found.is_empty() {
            return whole_text(text);
        }
        found.sort_unstable_by_key(|&(len, id, start)| (Reverse(len), id, start));
        // Occurrences come longest first, so one that overlaps a taken span (at least as long)
        // must overlap at its first or last byte.
        let mut taken = vec![false; bytes.len()];
        let mut accepted: Vec<(usize, usize, u32)> = Vec::new();
        for (len, id, start) in found {
            let end = start + len;
            if taken[start] || taken[end - 1] {
                continue;
            }
            taken[start..end].iter_mut().for_each(|t| *t = true);
            accepted.push((start, end, id));
        }
        accepted.sort_unstable();
        let mut fragments = Vec::with_capacity(accepted.len() * 2 + 1);
        let mut prev = 0;
        for (start, end, id) in accepted {
            if start > prev {
                fragments.push(Fragment::Text(prev, start));
            }
            fragments.push(Fragment::Token(id));
            prev = end;
        }
        if prev < bytes.len() {
            fragments.push(Fragment::Text(prev, bytes.len()));
        }
        fragments
    }
}

fn whole_text(text: &str) -> Vec<Fragment> {
    if text.is_empty() { Vec::new() } else { vec![Fragment::Text(0, text.len())] }
}

// ---------------------------------------------------------------------------------------------
// GGUF metadata access
// ---------------------------------------------------------------------------------------------

fn invalid(key: &str, expected: &'static str, found: &str) -> TokenizerError {
    TokenizerError::InvalidMetadata { key: key.to_string(), expected, found: found.to_string() }
}

fn meta_str<'a>(content: &'a Content, key: &str) -> Result<Option<&'a str>> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(invalid(key, "a string", &format!("{:?}", other.value_type()))),
    }
}

fn required_str<'a>(content: &'a Content, key: &str, expected: &'static str) -> Result<&'a str> {
    meta_str(content, key)?.ok_or_else(|| TokenizerError::MissingMetadata { key: key.to_string(), expected })
}

fn meta_array<'a>(content: &'a Content, key: &str) -> Result<Option<&'a [Value]>> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(Value::Array(values)) => Ok(Some(values.as_slice())),
        Some(other) => Err(invalid(key, "an array", &format!("{:?}", other.value_type()))),
    }
}

fn required_array<'a>(content: &'a Content, key: &str, expected: &'static str) -> Result<&'a [Value]> {
    meta_array(content, key)?.ok_or_else(|| TokenizerError::MissingMetadata { key: key.to_string(), expected })
}

fn meta_bool(content: &Content, key: &str) -> Result<Option<bool>> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => match value_as_i64(v) {
            Some(0) => Ok(Some(false)),
            Some(1) => Ok(Some(true)),
            _ => Err(invalid(key, "a boolean", &format!("{v:?}"))),
        },
    }
}

/// A token id from metadata; ids outside the vocabulary are ignored (llama.cpp warns and keeps
/// its default).
fn meta_token_id(content: &Content, key: &str, vocab_len: usize) -> Result<Option<u32>> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(v) => {
            let id = value_as_i64(v).ok_or_else(|| invalid(key, "an integer token id", &format!("{v:?}")))?;
            Ok(u32::try_from(id).ok().filter(|&id| (id as usize) < vocab_len))
        }
    }
}

fn value_as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::U8(x) => Some(i64::from(*x)),
        Value::I8(x) => Some(i64::from(*x)),
        Value::U16(x) => Some(i64::from(*x)),
        Value::I16(x) => Some(i64::from(*x)),
        Value::U32(x) => Some(i64::from(*x)),
        Value::I32(x) => Some(i64::from(*x)),
        Value::U64(x) => i64::try_from(*x).ok(),
        Value::I64(x) => Some(*x),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json
// ---------------------------------------------------------------------------------------------

struct JsonTokenizer {
    tokenizer: tokenizers::Tokenizer,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    stop_ids: Vec<u32>,
}

impl JsonTokenizer {
    fn load(path: &Path) -> Result<Self> {
        let file_error =
            |path: &Path, message: String| TokenizerError::TokenizerFile { path: path.to_path_buf(), message };
        let mut tokenizer = tokenizers::Tokenizer::from_file(path).map_err(|e| file_error(path, e.to_string()))?;
        // Prompts are encoded one at a time and must not be cut or padded behind the caller's back.
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| file_error(path, format!("cannot disable truncation: {e}")))?;
        // Computing the size copies the whole vocabulary, so do it once.
        let vocab_size = tokenizer.get_vocab_size(true);

        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let read_json = |name: &str| -> Result<Option<serde_json::Value>> {
            let p = dir.join(name);
            match std::fs::read_to_string(&p) {
                Ok(s) => serde_json::from_str(&s).map(Some).map_err(|e| file_error(&p, e.to_string())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(file_error(&p, e.to_string())),
            }
        };
        let config = read_json("tokenizer_config.json")?;
        let generation = read_json("generation_config.json")?;

        let token_from_config = |field: &str| -> Option<u32> {
            let v = config.as_ref()?.get(field)?;
            let text = v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str()))?;
            tokenizer.token_to_id(text)
        };
        let first_known = |names: &[&str]| names.iter().find_map(|n| tokenizer.token_to_id(n));

        let bos = token_from_config("bos_token")
            .or_else(|| first_known(&["<|begin_of_text|>", "<bos>", "<s>", "<|startoftext|>", "[CLS]"]));
        let eos = token_from_config("eos_token")
            .or_else(|| first_known(&["<|end_of_text|>", "<eos>", "</s>", "<|endoftext|>", "[SEP]"]));

        let mut stop_ids: Vec<u32> = eos.into_iter().collect();
        if let Some(v) = generation.as_ref().and_then(|g| g.get("eos_token_id")) {
            match v {
                serde_json::Value::Array(items) => {
                    stop_ids.extend(items.iter().filter_map(|i| i.as_u64()).filter_map(|i| u32::try_from(i).ok()))
                }
                other => stop_ids.extend(other.as_u64().and_then(|i| u32::try_from(i).ok())),
            }
        }
        stop_ids.extend(END_OF_GENERATION_TEXTS.iter().filter_map(|t| tokenizer.token_to_id(t)));
        stop_ids.sort_unstable();
        stop_ids.dedup();

        let add_bos = match bos {
            Some(b) => tokenizer.encode("a", true).map(|enc| enc.get_ids().first() == Some(&b)).unwrap_or(false),
            None => false,
        };
        Ok(Self { tokenizer, vocab_size, bos, eos, add_bos, stop_ids })
    }

    fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, add_special).map_err(|e| TokenizerError::Library(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    fn check_id(&self, id: u32) -> Result<()> {
        if (id as usize) < self.vocab_size {
            Ok(())
        } else {
            Err(TokenizerError::UnknownTokenId { id, vocab_size: self.vocab_size })
        }
    }

    fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        for &id in ids {
            self.check_id(id)?;
        }
        self.tokenizer.decode(ids, skip_special).map_err(|e| TokenizerError::Library(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;
    use std::time::Instant;

    const GEMMA: &str = "gemma3-270m-q4_k_m.gguf";
    const SMOLLM: &str = "smollm2-135m-instruct-q4_1.gguf";
    const QWEN_15B: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";
    const QWEN_05B: &str = "qwen2.5-coder-0.5b-instruct.gguf";

    fn model_path(file: &str) -> PathBuf {
        crate::test_models::path(file)
    }

    /// The metadata of a model in the CI "small" set; missing means the cache was not populated.
    fn required_content(file: &str) -> Content {
        crate::test_models::gguf(&crate::test_models::required(file))
    }

    /// A tokenizer for a model in the CI "small" set (built once per test binary).
    fn required(file: &str) -> &'static TextTokenizer {
        static CACHE: OnceLock<std::sync::Mutex<HashMap<String, &'static TextTokenizer>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(file.to_string()).or_insert_with(|| {
            let tok = TextTokenizer::from_gguf(&required_content(file))
                .unwrap_or_else(|e| panic!("tokenizer from {file}: {e}"));
            Box::leak(Box::new(tok))
        })
    }

    /// A model outside the CI set: tests skip when it is absent.
    fn optional(file: &str) -> Option<&'static TextTokenizer> {
        crate::test_models::optional(file).map(|_| required(file))
    }

    #[derive(serde::Deserialize)]
    struct Reference {
        cases: Vec<Case>,
    }

    #[derive(serde::Deserialize)]
    struct Case {
        prompt: String,
        prompt_ids: Vec<u32>,
        greedy_ids: Vec<u32>,
        greedy_text: String,
    }

    fn check_reference(tok: &TextTokenizer, reference: &str, label: &str) {
        let reference: Reference = serde_json::from_str(reference).expect("reference fixture parses");
        let mut matched = 0;
        let mut failures = Vec::new();
        let mut joint_exact = 0;
        for case in &reference.cases {
            let ids = tok.encode(&case.prompt, true).expect("encode");
            if ids == case.prompt_ids {
                matched += 1;
            } else {
                failures.push(format!("{:?}: got {:?}, llama.cpp {:?}", case.prompt, ids, case.prompt_ids));
            }
            assert_eq!(tok.decode(&case.prompt_ids, true).expect("decode"), case.prompt, "{label}: decode(prompt_ids)");
            assert_eq!(
                tok.decode(&case.greedy_ids, true).expect("decode"),
                case.greedy_text,
                "{label}: decode(greedy_ids)"
            );
            // The continuation re-encodes to text that decodes back, usually to the same ids.
            let full = format!("{}{}", case.prompt, case.greedy_text);
            let full_ids = tok.encode(&full, true).expect("encode");
            assert_eq!(tok.decode(&full_ids, true).expect("decode"), full, "{label}: round trip");
            let mut expected = case.prompt_ids.clone();
            expected.extend(case.greedy_ids.iter().filter(|id| !tok.stop_ids().contains(id)));
            if full_ids == expected {
                joint_exact += 1;
            }
        }
        eprintln!(
            "{label}: {matched}/{} prompts match llama.cpp; prompt+continuation re-encodes to the same ids in {joint_exact}/{}",
            reference.cases.len(),
            reference.cases.len()
        );
        assert!(failures.is_empty(), "{label}: {} mismatches:\n{}", failures.len(), failures.join("\n"));
        assert!(joint_exact * 2 >= reference.cases.len(), "{label}: continuations re-encode very differently");
    }

    #[test]
    fn gemma_prompts_match_llama_cpp() {
        check_reference(
            required(GEMMA),
            include_str!("../../../tests/fixtures/reference/gemma3-270m-q4_k_m.greedy.json"),
            "gemma3-270m",
        );
    }

    #[test]
    fn smollm_prompts_match_llama_cpp() {
        check_reference(
            required(SMOLLM),
            include_str!("../../../tests/fixtures/reference/smollm2-135m-instruct-q4_1.greedy.json"),
            "smollm2-135m",
        );
    }

    #[test]
    fn qwen_prompts_match_llama_cpp() {
        let reference =
            include_str!("../../../tests/fixtures/reference/qwen2.5-coder-1.5b-instruct-q4_k_m.greedy.json");
        // Both Qwen2.5-Coder files share one vocabulary and merge list.
        for file in [QWEN_15B, QWEN_05B] {
            if let Some(tok) = optional(file) {
                check_reference(tok, reference, file);
            }
        }
    }

    /// Tricky texts, with the ids llama.cpp (llama-cpp-python 0.3.36, add_bos) gives for them:
    /// per model, (ids with special tokens parsed, ids with control tokens as plain text).
    const TRICKY_TEXTS: [&str; 5] = [
        "  two leading\t\ttabs\r\n\n\n    indented code\n",
        "naïve café — 東京 🚀 x\u{301} ½²٣ \u{a0}\u{3000}",
        "I'm you're DON'T we'VE 12345678901234567890 3.14",
        "<start_of_turn>user\nhi<end_of_turn>\n<|im_start|>assistant<|im_end|><|endoftext|><tool_call>",
        "def f(x):\n    return {\"k\": [x**2, 'y']}  # <h1>",
    ];
    const GEMMA_TRICKY_IDS: [(&[u32], &[u32]); 5] = [
        (
            &[2, 138, 13498, 5830, 255969, 39218, 251, 109, 140, 724, 16764, 3393, 107],
            &[2, 138, 13498, 5830, 255969, 39218, 251, 109, 140, 724, 16764, 3393, 107],
        ),
        (
            &[
                2, 1789, 238527, 560, 33443, 2192, 86459, 236743, 242015, 1123, 238288, 47041, 238131, 242044, 236743,
                432, 398, 465, 366, 366,
            ],
            &[
                2, 1789, 238527, 560, 33443, 2192, 86459, 236743, 242015, 1123, 238288, 47041, 238131, 242044, 236743,
                432, 398, 465, 366, 366,
            ],
        ),
        (
            &[
                2, 236777, 236789, 236757, 611, 236789, 500, 52402, 236789, 236774, 692, 236789, 11818, 236743, 236770,
                236778, 236800, 236812, 236810, 236825, 236832, 236828, 236819, 236771, 236770, 236778, 236800, 236812,
                236810, 236825, 236832, 236828, 236819, 236771, 236743, 236800, 236761, 236770, 236812,
            ],
            &[
                2, 236777, 236789, 236757, 611, 236789, 500, 52402, 236789, 236774, 692, 236789, 11818, 236743, 236770,
                236778, 236800, 236812, 236810, 236825, 236832, 236828, 236819, 236771, 236770, 236778, 236800, 236812,
                236810, 236825, 236832, 236828, 236819, 236771, 236743, 236800, 236761, 236770, 236812,
            ],
        ),
        (
            &[
                2, 105, 2364, 107, 2202, 106, 107, 236820, 236909, 548, 236779, 3041, 111038, 111457, 236820, 236909,
                548, 236779, 643, 236909, 1798, 236909, 643, 1340, 1005, 236909, 1798, 13205, 236779, 6639, 236813,
            ],
            &[
                2, 236820, 3041, 236779, 1340, 236779, 887, 236813, 2364, 107, 2202, 236820, 643, 236779, 1340, 236779,
                887, 236813, 107, 236820, 236909, 548, 236779, 3041, 111038, 111457, 236820, 236909, 548, 236779, 643,
                236909, 1798, 236909, 643, 1340, 1005, 236909, 1798, 13205, 236779, 6639, 236813,
            ],
        ),
        (
            &[
                2, 2063, 517, 236769, 236781, 1473, 107, 140, 2060, 3714, 236767, 1083, 870, 236781, 1018, 236778,
                236764, 756, 236762, 115660, 138, 236865, 236743, 184,
            ],
            &[
                2, 2063, 517, 236769, 236781, 1473, 107, 140, 2060, 3714, 236767, 1083, 870, 236781, 1018, 236778,
                236764, 756, 236762, 115660, 138, 236865, 236743, 184,
            ],
        ),
    ];
    const SMOLLM_TRICKY_IDS: [(&[u32], &[u32]); 5] = [
        (
            &[216, 827, 2899, 197, 197, 100, 7366, 2738, 1004, 641, 6574, 2909, 198],
            &[216, 827, 2899, 197, 197, 100, 7366, 2738, 1004, 641, 6574, 2909, 198],
        ),
        (
            &[
                3546, 46494, 37366, 1841, 17097, 247, 126, 16736, 122, 15107, 244, 218, 1792, 151, 219, 216, 16738,
                19133, 164, 113, 3351, 250, 12109, 218,
            ],
            &[
                3546, 46494, 37366, 1841, 17097, 247, 126, 16736, 122, 15107, 244, 218, 1792, 151, 219, 216, 16738,
                19133, 164, 113, 3351, 250, 12109, 218,
            ],
        ),
        (
            &[
                57, 5248, 346, 2316, 422, 2154, 23, 68, 392, 23, 18525, 216, 33, 34, 35, 36, 37, 38, 39, 40, 41, 32,
                33, 34, 35, 36, 37, 38, 39, 40, 41, 32, 216, 35, 30, 33, 36,
            ],
            &[
                57, 5248, 346, 2316, 422, 2154, 23, 68, 392, 23, 18525, 216, 33, 34, 35, 36, 37, 38, 39, 40, 41, 32,
                33, 34, 35, 36, 37, 38, 39, 40, 41, 32, 216, 35, 30, 33, 36,
            ],
        ),
        (
            &[
                44, 3738, 79, 1714, 79, 20589, 46, 4093, 198, 6004, 44, 486, 79, 1714, 79, 20589, 46, 198, 1, 520,
                9531, 2, 0, 44, 19324, 79, 4350, 46,
            ],
            &[
                44, 3738, 79, 1714, 79, 20589, 46, 4093, 198, 6004, 44, 486, 79, 1714, 79, 20589, 46, 198, 44, 108,
                306, 79, 3738, 108, 46, 520, 9531, 44, 108, 306, 79, 486, 108, 21198, 108, 486, 1714, 2692, 108, 21198,
                19324, 79, 4350, 46,
            ],
        ),
        (
            &[
                1604, 275, 24, 104, 727, 472, 1003, 9583, 91, 1799, 933, 104, 828, 34, 28, 637, 105, 43144, 216, 907,
                2067, 88, 33, 46,
            ],
            &[
                1604, 275, 24, 104, 727, 472, 1003, 9583, 91, 1799, 933, 104, 828, 34, 28, 637, 105, 43144, 216, 907,
                2067, 88, 33, 46,
            ],
        ),
    ];
    const QWEN_05B_TRICKY_IDS: [(&[u32], &[u32]); 5] = [
        (
            &[220, 1378, 6388, 197, 3244, 3435, 201, 1406, 262, 1257, 15864, 2038, 198],
            &[220, 1378, 6388, 197, 3244, 3435, 201, 1406, 262, 1257, 15864, 2038, 198],
        ),
        (
            &[
                3376, 37572, 586, 51950, 1959, 60596, 109, 46553, 11162, 248, 222, 856, 53839, 220, 26062, 29456, 149,
                96, 17091, 22441,
            ],
            &[
                3376, 37572, 586, 51950, 1959, 60596, 109, 46553, 11162, 248, 222, 856, 53839, 220, 26062, 29456, 149,
                96, 17091, 22441,
            ],
        ),
        (
            &[
                40, 2776, 498, 2299, 44273, 17323, 582, 6, 4491, 220, 16, 17, 18, 19, 20, 21, 22, 23, 24, 15, 16, 17,
                18, 19, 20, 21, 22, 23, 24, 15, 220, 18, 13, 16, 19,
            ],
            &[
                40, 2776, 498, 2299, 44273, 17323, 582, 6, 4491, 220, 16, 17, 18, 19, 20, 21, 22, 23, 24, 15, 16, 17,
                18, 19, 20, 21, 22, 23, 24, 15, 220, 18, 13, 16, 19,
            ],
        ),
        (
            &[
                27, 2468, 3575, 37274, 29, 872, 198, 6023, 27, 408, 3575, 37274, 397, 151644, 77091, 151645, 151643,
                151657,
            ],
            &[
                27, 2468, 3575, 37274, 29, 872, 198, 6023, 27, 408, 3575, 37274, 397, 27, 91, 318, 4906, 91, 29, 77091,
                27, 91, 318, 6213, 91, 1784, 91, 8691, 723, 427, 91, 29, 151657,
            ],
        ),
        (
            &[
                750, 282, 2075, 982, 262, 470, 5212, 74, 788, 508, 87, 334, 17, 11, 364, 88, 32741, 220, 671, 366, 71,
                16, 29,
            ],
            &[
                750, 282, 2075, 982, 262, 470, 5212, 74, 788, 508, 87, 334, 17, 11, 364, 88, 32741, 220, 671, 366, 71,
                16, 29,
            ],
        ),
    ];

    fn check_tricky(tok: &TextTokenizer, expected: &[(&[u32], &[u32]); 5], label: &str) {
        for (text, (special, literal)) in TRICKY_TEXTS.iter().zip(expected) {
            assert_eq!(tok.encode(text, true).expect("encode"), *special, "{label}: {text:?}");
            assert_eq!(tok.encode_literal(text, true).expect("encode"), *literal, "{label}: literal {text:?}");
            let bos = if tok.add_bos() {
                tok.bos_id().and_then(|b| tok.token_text(b)).unwrap_or_default()
            } else {
                String::new()
            };
            assert_eq!(tok.decode(special, false).expect("decode"), format!("{bos}{text}"), "{label}: {text:?}");
        }
    }

    #[test]
    fn tricky_texts_match_llama_cpp() {
        check_tricky(required(GEMMA), &GEMMA_TRICKY_IDS, "gemma3-270m");
        check_tricky(required(SMOLLM), &SMOLLM_TRICKY_IDS, "smollm2-135m");
        if let Some(qwen) = optional(QWEN_05B).or_else(|| optional(QWEN_15B)) {
            check_tricky(qwen, &QWEN_05B_TRICKY_IDS, "qwen2.5-coder");
        }
    }

    #[test]
    fn gguf_metadata_sets_bos_and_stop_tokens() {
        let gemma = required(GEMMA);
        assert_eq!(gemma.bos_id(), Some(2));
        assert_eq!(gemma.eos_id(), Some(1));
        assert!(gemma.add_bos());
        assert_eq!(gemma.stop_ids(), &[1, 106], "<eos> and <end_of_turn>");
        assert_eq!(gemma.vocab_size(), 262_144);

        let smollm = required(SMOLLM);
        assert!(!smollm.add_bos(), "SmolLM2's GGUF sets add_bos_token = false");
        assert_eq!(smollm.encode("Hi", true).expect("encode"), smollm.encode("Hi", false).expect("encode"));
        for text in ["<|im_end|>", "<|endoftext|>"] {
            let id = smollm.token_id(text).expect("token exists");
            assert!(smollm.stop_ids().contains(&id), "{text} stops generation");
        }
        if let Some(qwen) = optional(QWEN_05B).or_else(|| optional(QWEN_15B)) {
            assert!(!qwen.add_bos());
            assert!(qwen.stop_ids().contains(&151_645) && qwen.stop_ids().contains(&151_643));
        }
    }

    #[test]
    fn special_tokens_in_text_become_single_ids() {
        let gemma = required(GEMMA);
        let ids = gemma.encode("<start_of_turn>user\nHi<end_of_turn>\n", false).expect("encode");
        assert_eq!(ids.first(), Some(&105));
        assert_eq!(ids.iter().filter(|&&id| id == 106).count(), 1);
        assert_eq!(gemma.decode(&ids, false).expect("decode"), "<start_of_turn>user\nHi<end_of_turn>\n");
        assert_eq!(gemma.decode(&ids, true).expect("decode"), "user\nHi\n");
        // Literal encoding keeps control tokens as text.
        let literal = gemma.encode_literal("<end_of_turn>", false).expect("encode");
        assert!(literal.len() > 1 && !literal.contains(&106));
        assert_eq!(gemma.decode(&literal, true).expect("decode"), "<end_of_turn>");

        let smollm = required(SMOLLM);
        let ids = smollm.encode("<|im_start|>user\nHi<|im_end|>", false).expect("encode");
        assert_eq!(ids.first(), Some(&1));
        assert_eq!(ids.last(), Some(&2));
    }

    #[test]
    fn gemma_whitespace_runs_use_user_defined_tokens() {
        let gemma = required(GEMMA);
        // 40 spaces: the longest whitespace token (31) first, then 9.
        let text = format!("a{}b", " ".repeat(40));
        let ids = gemma.encode(&text, false).expect("encode");
        assert!(ids.contains(&gemma.token_id(&" ".repeat(31)).expect("31 spaces")));
        assert!(ids.contains(&gemma.token_id(&" ".repeat(9)).expect("9 spaces")));
        assert_eq!(gemma.decode(&ids, true).expect("decode"), text);
    }

    fn all_available() -> Vec<(&'static str, &'static TextTokenizer)> {
        let mut v = vec![(GEMMA, required(GEMMA)), (SMOLLM, required(SMOLLM))];
        if let Some(q) = optional(QWEN_05B).or_else(|| optional(QWEN_15B)) {
            v.push(("qwen2.5-coder", q));
        }
        v
    }

    #[test]
    fn stream_decoder_matches_decode_for_multibyte_text() {
        let text = "naïve café — 東京 🚀 Ünïcödé ｆｕｌｌ width, ḿ̈ combining, 𝔘𝔫𝔦 and \u{1F9D1}\u{200D}\u{1F680}!";
        for (label, tok) in all_available() {
            let ids = tok.encode(text, true).expect("encode");
            for skip in [true, false] {
                let mut stream = tok.stream_decoder_with(skip);
                let mut streamed = String::new();
                for &id in &ids {
                    let chunk = stream.push(id).expect("push");
                    assert!(!chunk.contains('\u{FFFD}'), "{label}: partial character emitted: {chunk:?}");
                    streamed.push_str(&chunk);
                }
                streamed.push_str(&stream.finish().expect("finish"));
                assert_eq!(streamed, tok.decode(&ids, skip).expect("decode"), "{label} skip={skip}");
            }
            assert_eq!(tok.decode(&ids, true).expect("decode"), text, "{label}: round trip");
        }
    }

    #[test]
    fn stream_decoder_holds_back_byte_fallback_pieces() {
        let gemma = required(GEMMA);
        // U+2603 SNOWMAN as three byte-fallback tokens.
        let bytes: Vec<u32> = [0xE2u8, 0x98, 0x83].iter().map(|b| 238 + u32::from(*b)).collect();
        let mut stream = gemma.stream_decoder();
        assert_eq!(stream.push(bytes[0]).expect("push"), "");
        assert_eq!(stream.push(bytes[1]).expect("push"), "");
        assert_eq!(stream.push(bytes[2]).expect("push"), "☃");
        // A dangling lead byte is flushed as U+FFFD at the end.
        assert_eq!(stream.push(bytes[0]).expect("push"), "");
        assert_eq!(stream.finish().expect("finish"), "\u{FFFD}");
    }

    #[test]
    fn token_text_shows_single_tokens() {
        let gemma = required(GEMMA);
        assert_eq!(gemma.token_text(106).as_deref(), Some("<end_of_turn>"));
        assert_eq!(gemma.token_text(5279).as_deref(), Some(" capital"));
        assert_eq!(gemma.token_text(u32::MAX), None);
        let smollm = required(SMOLLM);
        assert_eq!(smollm.token_text(3575).as_deref(), Some(" capital"));
        assert!(matches!(
            smollm.decode(&[u32::MAX], true),
            Err(TokenizerError::UnknownTokenId { id: u32::MAX, vocab_size: 49_152 })
        ));
    }

    #[test]
    fn sentencepiece_prefix_space_is_dropped_only_after_bos() {
        // Gemma 3 turns add_space_prefix off; Llama 2 style vocabularies turn it on.
        let mut content = required_content(GEMMA);
        content.metadata.insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(true));
        let tok = TextTokenizer::from_gguf(&content).expect("tokenizer");
        let ids = tok.encode("Hello world", true).expect("encode");
        assert_eq!(ids[1], tok.token_id("▁Hello").expect("piece"), "prompt starts with ▁Hello");
        assert_eq!(tok.decode(&ids, true).expect("decode"), "Hello world");
        // Generated text (no BOS) keeps its leading space, in decode and in streaming alike.
        assert_eq!(tok.decode(&ids[1..], true).expect("decode"), " Hello world");
        for sequence in [&ids[..], &ids[1..]] {
            let mut stream = tok.stream_decoder();
            let mut streamed = String::new();
            for &id in sequence {
                streamed.push_str(&stream.push(id).expect("push"));
            }
            streamed.push_str(&stream.finish().expect("finish"));
            assert_eq!(streamed, tok.decode(sequence, true).expect("decode"));
        }
        // After a special token the next text gets a prefix space too, as in llama.cpp.
        let turn = tok.encode("<start_of_turn>user", false).expect("encode");
        assert_eq!(turn, vec![105, tok.token_id("▁user").expect("piece")]);
    }

    #[test]
    fn empty_text_encodes_to_bos_only() {
        assert_eq!(required(GEMMA).encode("", true).expect("encode"), vec![2]);
        assert!(required(GEMMA).encode("", false).expect("encode").is_empty());
        assert!(required(SMOLLM).encode("", true).expect("encode").is_empty());
    }

    #[test]
    fn long_inputs_encode_in_milliseconds() {
        let paragraph = "Kubernetes schedules containers onto nodes; the operator reconciles \
            custom resources into Deployments, Services and autoscalers. Café naïve 東京 🚀 \
            1234567890, (x + y) * z == 42!\n\n";
        let prose = paragraph.repeat(110);
        let no_spaces: String = "abcdefghijklmnopqrstuvwxyz0123456789".chars().cycle().take(16_000).collect();
        let one_char = "a".repeat(16_000);
        for (label, tok) in all_available() {
            for (kind, text) in [("prose", &prose), ("no spaces", &no_spaces), ("one char", &one_char)] {
                let started = Instant::now();
                let ids = tok.encode(text, true).expect("encode");
                let elapsed = started.elapsed();
                eprintln!("{label}: {kind}: {} bytes -> {} tokens in {:?}", text.len(), ids.len(), elapsed);
                assert!(elapsed.as_secs_f64() < 2.0, "{label}: {kind} took {elapsed:?}");
                assert_eq!(&tok.decode(&ids, true).expect("decode"), text);
            }
        }
    }

    #[test]
    fn missing_metadata_is_reported_by_key() {
        let mut content = required_content(SMOLLM);
        content.metadata.remove("tokenizer.ggml.merges");
        let err = TextTokenizer::from_gguf(&content).expect_err("merges are required");
        assert!(err.to_string().contains("tokenizer.ggml.merges"), "{err}");
        content.metadata.insert("tokenizer.ggml.model".into(), Value::String("t5".into()));
        let err = TextTokenizer::from_gguf(&content).expect_err("t5 unsupported");
        assert!(matches!(err, TokenizerError::UnsupportedModel(ref m) if m == "t5"), "{err}");
    }

    #[test]
    fn tokenizer_json_round_trips() {
        let path = model_path("all-minilm-l6-v2/tokenizer.json");
        assert!(path.exists(), "{} is missing: run `scripts/fetch-models.py` to fetch the test models", path.display());
        let tok = TextTokenizer::from_tokenizer_json(&path).expect("load tokenizer.json");
        let ids = tok.encode("Hello, naïve world!", true).expect("encode");
        assert_eq!(ids.first().copied(), tok.token_id("[CLS]"));
        assert_eq!(ids.last().copied(), tok.token_id("[SEP]"), "no padding: {ids:?}");
        assert_eq!(tok.decode(&ids, true).expect("decode"), "hello, naive world!");
        let mut stream = tok.stream_decoder();
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&stream.push(id).expect("push"));
        }
        streamed.push_str(&stream.finish().expect("finish"));
        assert_eq!(streamed, "hello, naive world!");
    }

    #[test]
    fn tokenizer_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<TextTokenizer>();
    }
}
