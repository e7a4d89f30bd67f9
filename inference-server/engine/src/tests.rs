//! Engine behaviour with a scripted model: a byte-level "alphabet" model whose next token is
//! the previous byte plus one, ending with EOS after `z`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::*;
use hearth_model::BackendError;

const EOS: u32 = 256;

/// Scripted model: strongly predicts `last + 1`, or EOS after `z`. Its cache records the
/// tokens it has seen, so each sequence's positions can be checked.
struct Alphabet {
    step_delay: Duration,
    max_batch_seen: Arc<AtomicUsize>,
}

impl Alphabet {
    fn new(step_delay: Duration) -> Self {
        Self { step_delay, max_batch_seen: Arc::new(AtomicUsize::new(0)) }
    }

    fn logits_after(last: u32) -> Vec<f32> {
        let mut logits = vec![0.0; 257];
        let next = if last == u32::from(b'z') { EOS } else { (last + 1) % 256 };
        logits[next as usize] = 10.0;
        logits
    }
}

impl CausalLm for Alphabet {
    type Cache = Vec<u32>;
    fn new_cache(&self) -> Vec<u32> {
        Vec::new()
    }
    fn prefill(&self, tokens: &[u32], cache: &mut Vec<u32>) -> Result<Vec<f32>, BackendError> {
        std::thread::sleep(self.step_delay);
        cache.extend_from_slice(tokens);
        Ok(Self::logits_after(*tokens.last().ok_or_else(|| BackendError("empty".into()))?))
    }
    fn decode(&self, tokens: &[u32], caches: &mut [&mut Vec<u32>]) -> Result<Vec<Vec<f32>>, BackendError> {
        std::thread::sleep(self.step_delay);
        self.max_batch_seen.fetch_max(tokens.len(), Ordering::Relaxed);
        Ok(tokens
            .iter()
            .zip(caches.iter_mut())
            .map(|(&t, cache)| {
                cache.push(t);
                Self::logits_after(t)
            })
            .collect())
    }
}

struct Bytes;

impl Vocabulary for Bytes {
    fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().filter(|&&i| i < 256).map(|&i| i as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
    fn token_text(&self, id: u32) -> String {
        self.decode(&[id])
    }
    fn stop_ids(&self) -> &[u32] {
        &[EOS]
    }
}

fn engine(model: Alphabet, max_batch_size: usize, max_queue: usize) -> Engine {
    let config = EngineConfig { max_batch_size, max_queue, ..EngineConfig::for_context(512) };
    Engine::start(model, Arc::new(Bytes), config).unwrap()
}

fn request(prompt: &str, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.bytes().map(u32::from).collect(),
        max_tokens,
        sampling: SamplingParams { temperature: 0.0, ..SamplingParams::default() },
        stop: Vec::new(),
        ignore_eos: false,
        deadline: Instant::now() + Duration::from_secs(30),
        constraint: None,
    }
}

/// Collects a request's events: (text, finish or error).
fn collect(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> (String, Result<Finished, EngineError>, Vec<GeneratedToken>) {
    let mut text = String::new();
    let mut tokens = Vec::new();
    while let Some(event) = rx.blocking_recv() {
        match event {
            Event::Token(t) => {
                text.push_str(&t.text);
                tokens.push(t);
            }
            Event::Done(f) => {
                text.push_str(&f.tail);
                return (text, Ok(f), tokens);
            }
            Event::Failed(e) => return (text, Err(e), tokens),
        }
    }
    panic!("the engine dropped a request without a final event");
}

#[test]
fn generates_until_end_of_sequence() {
    let engine = engine(Alphabet::new(Duration::ZERO), 4, 8);
    let (text, done, tokens) = collect(engine.submit(request("w", 100)).unwrap());
    let done = done.unwrap();
    assert_eq!(text, "xyz");
    assert_eq!(done.reason, FinishReason::Stop);
    assert_eq!(tokens.len(), 3, "EOS is not sent as a token");
    assert_eq!(done.prompt_tokens, 1);
    assert_eq!(done.completion_tokens, 4, "usage counts the EOS token");
}

#[test]
fn stops_at_max_tokens() {
    let engine = engine(Alphabet::new(Duration::ZERO), 4, 8);
    let (text, done, _) = collect(engine.submit(request("a", 5)).unwrap());
    assert_eq!(text, "bcdef");
    assert_eq!(done.unwrap().reason, FinishReason::Length);
}

#[test]
fn stop_sequences_end_generation_and_are_not_returned() {
    let engine = engine(Alphabet::new(Duration::ZERO), 4, 8);
    let mut r = request("a", 50);
    r.stop = vec!["fgh".into()];
    let (text, done, _) = collect(engine.submit(r).unwrap());
    assert_eq!(text, "bcde");
    assert_eq!(done.unwrap().reason, FinishReason::Stop);
}

#[test]
fn concurrent_requests_share_decode_steps() {
    let model = Alphabet::new(Duration::from_millis(3));
    let max_batch_seen = model.max_batch_seen.clone();
    let engine = engine(model, 8, 16);
    let receivers: Vec<_> = ["a", "e", "i", "m"].iter().map(|p| engine.submit(request(p, 10)).unwrap()).collect();
    let outputs: Vec<_> = receivers.into_iter().map(|rx| collect(rx).0).collect();
    assert_eq!(outputs, vec!["bcdefghijk", "fghijklmno", "jklmnopqrs", "nopqrstuvw"]);
    assert!(max_batch_seen.load(Ordering::Relaxed) >= 2, "requests should join one running batch");
    let stats = engine.stats();
    assert!(stats.decoded_sequences.load(Ordering::Relaxed) > stats.decode_steps.load(Ordering::Relaxed));
}

#[test]
fn a_full_queue_is_refused_at_once() {
    let engine = engine(Alphabet::new(Duration::from_millis(20)), 1, 1);
    let first = engine.submit(request("a", 20)).unwrap();
    // Wait until the first request is running, so the queue is empty again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.stats().running.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let _second = engine.submit(request("b", 20)).unwrap();
    let started = Instant::now();
    let third = engine.submit(request("c", 20));
    assert_eq!(third.err(), Some(EngineError::QueueFull { max_queue: 1 }));
    assert!(started.elapsed() < Duration::from_millis(50), "a full queue must answer immediately");
    drop(first);
}

#[test]
fn a_dropped_receiver_frees_its_slot() {
    let engine = engine(Alphabet::new(Duration::from_millis(5)), 1, 4);
    let first = engine.submit(request("a", 200)).unwrap();
    let second = engine.submit(request("k", 3)).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    drop(first);
    let (text, done, _) = collect(second);
    assert_eq!(text, "lmn");
    assert!(done.is_ok());
}

#[test]
fn requests_past_their_deadline_time_out() {
    let engine = engine(Alphabet::new(Duration::from_millis(5)), 4, 4);
    let mut r = request("a", 200);
    r.deadline = Instant::now() + Duration::from_millis(40);
    let (_, done, tokens) = collect(engine.submit(r).unwrap());
    assert_eq!(done.err(), Some(EngineError::Timeout));
    assert!(tokens.len() < 200);
}

#[test]
fn prompts_that_do_not_fit_the_context_are_refused_with_the_counts() {
    let engine = engine(Alphabet::new(Duration::ZERO), 4, 4);
    let err = engine.submit(request(&"a".repeat(500), 100)).err().unwrap();
    assert_eq!(err, EngineError::ContextExceeded { prompt: 500, max_tokens: 100, total: 600, context: 512 });
    assert!(err.to_string().contains("512") && err.to_string().contains("500"));
    assert_eq!(engine.submit(request("", 1)).err(), Some(EngineError::EmptyPrompt));
}

#[test]
fn logprobs_come_with_tokens_when_asked() {
    let engine = engine(Alphabet::new(Duration::ZERO), 4, 4);
    let mut r = request("a", 3);
    r.sampling.logprobs = true;
    r.sampling.top_logprobs = 2;
    let (_, _, tokens) = collect(engine.submit(r).unwrap());
    for t in tokens {
        let lp = t.logprob.expect("logprob");
        assert!(lp.logprob <= 0.0 && lp.logprob > -0.05, "the scripted model is confident: {}", lp.logprob);
        assert_eq!(lp.top.len(), 2);
        assert_eq!(lp.top[0].0, t.id);
    }
}

#[test]
fn abort_ends_running_requests_cleanly() {
    let engine = engine(Alphabet::new(Duration::from_millis(5)), 4, 4);
    let rx = engine.submit(request("a", 500)).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    engine.abort_all();
    let (_, done, _) = collect(rx);
    assert_eq!(done.err(), Some(EngineError::ShuttingDown));
    assert_eq!(engine.submit(request("a", 1)).err(), Some(EngineError::ShuttingDown));
}
