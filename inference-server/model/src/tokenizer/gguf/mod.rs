//! The tokenizer a GGUF file embeds (`tokenizer.ggml.*`), as llama.cpp reads and runs it:
//! token attributes and llama.cpp's per-type defaults, encoding through the special-token
//! partition into SentencePiece or byte-level BPE, and decoding pieces back to bytes.

mod bpe;
mod metadata;
mod sentencepiece;
mod special;

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};

pub(crate) use bpe::BpeModel;
use bpe::bpe_pre_adds_bos;
use metadata::*;
use special::{Fragment, SpecialMatcher};

use super::{Result, TokenizerError};

/// Token attributes, as llama.cpp derives them from `tokenizer.ggml.token_type`.
pub(crate) mod attr {
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
pub(crate) const END_OF_GENERATION_TEXTS: &[&str] = &[
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
pub(crate) const FIM_END_TEXTS: &[&str] = &[
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
pub(crate) enum SequenceStart {
    /// No token seen yet.
    Fresh,
    /// The sequence began with BOS; the next text token may carry the prefix space.
    AfterBos,
    /// Past the first text token.
    Done,
}

pub(crate) enum Algorithm {
    Spm,
    Bpe(Box<BpeModel>),
}

pub(crate) struct GgufVocab {
    pub(crate) algorithm: Algorithm,
    pub(crate) tokens: Vec<String>,
    pub(crate) scores: Vec<f32>,
    pub(crate) attrs: Vec<u8>,
    pub(crate) token_to_id: HashMap<String, u32>,
    /// Each token's decoded bytes (special tokens render as their text).
    pub(crate) pieces: Vec<Vec<u8>>,
    pub(crate) specials: SpecialMatcher,
    /// SentencePiece byte-fallback token per byte.
    pub(crate) byte_tokens: Vec<Option<u32>>,
    pub(crate) bos: Option<u32>,
    pub(crate) eos: Option<u32>,
    pub(crate) unk: Option<u32>,
    pub(crate) add_bos: bool,
    pub(crate) add_eos: bool,
    pub(crate) add_space_prefix: bool,
    pub(crate) stop_ids: Vec<u32>,
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
pub(crate) struct TypeDefaults {
    pub(crate) is_spm: bool,
    pub(crate) bos: Option<u32>,
    pub(crate) eos: Option<u32>,
    pub(crate) unk: Option<u32>,
    pub(crate) add_bos: bool,
    pub(crate) add_space_prefix: bool,
}

impl TypeDefaults {
    /// For tokenizer types without an encoder here: only what metadata states.
    const OTHER: Self =
        Self { is_spm: false, bos: None, eos: None, unk: None, add_bos: false, add_space_prefix: false };

    pub(crate) fn for_model(model: &str, pre: &str) -> Result<Self> {
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
    pub(crate) fn load(content: &Content) -> Result<Self> {
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

    pub(crate) fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
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

    /// Appends the decoded bytes of one token. `start` tracks the space SentencePiece puts before
    /// a prompt (`add_space_prefix`): in a sequence that begins with BOS (an encoded prompt) the
    /// first text token loses it; a sequence without BOS (generated text) keeps every space.
    pub(crate) fn append_piece(
        &self,
        id: u32,
        skip_special: bool,
        start: &mut SequenceStart,
        out: &mut Vec<u8>,
    ) -> Result<()> {
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

/// A token's decoded bytes, as llama.cpp's `token_to_piece` with `special = true`.
pub(crate) fn render_piece(text: &str, a: u8, algorithm: &Algorithm) -> Vec<u8> {
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
pub(crate) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}
