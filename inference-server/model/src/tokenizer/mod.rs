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

mod gguf;
mod json;
mod stream;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;

use gguf::{Algorithm, GgufVocab, SequenceStart};
pub use gguf::{GgufSpecialTokens, gguf_special_tokens};
use json::JsonTokenizer;
pub use stream::StreamDecoder;

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

    /// Every token's bytes as a grammar engine (llguidance's token trie) reads them, index =
    /// id: a text token's decoded bytes; a control, unknown or unused token as `0xFF` followed by
    /// its text, so that no grammar can produce it by spelling it out. `None` for a
    /// `tokenizer.json` tokenizer (chat models are GGUF; constrained decoding needs their bytes).
    pub fn grammar_token_bytes(&self) -> Option<Vec<Vec<u8>>> {
        let Backend::Gguf(v) = &self.backend else {
            return None;
        };
        let special = gguf::attr::CONTROL | gguf::attr::UNKNOWN | gguf::attr::UNUSED;
        let bytes = v
            .pieces
            .iter()
            .zip(&v.attrs)
            .zip(&v.tokens)
            .map(|((piece, &attrs), text)| {
                if attrs & special != 0 {
                    let mut marked = Vec::with_capacity(text.len() + 1);
                    marked.push(0xFF);
                    marked.extend_from_slice(text.as_bytes());
                    marked
                } else {
                    piece.clone()
                }
            })
            .collect();
        Some(bytes)
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
        StreamDecoder::new(&self.backend, skip_special)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use candle_core::quantized::gguf_file::Value;
    use std::sync::OnceLock;
    use std::time::Instant;

    const GEMMA: &str = "gemma3-270m-q4_k_m.gguf";
    const SMOLLM: &str = "smollm2-135m-instruct-q4_1.gguf";
    const QWEN_15B: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";
    const QWEN_05B: &str = "qwen2.5-coder-0.5b-instruct.gguf";

    fn model_path(file: &str) -> PathBuf {
        hearth_testkit::models::path(file)
    }

    /// The metadata of a model in the CI "small" set; missing means the cache was not populated.
    fn required_content(file: &str) -> Content {
        hearth_testkit::models::gguf(&hearth_testkit::models::required(file))
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
        hearth_testkit::models::optional(file).map(|_| required(file))
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
            include_str!("../../../../tests/fixtures/reference/gemma3-270m-q4_k_m.greedy.json"),
            "gemma3-270m",
        );
    }

    #[test]
    fn smollm_prompts_match_llama_cpp() {
        check_reference(
            required(SMOLLM),
            include_str!("../../../../tests/fixtures/reference/smollm2-135m-instruct-q4_1.greedy.json"),
            "smollm2-135m",
        );
    }

    #[test]
    fn qwen_prompts_match_llama_cpp() {
        let reference =
            include_str!("../../../../tests/fixtures/reference/qwen2.5-coder-1.5b-instruct-q4_k_m.greedy.json");
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
