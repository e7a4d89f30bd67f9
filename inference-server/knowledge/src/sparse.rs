//! Lexical (sparse) vectors with BM25-style weights, as Qdrant's `bm25` model builds them: a
//! document's terms weighted by saturated, length-normalised term frequency; a query's terms
//! weighted 1. The inverse document frequency is applied by the store at query time (Qdrant's
//! IDF modifier), so adding documents never rewrites stored vectors.

use std::collections::BTreeMap;

use super::store::SparseVector;

/// BM25 term-frequency saturation.
const K1: f32 = 1.2;
/// BM25 length normalisation.
const B: f32 = 0.75;
/// The average document length assumed for normalisation, in terms (fastembed's default; a
/// fixed value keeps vectors independent of the rest of the collection).
const AVERAGE_LENGTH: f32 = 256.0;

/// English words too common to carry meaning in a lexical match.
const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "has", "have", "he", "her", "his", "i",
    "if", "in", "into", "is", "it", "its", "me", "my", "no", "not", "of", "on", "or", "our", "she", "so", "than",
    "that", "the", "their", "them", "then", "there", "these", "they", "this", "to", "was", "we", "were", "what",
    "when", "which", "who", "will", "with", "you", "your",
];

/// The terms of a text: lowercased runs of letters and digits, stop words dropped.
pub fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOP_WORDS.contains(&w.as_str()))
        .collect()
}

/// A term's index in the sparse space: 32-bit FNV-1a of its UTF-8 bytes (stable across
/// versions and machines, which stored vectors depend on).
pub fn term_index(term: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in term.as_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

fn vector(weights: BTreeMap<u32, f32>) -> SparseVector {
    let (indices, values) = weights.into_iter().unzip();
    SparseVector { indices, values }
}

/// A document's sparse vector.
pub fn document(text: &str) -> SparseVector {
    let terms = terms(text);
    let length = terms.len() as f32;
    let mut counts: BTreeMap<u32, f32> = BTreeMap::new();
    for term in &terms {
        *counts.entry(term_index(term)).or_default() += 1.0;
    }
    let norm = K1 * (1.0 - B + B * length / AVERAGE_LENGTH);
    vector(counts.into_iter().map(|(i, tf)| (i, tf * (K1 + 1.0) / (tf + norm))).collect())
}

/// A query's sparse vector: each distinct term once, weight 1.
pub fn query(text: &str) -> SparseVector {
    vector(terms(text).iter().map(|t| (term_index(t), 1.0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_are_lowercased_words_without_stop_words() {
        assert_eq!(terms("The Helm chart, v4 — and KEDA!"), ["helm", "chart", "v4", "keda"]);
        assert_eq!(terms("Grüße aus Köln"), ["grüße", "aus", "köln"]);
    }

    #[test]
    fn weights_saturate_with_repetition_and_shrink_with_length() {
        let once = document("qdrant");
        let thrice = document("qdrant qdrant qdrant");
        assert!(thrice.values[0] > once.values[0], "more occurrences weigh more");
        assert!(thrice.values[0] < 3.0 * once.values[0], "but saturate");
        let long = document(&format!("qdrant {}", "filler ".repeat(500)));
        let i = long.indices.iter().position(|&i| i == term_index("qdrant")).unwrap();
        assert!(long.values[i] < once.values[0], "a term in a long document weighs less");
    }

    #[test]
    fn indices_are_sorted_unique_and_stable() {
        let v = query("beta alpha beta");
        assert_eq!(v.indices.len(), 2);
        assert!(v.indices.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(term_index("a"), 0xe40c_292c, "FNV-1a of \"a\"");
    }
}
