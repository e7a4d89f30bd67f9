//! Recursive text splitter: cuts a document into chunks that fit the embedding model, measured
//! in the model's own tokens.
//!
//! The document is first decomposed into *units*: the coarsest pieces that fit in a chunk, found
//! by splitting oversized pieces at paragraphs (blank lines), then lines, then sentences, then
//! words, and finally characters. Units are then packed greedily into chunks; each chunk after
//! the first starts with up to `overlap_tokens` tokens from the end of the previous one, cut at a
//! word boundary. Every chunk is an exact slice of the document (leading and trailing whitespace
//! trimmed) and is re-counted after packing, so `counter.count(&chunk.text) <= chunk_tokens`
//! holds even where a tokenizer counts a concatenation differently from its parts.

use std::ops::Range;

/// Measures text in the tokens of the embedding model that will embed the chunks.
pub trait TokenCounter {
    /// Number of tokens `text` occupies, without special tokens such as `[CLS]`/`[SEP]`.
    fn count(&self, text: &str) -> usize;
}

impl<F: Fn(&str) -> usize> TokenCounter for F {
    fn count(&self, text: &str) -> usize {
        self(text)
    }
}

/// Counts whitespace-separated words: a stand-in when no tokenizer is at hand.
#[derive(Debug, Clone, Copy, Default)]
pub struct WhitespaceCounter;

impl TokenCounter for WhitespaceCounter {
    fn count(&self, text: &str) -> usize {
        text.split_whitespace().count()
    }
}

/// How large chunks are and how much consecutive chunks share, both in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitterConfig {
    /// Most tokens in one chunk (default 500). Zero is treated as one.
    pub chunk_tokens: usize,
    /// Most tokens a chunk repeats from the end of the previous one (default 50). Values of
    /// `chunk_tokens` or more are treated as `chunk_tokens - 1`.
    pub overlap_tokens: usize,
}

impl Default for SplitterConfig {
    fn default() -> Self {
        Self { chunk_tokens: 500, overlap_tokens: 50 }
    }
}

/// One chunk of a document, ready to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The chunk's text: exactly `&doc[start..end]`, without leading or trailing whitespace.
    pub text: String,
    /// Byte offset of the chunk's first byte in the document.
    pub start: usize,
    /// Byte offset one past the chunk's last byte in the document.
    pub end: usize,
    /// Markdown heading path in effect at `start`, outermost first (`["Install", "Helm"]`).
    pub headings: Vec<String>,
    /// Position of the chunk in the document, from 0.
    pub index: usize,
    /// `counter.count(&text)`, as measured when the chunk was cut.
    pub tokens: usize,
}

/// Splits `doc` into chunks of at most `config.chunk_tokens` tokens as measured by `counter`.
///
/// Chunks come in document order, never empty, trimmed of surrounding whitespace; together they
/// cover every non-whitespace byte. The only chunk that may exceed the limit is one holding a
/// single character that alone counts more than `chunk_tokens` (or, with a counter that counts
/// more tokens once whitespace is trimmed, one unit alone). An empty or all-whitespace document
/// gives no chunks.
pub fn split(doc: &str, config: &SplitterConfig, counter: &dyn TokenCounter) -> Vec<Chunk> {
    let mut splitter = Splitter::new(doc, config, counter);
    splitter.decompose(0..doc.len(), Level::Paragraph, None);
    let spans = splitter.pack();
    let mut headings = HeadingTracker::new(doc);
    spans
        .into_iter()
        .enumerate()
        .map(|(index, span)| Chunk {
            text: doc[span.start..span.end].to_owned(),
            start: span.start,
            end: span.end,
            headings: headings.path_at(span.start),
            index,
            tokens: span.tokens,
        })
        .collect()
}

/// Separators, coarsest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Paragraph,
    Line,
    Sentence,
    Word,
    Char,
}

impl Level {
    fn finer(self) -> Self {
        match self {
            Self::Paragraph => Self::Line,
            Self::Line => Self::Sentence,
            Self::Sentence => Self::Word,
            Self::Word | Self::Char => Self::Char,
        }
    }
}

/// A contiguous piece of the document that fits in a chunk (or is a single character).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unit {
    start: usize,
    end: usize,
    tokens: usize,
}

/// A chunk's trimmed byte range and its measured size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
    tokens: usize,
}

/// Where a chunk's overlap starts and how many tokens it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Overlap {
    start: usize,
    tokens: usize,
}

struct Splitter<'a> {
    doc: &'a str,
    counter: &'a dyn TokenCounter,
    chunk_tokens: usize,
    overlap_tokens: usize,
    /// Units in document order; they tile the document without gaps.
    units: Vec<Unit>,
}

impl<'a> Splitter<'a> {
    fn new(doc: &'a str, config: &SplitterConfig, counter: &'a dyn TokenCounter) -> Self {
        let chunk_tokens = config.chunk_tokens.max(1);
        let overlap_tokens = config.overlap_tokens.min(chunk_tokens - 1);
        Self { doc, counter, chunk_tokens, overlap_tokens, units: Vec::new() }
    }

    fn count(&self, range: Range<usize>) -> usize {
        self.counter.count(&self.doc[range])
    }

    /// Appends the units of `range`, splitting at `level` and finer. `tokens` is the range's
    /// count when already known; the whole document is never counted up front, since splitting a
    /// piece that would have fitted costs nothing: packing joins its parts again.
    fn decompose(&mut self, range: Range<usize>, level: Level, tokens: Option<usize>) {
        if range.is_empty() {
            return;
        }
        if let Some(tokens) = tokens.filter(|&t| t <= self.chunk_tokens) {
            self.units.push(Unit { start: range.start, end: range.end, tokens });
            return;
        }
        if level == Level::Char {
            self.pack_chars(range);
            return;
        }
        let segments = segments(self.doc, range.clone(), level);
        if segments.len() <= 1 {
            self.decompose(range, level.finer(), tokens);
            return;
        }
        for segment in segments {
            let tokens = self.count(segment.clone());
            self.decompose(segment, level.finer(), Some(tokens));
        }
    }

    /// Cuts a range with no usable separator (one huge word) into the longest runs of characters
    /// that fit, found by galloping then bisecting on character boundaries.
    fn pack_chars(&mut self, range: Range<usize>) {
        let mut start = range.start;
        while start < range.end {
            let first = next_char_boundary(self.doc, start);
            let first_tokens = self.count(start..first);
            if first_tokens > self.chunk_tokens {
                // Nothing smaller exists; keep the text rather than lose it.
                self.units.push(Unit { start, end: first, tokens: first_tokens });
                start = first;
                continue;
            }
            let (mut fit, mut fit_tokens) = (first, first_tokens);
            let mut too_far = None;
            let mut step = (first - start).max(1);
            while too_far.is_none() && fit < range.end {
                step = step.saturating_mul(2);
                let probe = floor_char_boundary(self.doc, fit.saturating_add(step).min(range.end));
                if probe <= fit {
                    break;
                }
                let tokens = self.count(start..probe);
                if tokens <= self.chunk_tokens {
                    (fit, fit_tokens) = (probe, tokens);
                } else {
                    too_far = Some(probe);
                }
            }
            if let Some(mut high) = too_far {
                while let Some(mid) = char_boundary_between(self.doc, fit, high) {
                    let tokens = self.count(start..mid);
                    if tokens <= self.chunk_tokens {
                        (fit, fit_tokens) = (mid, tokens);
                    } else {
                        high = mid;
                    }
                }
            }
            self.units.push(Unit { start, end: fit, tokens: fit_tokens });
            start = fit;
        }
    }

    /// Packs the units into chunks: greedy by the cached unit counts, then re-measured, giving
    /// back units (or overlap) while the measured chunk is over the limit.
    fn pack(&self) -> Vec<Span> {
        let units = &self.units;
        let mut spans: Vec<Span> = Vec::new();
        // Units of the last emitted chunk, for overlap candidates.
        let mut previous: Option<(Span, Range<usize>)> = None;
        let mut i = 0;
        while i < units.len() {
            let budget = self.overlap_tokens.min(self.chunk_tokens.saturating_sub(units[i].tokens));
            let mut overlap =
                previous.as_ref().and_then(|(span, owned)| self.overlap(span, &units[owned.clone()], budget));
            let mut total = overlap.map_or(0, |o| o.tokens);
            let mut j = i;
            while j < units.len() && total + units[j].tokens <= self.chunk_tokens {
                total += units[j].tokens;
                j += 1;
            }
            if j == i {
                // A single character over the limit: it goes alone.
                overlap = None;
                j = i + 1;
            }
            loop {
                let new_text = units[i].start..units[j - 1].end;
                if self.doc[new_text.clone()].trim().is_empty() {
                    // Only whitespace left: nothing to embed, and nothing lost.
                    i = j;
                    break;
                }
                let start = overlap.map_or(new_text.start, |o| o.start);
                let (start, end) = trim(self.doc, start, new_text.end);
                let tokens = self.count(start..end);
                let alone = j == i + 1 && overlap.is_none();
                if tokens <= self.chunk_tokens || alone {
                    let span = Span { start, end, tokens };
                    spans.push(span);
                    previous = Some((span, i..j));
                    i = j;
                    break;
                }
                if j > i + 1 {
                    j -= 1;
                } else if let (Some(o), Some((span, owned))) = (overlap, previous.as_ref()) {
                    // One unit plus overlap measures too long together: shrink the overlap.
                    overlap = self.overlap(span, &units[owned.clone()], o.tokens.saturating_sub(1));
                } else {
                    overlap = None;
                }
            }
        }
        spans
    }

    /// The longest tail of `previous` (cut at a word or unit boundary, never its very start)
    /// that holds at most `budget` tokens: pieces are counted one by one back from the end, then
    /// the whole tail is measured and shortened while it is over.
    fn overlap(&self, previous: &Span, units: &[Unit], budget: usize) -> Option<Overlap> {
        if budget == 0 {
            return None;
        }
        let candidates = overlap_candidates(self.doc, previous, units);
        let mut estimate = 0;
        let mut longest = None;
        let mut piece_end = previous.end;
        for (k, &start) in candidates.iter().enumerate() {
            estimate += self.count(start..piece_end);
            if estimate > budget {
                break;
            }
            longest = Some(k);
            piece_end = start;
        }
        let mut k = longest?;
        loop {
            let tokens = self.count(candidates[k]..previous.end);
            if tokens <= budget {
                return Some(Overlap { start: candidates[k], tokens });
            }
            k = k.checked_sub(1)?;
        }
    }
}

/// Places inside `span` where an overlap may start, nearest to its end first: starts of words
/// and starts of units (the latter matter inside a word cut by characters).
fn overlap_candidates(doc: &str, span: &Span, units: &[Unit]) -> Vec<usize> {
    let bytes = doc.as_bytes();
    let mut candidates: Vec<usize> =
        units.iter().map(|u| u.start).filter(|&s| s > span.start && s < span.end).collect();
    let mut previous_is_space = false;
    for (offset, c) in doc[span.start..span.end].char_indices() {
        let space = c.is_whitespace();
        if previous_is_space && !space {
            candidates.push(span.start + offset);
        }
        previous_is_space = space;
    }
    // A unit start preceded by whitespace is already a word start; one inside whitespace is not
    // a good place to start, but trimming would move it anyway.
    candidates.retain(|&s| !char_at(doc, s).is_some_and(char::is_whitespace) && s < bytes.len());
    candidates.sort_unstable_by(|a, b| b.cmp(a));
    candidates.dedup();
    candidates
}

/// Splits `range` at `level`'s separators into contiguous segments; whitespace-only segments are
/// joined to a neighbour so that every segment carries text.
fn segments(doc: &str, range: Range<usize>, level: Level) -> Vec<Range<usize>> {
    let text = &doc[range.clone()];
    let cuts = match level {
        Level::Paragraph => paragraph_cuts(text),
        Level::Line => line_cuts(text),
        Level::Sentence => sentence_cuts(text),
        Level::Word => word_cuts(text),
        Level::Char => Vec::new(),
    };
    let mut segments: Vec<Range<usize>> = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for cut in cuts.into_iter().chain(std::iter::once(text.len())) {
        if cut <= start {
            continue;
        }
        let blank = text[start..cut].trim().is_empty();
        match segments.last_mut() {
            Some(last) if blank => last.end = cut,
            // Leading whitespace: keep it with the first segment that has text.
            Some(last) if text[last.clone()].trim().is_empty() => last.end = cut,
            _ => segments.push(start..cut),
        }
        start = cut;
    }
    segments.into_iter().map(|s| range.start + s.start..range.start + s.end).collect()
}

/// Cuts before each non-blank line that follows a blank line (and some text).
fn paragraph_cuts(text: &str) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut seen_text = false;
    let mut after_blank = false;
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let blank = line.trim().is_empty();
        if !blank {
            if seen_text && after_blank {
                cuts.push(line_start);
            }
            seen_text = true;
        }
        after_blank = blank;
        line_start += line.len();
    }
    cuts
}

/// Cuts after each newline.
fn line_cuts(text: &str) -> Vec<usize> {
    text.match_indices('\n').map(|(i, _)| i + 1).filter(|&c| c < text.len()).collect()
}

/// Cuts after sentence ends: `.`, `!` or `?` (then closing quotes or brackets) followed by
/// whitespace, or an ideographic full stop, exclamation or question mark. The whitespace stays
/// with the sentence before.
fn sentence_cuts(text: &str) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        let ideographic = matches!(c, '。' | '！' | '？');
        if !(ideographic || matches!(c, '.' | '!' | '?')) {
            continue;
        }
        while chars.next_if(|&(_, c)| matches!(c, '"' | '\'' | ')' | ']' | '’' | '”' | '»')).is_some() {}
        let mut spaced = false;
        while chars.next_if(|&(_, c)| c.is_whitespace()).is_some() {
            spaced = true;
        }
        if let Some(&(next, _)) = chars.peek()
            && (spaced || ideographic)
        {
            cuts.push(next);
        }
    }
    cuts
}

/// Cuts before each word that follows whitespace.
fn word_cuts(text: &str) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut previous_is_space = false;
    for (i, c) in text.char_indices() {
        let space = c.is_whitespace();
        if previous_is_space && !space {
            cuts.push(i);
        }
        previous_is_space = space;
    }
    cuts
}

/// `start..end` without leading and trailing whitespace.
fn trim(doc: &str, start: usize, end: usize) -> (usize, usize) {
    let text = &doc[start..end];
    let leading = text.len() - text.trim_start().len();
    let trailing = text.len() - text.trim_end().len();
    if leading == text.len() { (start, start) } else { (start + leading, end - trailing) }
}

fn char_at(doc: &str, at: usize) -> Option<char> {
    doc.get(at..).and_then(|rest| rest.chars().next())
}

/// The character boundary just after the character at `at` (a boundary itself).
fn next_char_boundary(doc: &str, at: usize) -> usize {
    char_at(doc, at).map_or(doc.len(), |c| at + c.len_utf8())
}

/// The largest character boundary at or before `at`.
fn floor_char_boundary(doc: &str, mut at: usize) -> usize {
    at = at.min(doc.len());
    while !doc.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// A character boundary strictly between `low` and `high` (near the middle), if there is one.
fn char_boundary_between(doc: &str, low: usize, high: usize) -> Option<usize> {
    let middle = floor_char_boundary(doc, low + (high - low) / 2);
    if middle > low {
        return Some(middle);
    }
    let next = next_char_boundary(doc, low);
    (next < high).then_some(next)
}

/// Follows ATX headings (`#` to `######`, outside fenced code) through the document.
struct HeadingTracker<'a> {
    doc: &'a str,
    /// Byte offset of the next line to read.
    cursor: usize,
    fence: Option<(char, usize)>,
    /// Open headings as (level, text), outermost first.
    stack: Vec<(usize, String)>,
}

impl<'a> HeadingTracker<'a> {
    fn new(doc: &'a str) -> Self {
        Self { doc, cursor: 0, fence: None, stack: Vec::new() }
    }

    /// Heading path in effect at `offset`: every heading whose line starts at or before it.
    /// Offsets must not decrease between calls.
    fn path_at(&mut self, offset: usize) -> Vec<String> {
        while self.cursor <= offset && self.cursor < self.doc.len() {
            let rest = &self.doc[self.cursor..];
            let line_len = rest.find('\n').map_or(rest.len(), |i| i + 1);
            let line = &rest[..line_len];
            self.cursor += line_len;
            self.read_line(line);
        }
        self.stack.iter().map(|(_, text)| text.clone()).collect()
    }

    fn read_line(&mut self, line: &str) {
        let line = line.trim_end_matches(['\n', '\r']);
        let indent = line.len() - line.trim_start_matches(' ').len();
        if indent > 3 {
            return;
        }
        let body = &line[indent..];
        if let Some((fence_char, fence_len)) = fence_marker(body) {
            match self.fence {
                None => self.fence = Some((fence_char, fence_len)),
                Some((open_char, open_len))
                    if open_char == fence_char && fence_len >= open_len && body[fence_len..].trim().is_empty() =>
                {
                    self.fence = None;
                }
                Some(_) => {}
            }
            return;
        }
        if self.fence.is_some() {
            return;
        }
        if let Some((level, text)) = atx_heading(body) {
            self.stack.retain(|&(open, _)| open < level);
            self.stack.push((level, text));
        }
    }
}

/// A code fence opener or closer: three or more backticks or tildes.
fn fence_marker(body: &str) -> Option<(char, usize)> {
    let fence_char = body.chars().next().filter(|c| matches!(c, '`' | '~'))?;
    let len = body.len() - body.trim_start_matches(fence_char).len();
    (len >= 3).then_some((fence_char, len))
}

/// An ATX heading's level and text: `## Helm ##` gives `(2, "Helm")`.
fn atx_heading(body: &str) -> Option<(usize, String)> {
    let level = body.len() - body.trim_start_matches('#').len();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &body[level..];
    if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    let mut text = rest.trim();
    // A closing sequence of #s counts only when set off by a space (or when it is all there is).
    let without_closing = text.trim_end_matches('#');
    if without_closing.is_empty() {
        text = "";
    } else if without_closing.ends_with([' ', '\t']) {
        text = without_closing.trim_end();
    }
    Some((level, truncate(text, MAX_HEADING_BYTES).to_owned()))
}

/// Longest heading text kept: headings label chunks, and a runaway "heading" (a whole document
/// on one `#` line) must not be copied into every chunk.
const MAX_HEADING_BYTES: usize = 256;

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    &text[..floor_char_boundary(text, max)]
}

#[cfg(test)]
mod tests {
    use super::super::wordpiece::tests::minilm;
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::time::Instant;

    const WORDS: &[&str] = &[
        "the",
        "model",
        "server",
        "cluster",
        "naïve",
        "façade",
        "über",
        "日本語",
        "東京",
        "emoji🎉",
        "Ωmega",
        "ok",
        "Kubernetes",
        "helm",
        "chart",
        "e.g.",
        "v1.2.3",
        "don't",
        "(see",
        "below)",
        "—",
        "x",
    ];

    fn word(rng: &mut StdRng) -> String {
        match rng.random_range(0..100) {
            0 => {
                let n = rng.random_range(20..300);
                (0..n).map(|_| char::from(b'a' + rng.random_range(0..26u8))).collect()
            }
            1 => "数据".repeat(rng.random_range(5..80)),
            _ => WORDS[rng.random_range(0..WORDS.len())].to_owned(),
        }
    }

    fn sentence(rng: &mut StdRng) -> String {
        let n = rng.random_range(1..25);
        let mut s = (0..n).map(|_| word(rng)).collect::<Vec<_>>().join(if rng.random_bool(0.05) { "  " } else { " " });
        s.push_str([".", "!", "?", "", "。", ".\""][rng.random_range(0..6)]);
        s
    }

    /// Random markdown-ish text: headings, paragraphs, lists, code fences, odd whitespace.
    fn document(rng: &mut StdRng) -> String {
        let mut doc = String::new();
        if rng.random_bool(0.1) {
            doc.push_str("  \n\t\n");
        }
        for _ in 0..rng.random_range(0..40) {
            match rng.random_range(0..10) {
                0 => doc.push_str(&format!("{} {}\n\n", "#".repeat(rng.random_range(1..7)), sentence(rng))),
                1 => {
                    doc.push_str("```bash\n# not a heading\n");
                    doc.push_str(&sentence(rng));
                    doc.push_str("\n```\n\n");
                }
                2 => {
                    for _ in 0..rng.random_range(1..6) {
                        doc.push_str(&format!("- {}\n", sentence(rng)));
                    }
                    doc.push('\n');
                }
                3 => {
                    // A long line without sentence ends.
                    let n = rng.random_range(30..200);
                    doc.push_str(&(0..n).map(|_| word(rng)).collect::<Vec<_>>().join(" "));
                    doc.push_str("\n\n");
                }
                _ => {
                    for _ in 0..rng.random_range(1..8) {
                        doc.push_str(&sentence(rng));
                        doc.push(' ');
                    }
                    doc.push_str(["\n\n", "\r\n\r\n", "\n  \n\n", "\n"][rng.random_range(0..4)]);
                }
            }
        }
        doc
    }

    /// Asserts everything `split` promises about `chunks`.
    fn check(doc: &str, config: &SplitterConfig, counter: &dyn TokenCounter, chunks: &[Chunk]) {
        let mut covered = 0;
        for (k, chunk) in chunks.iter().enumerate() {
            assert_eq!(chunk.index, k);
            assert!(chunk.start < chunk.end, "empty chunk {k}");
            assert_eq!(chunk.text, &doc[chunk.start..chunk.end], "chunk {k} is not the slice at its offsets");
            assert_eq!(chunk.text, chunk.text.trim(), "chunk {k} is not trimmed");
            let tokens = counter.count(&chunk.text);
            assert_eq!(tokens, chunk.tokens);
            assert!(
                tokens <= config.chunk_tokens || chunk.text.chars().count() == 1,
                "chunk {k} has {tokens} tokens, over {}: {:?}",
                config.chunk_tokens,
                chunk.text
            );
            assert!(
                doc[covered.min(chunk.start)..chunk.start].trim().is_empty(),
                "text lost before chunk {k}: {:?}",
                &doc[covered..chunk.start]
            );
            covered = covered.max(chunk.end);
            if let Some(previous) = k.checked_sub(1).map(|p| &chunks[p]) {
                assert!(
                    chunk.start > previous.start && chunk.end > previous.end,
                    "chunks {} and {k} out of order",
                    k - 1
                );
                check_overlap(doc, config, counter, previous, chunk);
            }
        }
        assert!(doc[covered..].trim().is_empty(), "text lost at the end: {:?}", &doc[covered..]);
    }

    fn check_overlap(doc: &str, config: &SplitterConfig, counter: &dyn TokenCounter, previous: &Chunk, next: &Chunk) {
        if next.start < previous.end {
            let shared = &doc[next.start..previous.end];
            let tokens = counter.count(shared);
            assert!(
                tokens <= config.overlap_tokens,
                "overlap {shared:?} has {tokens} tokens, over {}",
                config.overlap_tokens
            );
            return;
        }
        // No overlap: only acceptable when even the previous chunk's last word could not have
        // been repeated at the start of the next chunk.
        let Some(last_word) = word_cuts(&previous.text).last().map(|&w| previous.start + w) else {
            return;
        };
        let tail = counter.count(&doc[last_word..previous.end]);
        let with_tail = counter.count(&doc[last_word..next.end]);
        assert!(
            tail > config.overlap_tokens || with_tail > config.chunk_tokens,
            "no overlap although the last word {:?} ({tail} tokens) fits before chunk {} ({with_tail} tokens together)",
            &doc[last_word..previous.end],
            next.index
        );
    }

    #[test]
    fn random_documents_keep_every_promise_with_a_whitespace_counter() {
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..300 {
            let doc = document(&mut rng);
            let chunk_tokens = [1, 2, 3, 5, 8, 20, 50, 500][round % 8];
            let overlap_tokens = rng.random_range(0..chunk_tokens.max(2));
            let config = SplitterConfig { chunk_tokens, overlap_tokens };
            let chunks = split(&doc, &config, &WhitespaceCounter);
            check(&doc, &config, &WhitespaceCounter, &chunks);
        }
    }

    #[test]
    fn random_documents_keep_every_promise_with_the_minilm_tokenizer() {
        let counter = minilm();
        let mut rng = StdRng::seed_from_u64(11);
        for round in 0..120 {
            let doc = document(&mut rng);
            let chunk_tokens = [4, 8, 20, 64, 128, 500][round % 6];
            let overlap_tokens = rng.random_range(0..chunk_tokens);
            let config = SplitterConfig { chunk_tokens, overlap_tokens };
            let chunks = split(&doc, &config, counter);
            check(&doc, &config, counter, &chunks);
            for chunk in &chunks {
                assert_eq!(counter.count_slow(&chunk.text), chunk.tokens, "tokenizers disagrees on {:?}", chunk.text);
            }
        }
    }

    #[test]
    fn consecutive_chunks_share_up_to_the_overlap() {
        let doc = (0..200).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
        let config = SplitterConfig { chunk_tokens: 20, overlap_tokens: 5 };
        let chunks = split(&doc, &config, &WhitespaceCounter);
        check(&doc, &config, &WhitespaceCounter, &chunks);
        assert_eq!(chunks[0].text, (0..20).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" "));
        for pair in chunks.windows(2) {
            let shared = &doc[pair[1].start..pair[0].end];
            assert_eq!(WhitespaceCounter.count(shared), 5, "{shared:?}");
        }
        assert_eq!(chunks.len(), 13, "200 words, 20 per chunk, 15 new after the first");
    }

    #[test]
    fn paragraphs_stay_whole_when_they_fit() {
        let doc = "alpha beta gamma.\n\ndelta epsilon.\n\nzeta eta theta iota.\n";
        let config = SplitterConfig { chunk_tokens: 5, overlap_tokens: 0 };
        let chunks = split(doc, &config, &WhitespaceCounter);
        let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, ["alpha beta gamma.\n\ndelta epsilon.", "zeta eta theta iota."]);
    }

    #[test]
    fn long_paragraphs_split_at_sentences_before_words() {
        let doc = "One two three. Four five six. Seven eight nine ten eleven twelve thirteen.";
        let config = SplitterConfig { chunk_tokens: 6, overlap_tokens: 0 };
        let chunks = split(doc, &config, &WhitespaceCounter);
        let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, ["One two three. Four five six.", "Seven eight nine ten eleven twelve", "thirteen."]);
    }

    #[test]
    fn headings_follow_the_markdown_structure() {
        let doc = "Intro text before headings.\n\n\
                   # Install\n\nInstall body words here.\n\n\
                   ## Helm ##\n\nHelm body words here.\n\n\
                   ```bash\n# not a heading\nhelm install hearth\n```\n\n\
                   #hashtag is not a heading either.\n\n\
                   ### Values\n\nValues body words here.\n\n\
                   ## Kustomize\n\nKustomize body words here.\n\n\
                   # Usage\n\nUsage body words here.\n";
        let config = SplitterConfig { chunk_tokens: 4, overlap_tokens: 0 };
        let chunks = split(doc, &config, &WhitespaceCounter);
        check(doc, &config, &WhitespaceCounter, &chunks);
        let headings_at = |needle: &str| -> Vec<String> {
            let chunk =
                chunks.iter().find(|c| c.text.starts_with(needle)).unwrap_or_else(|| panic!("no chunk at {needle:?}"));
            chunk.headings.clone()
        };
        assert!(headings_at("Intro").is_empty());
        assert_eq!(headings_at("# Install"), ["Install"]);
        assert_eq!(headings_at("Install body"), ["Install"]);
        assert_eq!(headings_at("## Helm"), ["Install", "Helm"]);
        assert_eq!(headings_at("Helm body"), ["Install", "Helm"]);
        assert_eq!(headings_at("helm install"), ["Install", "Helm"]);
        assert_eq!(headings_at("#hashtag"), ["Install", "Helm"]);
        assert_eq!(headings_at("Values body"), ["Install", "Helm", "Values"]);
        assert_eq!(headings_at("Kustomize body"), ["Install", "Kustomize"]);
        assert_eq!(headings_at("Usage body"), ["Usage"]);
    }

    #[test]
    fn atx_headings_parse_like_commonmark() {
        assert_eq!(atx_heading("# Title"), Some((1, "Title".to_owned())));
        assert_eq!(atx_heading("###### Six"), Some((6, "Six".to_owned())));
        assert_eq!(atx_heading("####### Seven"), None);
        assert_eq!(atx_heading("#NoSpace"), None);
        assert_eq!(atx_heading("## Closed ##  "), Some((2, "Closed".to_owned())));
        assert_eq!(atx_heading("## C# rocks"), Some((2, "C# rocks".to_owned())));
        assert_eq!(atx_heading("#"), Some((1, String::new())));
        let runaway = format!("# {}", "é".repeat(1000));
        assert_eq!(atx_heading(&runaway), Some((1, "é".repeat(MAX_HEADING_BYTES / 2))));
    }

    #[test]
    fn a_huge_word_is_split_by_characters() {
        let doc = "x".repeat(10_000);
        let chars = |text: &str| text.chars().count();
        let config = SplitterConfig { chunk_tokens: 100, overlap_tokens: 10 };
        let chunks = split(&doc, &config, &chars);
        check(&doc, &config, &chars, &chunks);
        assert_eq!(chunks.len(), 100);
        assert!(chunks.iter().all(|c| c.text.len() == 100));
    }

    #[test]
    fn a_huge_multibyte_word_is_split_on_char_boundaries_with_minilm() {
        // BERT tokenizes each CJK character on its own, so this one "word" is 3,000 tokens.
        let doc = format!("Intro. {}", "日本語".repeat(1000));
        let config = SplitterConfig { chunk_tokens: 64, overlap_tokens: 8 };
        let chunks = split(&doc, &config, minilm());
        check(&doc, &config, minilm(), &chunks);
        assert!(chunks.len() >= 3000 / 64);
        assert!(chunks.iter().all(|c| c.tokens <= 64));
    }

    #[test]
    fn a_character_over_the_limit_still_comes_out() {
        let doc = "ab";
        let config = SplitterConfig { chunk_tokens: 1, overlap_tokens: 0 };
        let chunks = split(doc, &config, &|text: &str| 2 * text.len());
        let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, ["a", "b"]);
    }

    #[test]
    fn empty_and_blank_documents_give_no_chunks() {
        let config = SplitterConfig::default();
        assert!(split("", &config, &WhitespaceCounter).is_empty());
        assert!(split(" \n\n\t \r\n", &config, &WhitespaceCounter).is_empty());
        assert!(split("", &config, minilm()).is_empty());
    }

    #[test]
    fn a_small_document_is_one_chunk() {
        let doc = "\n\n  # Title\n\nSome text. More text.\n\n";
        let chunks = split(doc, &SplitterConfig::default(), minilm());
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].text, "# Title\n\nSome text. More text.");
        assert_eq!(chunks[0].headings, ["Title"]);
    }

    #[test]
    fn out_of_range_settings_are_clamped() {
        let doc = "a b c d e f";
        let config = SplitterConfig { chunk_tokens: 0, overlap_tokens: 9 };
        let chunks = split(doc, &config, &WhitespaceCounter);
        let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, ["a", "b", "c", "d", "e", "f"]);
    }

    /// About 1 MB of markdown, shaped like documentation.
    fn megabyte_of_markdown() -> String {
        let mut rng = StdRng::seed_from_u64(1);
        let mut doc = String::new();
        let mut section = 0;
        while doc.len() < 1_000_000 {
            section += 1;
            doc.push_str(&format!("## Section {section}\n\n"));
            for _ in 0..rng.random_range(2..8) {
                for _ in 0..rng.random_range(1..8) {
                    let n = rng.random_range(4..25);
                    let words: Vec<&str> = (0..n).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect();
                    doc.push_str(&words.join(" "));
                    doc.push_str(". ");
                }
                doc.push_str("\n\n");
            }
        }
        doc
    }

    #[test]
    fn a_megabyte_of_markdown_splits_quickly_with_minilm() {
        let counter = minilm();
        let doc = megabyte_of_markdown();
        let config = SplitterConfig::default();
        let started = Instant::now();
        let chunks = split(&doc, &config, counter);
        let elapsed = started.elapsed();
        eprintln!("split {} bytes into {} chunks in {elapsed:?}", doc.len(), chunks.len());
        check(&doc, &config, counter, &chunks);
        assert_eq!(counter.count(&doc), counter.count_slow(&doc), "fast and tokenizers counts differ");
        // Generous against a loaded machine; the report quotes the measured figure.
        assert!(elapsed.as_secs_f64() < 5.0, "splitting 1 MB took {elapsed:?}");
    }

    #[test]
    fn a_megabyte_on_one_line_splits_quickly_with_minilm() {
        // No paragraphs, lines or sentences: every word becomes its own unit.
        let counter = minilm();
        let doc = megabyte_of_markdown().replace(['\n', '.', '#'], " ");
        let config = SplitterConfig::default();
        let started = Instant::now();
        let chunks = split(&doc, &config, counter);
        let elapsed = started.elapsed();
        eprintln!("split {} bytes on one line into {} chunks in {elapsed:?}", doc.len(), chunks.len());
        check(&doc, &config, counter, &chunks);
        assert!(elapsed.as_secs_f64() < 10.0, "splitting 1 MB took {elapsed:?}");
    }
}
