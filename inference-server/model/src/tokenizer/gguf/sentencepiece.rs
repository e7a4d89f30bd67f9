//! SentencePiece encoding as llama.cpp runs it: characters merged by the highest vocabulary
//! score, a priority queue keeping long inputs linear-logarithmic, byte fallback for the rest.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::*;

impl GgufVocab {
    /// llama.cpp's SentencePiece session: start from UTF-8 characters, repeatedly merge the
    /// adjacent pair whose concatenation is the highest-scoring vocabulary entry (ties: leftmost).
    pub(crate) fn spm_tokenize(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
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
}

/// A SentencePiece merge candidate; the queue pops the highest score, then the leftmost pair.
pub(crate) struct SpmBigram {
    pub(crate) score: f32,
    pub(crate) left: usize,
    pub(crate) right: usize,
    pub(crate) size: usize,
}

impl SpmBigram {
    pub(crate) fn new(score: f32, left: usize, right: usize, size: usize) -> Self {
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
