//! Streaming detokenization: ids in, newly completed text out, never half a character.

use super::gguf::SequenceStart;
use super::*;

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

impl<'a> StreamDecoder<'a> {
    /// A decoder for a tokenizer's backend, at the start of a sequence.
    pub(super) fn new(backend: &'a Backend, skip_special: bool) -> Self {
        let state = match backend {
            Backend::Gguf(v) => StreamState::Gguf { vocab: v, pending: Vec::new(), start: SequenceStart::Fresh },
            Backend::Json(t) => StreamState::Json { tokenizer: t, ids: Vec::new(), prefix_offset: 0, read_offset: 0 },
        };
        Self { state, skip_special }
    }

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
pub(crate) fn drain_utf8(pending: &mut Vec<u8>, flush: bool) -> String {
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
