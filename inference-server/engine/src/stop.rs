//! Turning generated ids into text as they arrive: incremental detokenization that never
//! splits a character, and stop sequences that are cut off before the client sees them.

use hearth_model::Vocabulary;

/// Incremental detokenizer: decodes a small window of recent ids and emits only text that
/// is complete (no partial UTF-8 character), so streaming needs no full re-decode per token.
#[derive(Debug, Default)]
pub struct Detokenizer {
    prefix_offset: usize,
    read_offset: usize,
}

impl Detokenizer {
    /// New text made complete by the last id of `ids` (every generated id so far).
    pub fn next(&mut self, vocab: &dyn Vocabulary, ids: &[u32]) -> String {
        let prefix = vocab.decode(&ids[self.prefix_offset..self.read_offset]);
        let full = vocab.decode(&ids[self.prefix_offset..]);
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.is_char_boundary(prefix.len()) {
            let new = full[prefix.len()..].to_owned();
            self.prefix_offset = self.read_offset;
            self.read_offset = ids.len();
            new
        } else {
            String::new()
        }
    }

    /// Whatever is left undecoded at the end of generation.
    pub fn finish(&mut self, vocab: &dyn Vocabulary, ids: &[u32]) -> String {
        let prefix = vocab.decode(&ids[self.prefix_offset..self.read_offset]);
        let full = vocab.decode(&ids[self.prefix_offset..]);
        self.prefix_offset = ids.len();
        self.read_offset = ids.len();
        match full.get(prefix.len()..) {
            Some(rest) if full.len() > prefix.len() => rest.to_owned(),
            _ => String::new(),
        }
    }
}

/// What the stop matcher lets through.
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text safe to send now (may be empty while a possible stop sequence is held back).
    Emit(String),
    /// A stop sequence appeared: send this text (everything before it) and finish.
    Stopped(String),
}

/// Watches generated text for stop sequences, holding back any tail that could still become
/// one, so a stop sequence never reaches the client.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    /// A matcher for these stop sequences (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), pending: String::new() }
    }

    /// Feeds newly decoded text.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Emit(text.to_owned());
        }
        self.pending.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            let before = self.pending[..at].to_owned();
            self.pending.clear();
            return StopOutcome::Stopped(before);
        }
        let hold = self.longest_stop_prefix_suffix();
        let emit_len = self.pending.len() - hold;
        let emit = self.pending[..emit_len].to_owned();
        self.pending.drain(..emit_len);
        StopOutcome::Emit(emit)
    }

    /// Text held back at the end of generation (no stop sequence completed).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length in bytes of the longest suffix of `pending` that is a proper prefix of a stop.
    fn longest_stop_prefix_suffix(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            for (len, _) in stop.char_indices().skip(1) {
                if len > best && self.pending.ends_with(&stop[..len]) {
                    best = len;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_sequences_split_across_pushes_are_never_emitted() {
        let mut m = StopMatcher::new(&["\n\nUser:".to_owned()]);
        assert_eq!(m.push("Hello"), StopOutcome::Emit("Hello".into()));
        assert_eq!(m.push(" world\n"), StopOutcome::Emit(" world".into()));
        assert_eq!(m.push("\nUs"), StopOutcome::Emit(String::new()));
        assert_eq!(m.push("er: hi"), StopOutcome::Stopped(String::new()));
    }

    #[test]
    fn held_back_text_is_released_when_it_stops_matching() {
        let mut m = StopMatcher::new(&["END".to_owned()]);
        assert_eq!(m.push("the EN"), StopOutcome::Emit("the ".into()));
        assert_eq!(m.push("GINE"), StopOutcome::Emit("ENGIN".into()));
        assert_eq!(m.push(" E"), StopOutcome::Emit("E ".into()));
        assert_eq!(m.flush(), "E");
    }

    #[test]
    fn the_earliest_stop_wins_and_text_before_it_is_kept() {
        let mut m = StopMatcher::new(&["b".to_owned(), "cd".to_owned()]);
        assert_eq!(m.push("a cd b"), StopOutcome::Stopped("a ".into()));
    }

    #[test]
    fn multibyte_stops_hold_back_on_char_boundaries() {
        let mut m = StopMatcher::new(&["東京".to_owned()]);
        assert_eq!(m.push("in 東"), StopOutcome::Emit("in ".into()));
        assert_eq!(m.push("京"), StopOutcome::Stopped(String::new()));
    }
}
