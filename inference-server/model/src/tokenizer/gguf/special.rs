//! The special-token partition: control, user-defined and unknown tokens written in the text
//! are split out first, longest first, with a byte trie, exactly like llama.cpp's.

use std::cmp::Reverse;

use super::*;

pub(crate) enum Fragment {
    Text(usize, usize),
    Token(u32),
}

/// Finds special tokens (control, user-defined, unknown) in text with a byte trie.
pub(crate) struct SpecialMatcher {
    pub(crate) nodes: Vec<TrieNode>,
}

#[derive(Default)]
pub(crate) struct TrieNode {
    /// Sorted by byte.
    pub(crate) children: Vec<(u8, u32)>,
    pub(crate) token: Option<u32>,
}

impl SpecialMatcher {
    pub(crate) fn new(tokens: &[String], attrs: &[u8]) -> Self {
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
    pub(crate) fn partition(&self, text: &str, attrs: &[u8], parse_special: bool) -> Vec<Fragment> {
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

pub(crate) fn whole_text(text: &str) -> Vec<Fragment> {
    if text.is_empty() { Vec::new() } else { vec![Fragment::Text(0, text.len())] }
}
