//! Token counts from a Hugging Face tokenizer, with an exact fast path for BERT-style WordPiece
//! tokenizers (all-MiniLM-L6-v2 and friends).
//!
//! The splitter counts every paragraph and every chunk, so counting speed bounds ingestion speed.
//! `tokenizers` builds a full `Encoding` (alignments, offsets, token strings) per call, which runs
//! at about 1-3 MB/s. For a BERT pipeline (BertNormalizer, BertPreTokenizer, WordPiece) the count
//! can be reproduced without any of that: the normalizer works character by character, the
//! pre-tokenizer splits on whitespace and isolates punctuation, and WordPiece matches the longest
//! vocabulary entry greedily. Character behaviour is taken from the tokenizer itself (its
//! normalizer and pre-tokenizer, asked once per distinct character and remembered), so the
//! configuration (lowercasing, accents, Chinese characters) is honoured as loaded. Text holding an
//! added token (such as a literal `[SEP]`) goes through `tokenizers` in full.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{PoisonError, RwLock};

use tokenizers::{
    ModelWrapper, NormalizedString, Normalizer, NormalizerWrapper, OffsetReferential, OffsetType, PreTokenizedString,
    PreTokenizer, PreTokenizerWrapper, Tokenizer,
};

use super::splitter::TokenCounter;

/// Counts tokens with a Hugging Face tokenizer, as the embedding model will see the text.
///
/// Truncation and padding are switched off on construction: `tokenizer.json` files exported by
/// sentence-transformers carry both (often at 128 tokens), and either would distort the count.
pub struct TokenizerCounter {
    tokenizer: Tokenizer,
    fast: Option<FastWordPiece>,
}

impl std::fmt::Debug for TokenizerCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenizerCounter").field("fast_path", &self.fast.is_some()).finish_non_exhaustive()
    }
}

impl TokenizerCounter {
    /// Wraps `tokenizer`, switching off its truncation and padding.
    pub fn new(mut tokenizer: Tokenizer) -> Result<Self, tokenizers::Error> {
        tokenizer.with_truncation(None)?;
        tokenizer.with_padding(None);
        let fast = FastWordPiece::new(&tokenizer);
        Ok(Self { tokenizer, fast })
    }

    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: &Path) -> Result<Self, tokenizers::Error> {
        Self::new(Tokenizer::from_file(path)?)
    }

    /// Whether counts take the fast WordPiece path (otherwise every count runs `tokenizers`).
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// The count as `tokenizers` itself gives it, bypassing the fast path.
    pub fn count_slow(&self, text: &str) -> usize {
        match self.tokenizer.encode_fast(text, false) {
            Ok(encoding) => encoding.len(),
            // The trait cannot fail; one token per byte over-counts every tokenizer we ship, so
            // a chunk stays within the model's limit.
            Err(_) => text.len(),
        }
    }
}

impl TokenCounter for TokenizerCounter {
    fn count(&self, text: &str) -> usize {
        self.fast.as_ref().and_then(|fast| fast.count(&self.tokenizer, text)).unwrap_or_else(|| self.count_slow(text))
    }
}

/// How the pre-tokenizer treats a character of normalized text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Separates words and is dropped.
    Space,
    /// A word on its own.
    Punctuation,
    /// Part of a word.
    Letter,
}

/// What one input character becomes: its normalized characters (none, one or several) and how
/// each is treated.
type Form = Box<[(char, Kind)]>;

/// The parts of a BERT WordPiece tokenizer needed to count tokens.
struct FastWordPiece {
    vocab: HashMap<String, u32>,
    continuing_prefix: String,
    max_word_chars: usize,
    /// Contents of added tokens; text holding one is counted by `tokenizers`.
    added: Vec<String>,
    ascii: Vec<Form>,
    /// Forms of non-ASCII characters met so far.
    other: RwLock<HashMap<char, Form>>,
}

impl FastWordPiece {
    /// The fast path when `tokenizer` is a BERT WordPiece pipeline it reproduces exactly.
    fn new(tokenizer: &Tokenizer) -> Option<Self> {
        let ModelWrapper::WordPiece(model) = tokenizer.get_model() else { return None };
        if !matches!(tokenizer.get_normalizer(), Some(NormalizerWrapper::BertNormalizer(_)))
            || !matches!(tokenizer.get_pre_tokenizer(), Some(PreTokenizerWrapper::BertPreTokenizer(_)))
        {
            return None;
        }
        let added_tokens = tokenizer.get_added_tokens_decoder();
        // Added tokens matched after normalization would need the normalized text searched too.
        if added_tokens.values().any(|token| token.normalized || token.content.is_empty()) {
            return None;
        }
        let vocab = tokenizer.get_vocab(false);
        if !vocab.contains_key(&model.unk_token) {
            return None;
        }
        let ascii = (0..128u8).map(|b| form_of(tokenizer, char::from(b))).collect::<Option<Vec<_>>>()?;
        Some(Self {
            vocab,
            continuing_prefix: model.continuing_subword_prefix.clone(),
            max_word_chars: model.max_input_chars_per_word,
            added: added_tokens.into_values().map(|token| token.content).collect(),
            ascii,
            other: RwLock::new(HashMap::new()),
        })
    }

    /// Token count of `text`, or `None` when it must go through `tokenizers`.
    fn count(&self, tokenizer: &Tokenizer, text: &str) -> Option<usize> {
        if self.added.iter().any(|content| text.contains(content.as_str())) {
            return None;
        }
        let mut total = 0;
        let mut word = String::new();
        let mut buffer = String::new();
        let mut step = |c: char, kind: Kind, word: &mut String| match kind {
            Kind::Letter => word.push(c),
            Kind::Space => total += self.flush(word, &mut buffer),
            Kind::Punctuation => {
                total += self.flush(word, &mut buffer);
                word.push(c);
                total += self.flush(word, &mut buffer);
            }
        };
        for c in text.chars() {
            if let Some(form) = self.ascii.get(c as usize) {
                for &(c, kind) in form.iter() {
                    step(c, kind, &mut word);
                }
                continue;
            }
            let known = self.other.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(form) = known.get(&c) {
                for &(c, kind) in form.iter() {
                    step(c, kind, &mut word);
                }
                continue;
            }
            drop(known);
            let form = form_of(tokenizer, c)?;
            for &(c, kind) in form.iter() {
                step(c, kind, &mut word);
            }
            self.other.write().unwrap_or_else(PoisonError::into_inner).insert(c, form);
        }
        total += self.flush(&mut word, &mut buffer);
        Some(total)
    }

    /// Tokens of the word collected so far (emptying it), as WordPiece counts them: greedy
    /// longest match, and one unknown token for a word too long or with no match.
    fn flush(&self, word: &mut String, buffer: &mut String) -> usize {
        if word.is_empty() {
            return 0;
        }
        let tokens = self.word_tokens(word, buffer);
        word.clear();
        tokens
    }

    fn word_tokens(&self, word: &str, buffer: &mut String) -> usize {
        if word.chars().count() > self.max_word_chars {
            return 1;
        }
        let mut tokens = 0;
        let mut start = 0;
        while start < word.len() {
            let mut end = word.len();
            let found = loop {
                if start >= end {
                    break false;
                }
                let piece = if start > 0 {
                    buffer.clear();
                    buffer.push_str(&self.continuing_prefix);
                    buffer.push_str(&word[start..end]);
                    buffer.as_str()
                } else {
                    &word[start..end]
                };
                if self.vocab.contains_key(piece) {
                    break true;
                }
                end -= word[start..end].chars().next_back().map_or(1, char::len_utf8);
            };
            if !found {
                return 1;
            }
            tokens += 1;
            start = end;
        }
        tokens
    }
}

/// What `c` becomes under the tokenizer's normalizer, and how its pre-tokenizer treats each
/// resulting character; `None` if either fails.
fn form_of(tokenizer: &Tokenizer, c: char) -> Option<Form> {
    let normalizer = tokenizer.get_normalizer()?;
    let pre_tokenizer = tokenizer.get_pre_tokenizer()?;
    let mut normalized = NormalizedString::from(c.to_string());
    normalizer.normalize(&mut normalized).ok()?;
    normalized
        .get()
        .chars()
        .map(|n| {
            if n.is_whitespace() {
                return Some((n, Kind::Space));
            }
            // Punctuation is isolated: "a" followed by it pre-tokenizes into two pieces.
            let mut probe = PreTokenizedString::from(format!("a{n}"));
            pre_tokenizer.pre_tokenize(&mut probe).ok()?;
            let pieces = probe.get_splits(OffsetReferential::Normalized, OffsetType::Byte).len();
            Some((n, if pieces == 2 { Kind::Punctuation } else { Kind::Letter }))
        })
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::sync::OnceLock;

    /// The MiniLM tokenizer the KnowledgeBase embeds with; tests fail (never skip) without it.
    pub(crate) fn minilm() -> &'static TokenizerCounter {
        static COUNTER: OnceLock<TokenizerCounter> = OnceLock::new();
        COUNTER.get_or_init(|| {
            let path = hearth_testkit::models::required("all-minilm-l6-v2/tokenizer.json");
            TokenizerCounter::from_file(&path).expect("MiniLM tokenizer.json loads")
        })
    }

    #[test]
    fn minilm_takes_the_fast_path() {
        assert!(minilm().is_fast());
    }

    #[test]
    fn counts_ignore_the_files_truncation_and_padding() {
        let long = "word ".repeat(300);
        assert_eq!(minilm().count(&long), 300);
        assert_eq!(minilm().count_slow(&long), 300);
        assert_eq!(minilm().count("hello"), 1);
        assert_eq!(minilm().count(""), 0);
    }

    fn assert_same(text: &str) {
        let counter = minilm();
        assert_eq!(counter.count(text), counter.count_slow(text), "fast and tokenizers counts differ for {text:?}");
    }

    #[test]
    fn the_fast_path_matches_tokenizers_on_tricky_text() {
        for text in [
            "Hello, World! It's 3.14 (approx.) — isn't it?",
            "naïve façade Über ÉCOLE e\u{301}cole İstanbul ß ǅ",
            "日本語のテキスト、中文字符。한국어 텍스트",
            "emoji 🎉👩‍👩‍👧 flags 🇫🇷 zero\u{200b}width\u{200d}joiner",
            "control\u{0}chars\u{7}and\u{fffd}replacement\u{1b}[0m",
            "tabs\tand\r\nnewlines\u{a0}nbsp\u{2003}em\u{3000}ideographic",
            "literal [SEP] and [CLS] tokens [MASK]",
            "unaffable unbelievably antidisestablishmentarianism",
            &"x".repeat(100),
            &"x".repeat(101),
            &"ab".repeat(60),
            "qxzqxzqxz ǂǂǂ ꙮꙮ 𓀀𓀁 \u{10ffff}",
            "",
            "   ",
        ] {
            assert_same(text);
        }
    }

    #[test]
    fn the_fast_path_matches_tokenizers_on_random_text() {
        let mut rng = StdRng::seed_from_u64(3);
        let ranges: &[(u32, u32)] = &[
            (0x20, 0x7e),
            (0x00, 0x20),
            (0xa0, 0x24f),
            (0x300, 0x36f),
            (0x370, 0x52f),
            (0x590, 0x6ff),
            (0x900, 0x97f),
            (0x2000, 0x206f),
            (0x3000, 0x30ff),
            (0x4e00, 0x4e80),
            (0xac00, 0xac80),
            (0xff00, 0xffef),
            (0x1f300, 0x1f6ff),
            (0x20000, 0x20080),
        ];
        for _ in 0..2000 {
            let len = rng.random_range(0..80);
            let text: String = (0..len)
                .filter_map(|_| {
                    let (low, high) = ranges[rng.random_range(0..ranges.len())];
                    if rng.random_bool(0.3) {
                        return Some(' ');
                    }
                    char::from_u32(rng.random_range(low..=high))
                })
                .collect();
            assert_same(&text);
        }
    }
}
