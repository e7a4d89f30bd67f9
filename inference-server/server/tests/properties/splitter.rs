//! The knowledge-base splitter on arbitrary text: never panics; chunks come in order, cover every
//! non-whitespace byte, respect the size limit, overlap by at most the configured tokens (and
//! overlap whenever the previous chunk's last word would have fitted), and their byte offsets are
//! character boundaries that point at exactly the chunk's text.
//!
//! Counted by whitespace words, characters, bytes (a character can outweigh a small limit) and
//! the real all-MiniLM-L6-v2 tokenizer the knowledge bases use.

use std::sync::OnceLock;

use hearth_knowledge::splitter::{Chunk, SplitterConfig, TokenCounter, WhitespaceCounter, split};
use hearth_knowledge::wordpiece::TokenizerCounter;
use proptest::prelude::*;

use super::text::piece;

fn minilm() -> &'static TokenizerCounter {
    static COUNTER: OnceLock<TokenizerCounter> = OnceLock::new();
    COUNTER.get_or_init(|| {
        TokenizerCounter::from_file(&crate::model_path("all-minilm-l6-v2/tokenizer.json")).expect("minilm tokenizer")
    })
}

struct Chars;

impl TokenCounter for Chars {
    fn count(&self, text: &str) -> usize {
        text.chars().count()
    }
}

struct Bytes;

impl TokenCounter for Bytes {
    fn count(&self, text: &str) -> usize {
        text.len()
    }
}

#[derive(Clone, Copy, Debug)]
enum Counter {
    Whitespace,
    Chars,
    Bytes,
    MiniLm,
}

impl Counter {
    /// Whether whitespace weighs nothing, as with the tokenizers of embedding models. Only then
    /// does the splitter promise an overlap whenever the previous chunk's last word fits: where
    /// whitespace counts, a unit's trailing whitespace (trimmed off the chunk) still takes up
    /// the overlap budget.
    fn whitespace_is_free(self) -> bool {
        matches!(self, Self::Whitespace | Self::MiniLm)
    }

    fn get(self) -> &'static dyn TokenCounter {
        match self {
            Self::Whitespace => &WhitespaceCounter,
            Self::Chars => &Chars,
            Self::Bytes => &Bytes,
            Self::MiniLm => minilm(),
        }
    }
}

/// Documents: words, runs of every kind of whitespace, sentence ends, markdown headings and
/// fences, CJK, emoji and combining marks; sometimes arbitrary unicode.
fn document() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        4 => "[a-z]{1,8}",
        1 => "[a-z]{20,200}",
        1 => "(数据|東京|🚀|é|ḿ̈){1,40}",
    ];
    let part = prop_oneof![
        6 => word,
        4 => prop::sample::select(&[" ", " ", "  ", "\n", "\n\n", "\r\n", "\t", "\u{a0}", "\u{3000}", "\n  \n"][..]).prop_map(str::to_owned),
        2 => prop::sample::select(&[". ", "! ", "? ", ".\" ", "。", "# ", "\n## ", "\n```\n", "- "][..]).prop_map(str::to_owned),
        1 => piece(),
    ];
    prop_oneof![
        8 => prop::collection::vec(part, 0..160).prop_map(|parts| parts.concat()),
        1 => any::<String>(),
    ]
}

fn config() -> impl Strategy<Value = SplitterConfig> {
    prop_oneof![
        4 => (0usize..40).prop_flat_map(|chunk| (Just(chunk), 0..chunk + 3))
            .prop_map(|(chunk_tokens, overlap_tokens)| SplitterConfig { chunk_tokens, overlap_tokens }),
        1 => Just(SplitterConfig::default()),
    ]
}

fn counter() -> impl Strategy<Value = Counter> {
    prop_oneof![Just(Counter::Whitespace), Just(Counter::Chars), Just(Counter::Bytes), Just(Counter::MiniLm)]
}

/// Byte offsets of words that follow whitespace.
fn word_starts(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut previous_is_space = false;
    for (i, c) in text.char_indices() {
        if previous_is_space && !c.is_whitespace() {
            starts.push(i);
        }
        previous_is_space = c.is_whitespace();
    }
    starts
}

/// Everything `split` promises about `chunks` of `doc`.
fn check(doc: &str, config: &SplitterConfig, counter: Counter, chunks: &[Chunk]) -> Result<(), TestCaseError> {
    let (strict_overlap, counter) = (counter.whitespace_is_free(), counter.get());
    let limit = config.chunk_tokens.max(1);
    let overlap = config.overlap_tokens.min(limit - 1);
    let mut covered = 0;
    for (k, chunk) in chunks.iter().enumerate() {
        prop_assert_eq!(chunk.index, k);
        prop_assert!(
            chunk.start < chunk.end && chunk.end <= doc.len(),
            "chunk {} at {}..{}",
            k,
            chunk.start,
            chunk.end
        );
        prop_assert!(
            doc.is_char_boundary(chunk.start) && doc.is_char_boundary(chunk.end),
            "chunk {} cuts a character",
            k
        );
        prop_assert_eq!(&chunk.text, &doc[chunk.start..chunk.end], "chunk {} is not the text at its offsets", k);
        prop_assert_eq!(chunk.text.trim(), &chunk.text, "chunk {} is not trimmed", k);
        let tokens = counter.count(&chunk.text);
        prop_assert_eq!(tokens, chunk.tokens, "chunk {} miscounted", k);
        prop_assert!(
            tokens <= limit || chunk.text.chars().count() == 1,
            "chunk {} has {} tokens, over {}: {:?}",
            k,
            tokens,
            limit,
            chunk.text
        );
        prop_assert!(doc[covered.min(chunk.start)..chunk.start].trim().is_empty(), "text lost before chunk {}", k);
        covered = covered.max(chunk.end);
        let Some(previous) = k.checked_sub(1).map(|p| &chunks[p]) else { continue };
        prop_assert!(
            chunk.start > previous.start && chunk.end > previous.end,
            "chunks {} and {} out of order",
            k - 1,
            k
        );
        if chunk.start < previous.end {
            let shared = counter.count(&doc[chunk.start..previous.end]);
            prop_assert!(shared <= overlap, "chunks {} and {} share {} tokens, over {}", k - 1, k, shared, overlap);
        } else if let Some(last_word) =
            word_starts(&previous.text).last().map(|&w| previous.start + w).filter(|_| strict_overlap)
        {
            // No overlap: only when even the previous chunk's last word could not be repeated.
            // The splitter budgets the overlap and the new text separately, so a word that would
            // merge with the next chunk's first word (`。` + `a` is one whitespace word) costs
            // its own count here, as it does there. A word of no tokens (U+200B) is no overlap.
            let tail = counter.count(&doc[last_word..previous.end]);
            prop_assert!(
                tail == 0 || tail > overlap || tail + chunk.tokens > limit,
                "no overlap between chunks {} and {} although the last word {:?} ({} tokens) fits ({} + {})",
                k - 1,
                k,
                &doc[last_word..previous.end],
                tail,
                tail,
                chunk.tokens
            );
        }
    }
    prop_assert!(doc[covered..].trim().is_empty(), "text lost at the end: {:?}", &doc[covered..]);
    Ok(())
}

proptest! {
    #![proptest_config(crate::config(crate::CASES))]

    /// Every promise of `split`, for any text, any settings and every counter.
    #[test]
    fn chunks_cover_the_text_in_order_within_the_limits(doc in document(), config in config(), counter in counter()) {
        let chunks = split(&doc, &config, counter.get());
        check(&doc, &config, counter, &chunks)?;
    }

    /// The default settings (500 tokens, 50 overlap) with the real tokenizer on long documents.
    #[test]
    fn default_chunking_keeps_its_promises_with_minilm(parts in prop::collection::vec(document(), 1..12)) {
        let doc = parts.concat();
        let config = SplitterConfig::default();
        let chunks = split(&doc, &config, minilm());
        check(&doc, &config, Counter::MiniLm, &chunks)?;
    }

    /// The splitter relies on MiniLM's fast count: it must equal what `tokenizers` counts.
    #[test]
    fn the_fast_minilm_count_equals_the_tokenizers_count(text in prop_oneof![document(), super::text::tricky_text(24)]) {
        prop_assert_eq!(minilm().count(&text), minilm().count_slow(&text), "{:?}", text);
    }
}
