//! Server-sent events, as far as OpenAI streams use them: `data:` lines in events separated
//! by a blank line.

use axum::body::Bytes;

/// Splits a byte stream into the data payloads of its events.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
}

impl SseParser {
    /// Feeds bytes; returns the payloads of the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(bytes);
        let mut payloads = Vec::new();
        while let Some((end, separator)) = event_end(&self.buffer) {
            let event: Vec<u8> = self.buffer.drain(..end + separator).take(end).collect();
            if let Some(data) = data_of(&String::from_utf8_lossy(&event)) {
                payloads.push(data);
            }
        }
        payloads
    }
}

/// Where the first complete event ends, and the separator's length.
fn event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buffer.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The joined `data:` lines of one event; comments and other fields are dropped.
fn data_of(event: &str) -> Option<String> {
    let lines: Vec<&str> = event
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|rest| rest.strip_prefix(' ').unwrap_or(rest))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// One event carrying `data`.
pub fn event(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_are_reassembled() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: {\"a\"").is_empty());
        assert_eq!(p.push(b":1}\n\ndata: [DONE]\n"), vec!["{\"a\":1}"]);
        assert_eq!(p.push(b"\n"), vec!["[DONE]"]);
    }

    #[test]
    fn comments_and_crlf_are_handled() {
        let mut p = SseParser::default();
        let got = p.push(b": keep-alive\n\ndata: x\r\n\r\nevent: e\ndata: y\ndata: z\n\n");
        assert_eq!(got, vec!["x", "y\nz"]);
    }

    #[test]
    fn an_event_round_trips() {
        let mut p = SseParser::default();
        assert_eq!(p.push(&event("{\"k\":\"v\"}")), vec!["{\"k\":\"v\"}"]);
    }
}
