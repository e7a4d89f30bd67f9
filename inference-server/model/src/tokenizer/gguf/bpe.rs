//! Byte-level BPE as llama.cpp runs it: the pre-tokenizer regexes `tokenizer.ggml.pre`
//! selects, the GPT-2 byte-to-unicode table, and merges by rank.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::utils::SysRegex;

use super::*;

impl GgufVocab {
    /// llama.cpp's BPE session for one pre-tokenized word: start from bytes (as GPT-2 unicode
    /// characters), repeatedly merge the adjacent pair with the lowest merge rank (ties: leftmost).
    pub(crate) fn bpe_word(&self, bpe: &BpeModel, word: &[u8], out: &mut Vec<u32>) {
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
}

/// BPE merge candidates: (rank, left, right, left sid, right sid), lowest rank then leftmost first.
pub(crate) type BpeQueue = BinaryHeap<Reverse<(u32, usize, usize, u32, u32)>>;

pub(crate) struct BpeModel {
    pub(crate) pretokenizer: Vec<SysRegex>,
    pub(crate) ignore_merges: bool,
    /// (left sid, right sid) -> (rank, merged sid). A sid is a token id for vocabulary strings,
    /// or `vocab_len + i` for the i-th string that only appears in merges.
    pub(crate) merges: HashMap<(u32, u32), (u32, u32)>,
    pub(crate) extra_strings: Vec<String>,
    pub(crate) vocab_len: u32,
    /// Sid of each byte's GPT-2 character.
    pub(crate) byte_sids: [u32; 256],
    pub(crate) byte_encoder: [char; 256],
    pub(crate) byte_decoder: HashMap<char, u8>,
}

impl BpeModel {
    pub(crate) fn load(
        content: &Content,
        pre: &str,
        token_to_id: &HashMap<String, u32>,
        vocab_len: usize,
    ) -> Result<Self> {
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

    pub(crate) fn sid_text(&self, sid: u32) -> &str {
        sid.checked_sub(self.vocab_len)
            .and_then(|i| self.extra_strings.get(i as usize))
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// Splits text into words with each regex in turn; text between matches is kept as words
    /// too (llama.cpp's `unicode_regex_split`). Returns byte ranges.
    pub(crate) fn pretokenize(&self, text: &str) -> Vec<(usize, usize)> {
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
pub(crate) fn gpt2_byte_encoder() -> [char; 256] {
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

pub(crate) const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
pub(crate) const LLAMA3_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(crate) const QWEN2_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Whether llama.cpp adds BOS by default for a BPE pre-tokenizer type.
pub(crate) fn bpe_pre_adds_bos(pre: &str) -> bool {
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
pub(crate) fn bpe_pre_patterns(pre: &str) -> (Vec<&'static str>, bool) {
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
