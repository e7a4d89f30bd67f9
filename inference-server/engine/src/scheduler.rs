//! The worker loop: admit waiting requests between decode steps, prefill them, then run one
//! batched decode step for every running sequence.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use super::constraint::{Constraint, TokenMask};
use super::sampling::Sampler;
use super::stop::{Detokenizer, StopMatcher, StopOutcome};
use super::{Admission, EngineConfig, EngineError, EngineStats, Event, FinishReason, Finished, GeneratedToken};
use hearth_model::{CausalLm, Vocabulary};

struct Sequence<C> {
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    prompt_len: usize,
    max_tokens: usize,
    reserved_tokens: usize,
    /// Prompt followed by the output so far.
    tokens: Vec<u32>,
    cache: C,
    sampler: Sampler,
    detokenizer: Detokenizer,
    stop: StopMatcher,
    ignore_eos: bool,
    deadline: Instant,
    queue_seconds: f64,
    /// The grammar the output follows, if any.
    constraint: Option<Constraint>,
    /// The grammar's mask for the next token, computed while the model runs.
    mask: Option<TokenMask>,
}

impl<C> Sequence<C> {
    fn generated(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }
}

/// Whether a sequence goes on after a token.
enum Step {
    Continue,
    Finished,
}

pub(crate) struct Worker<M: CausalLm> {
    model: M,
    vocab: Arc<dyn Vocabulary>,
    config: EngineConfig,
    rx: Receiver<Admission>,
    stats: Arc<EngineStats>,
    abort: Arc<AtomicBool>,
    running: Vec<Sequence<M::Cache>>,
    /// Taken from the queue but not yet admitted (token budget full).
    deferred: VecDeque<Admission>,
    reserved_tokens: usize,
    queue_closed: bool,
}

impl<M: CausalLm> Worker<M> {
    pub(crate) fn new(
        model: M,
        vocab: Arc<dyn Vocabulary>,
        config: EngineConfig,
        rx: Receiver<Admission>,
        stats: Arc<EngineStats>,
        abort: Arc<AtomicBool>,
    ) -> Self {
        Self {
            model,
            vocab,
            config,
            rx,
            stats,
            abort,
            running: Vec::new(),
            deferred: VecDeque::new(),
            reserved_tokens: 0,
            queue_closed: false,
        }
    }

    pub(crate) fn run(mut self) {
        loop {
            if self.abort.load(Ordering::Relaxed) {
                self.fail_everything(EngineError::ShuttingDown);
            }
            self.admit();
            if self.running.is_empty() {
                if self.queue_closed && self.deferred.is_empty() {
                    return;
                }
                continue;
            }
            self.decode_step();
        }
    }

    /// Moves requests into the running batch while there is room.
    fn admit(&mut self) {
        while self.running.len() < self.config.max_batch_size.max(1) {
            let admission = match self.deferred.pop_front() {
                Some(a) => a,
                None if self.queue_closed => return,
                None if self.running.is_empty() => match self.rx.recv() {
                    Ok(a) => a,
                    Err(_) => {
                        self.queue_closed = true;
                        return;
                    }
                },
                None => match self.rx.try_recv() {
                    Ok(a) => a,
                    Err(TryRecvError::Empty) => return,
                    Err(TryRecvError::Disconnected) => {
                        self.queue_closed = true;
                        return;
                    }
                },
            };
            let needed = admission.request.prompt.len() + admission.request.max_tokens;
            if !self.running.is_empty() && self.reserved_tokens + needed > self.config.max_batch_tokens {
                self.deferred.push_front(admission);
                return;
            }
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            self.start_sequence(admission);
        }
    }

    fn start_sequence(&mut self, admission: Admission) {
        let Admission { request, events, enqueued } = admission;
        if events.is_closed() {
            return; // the client left while waiting
        }
        if self.abort.load(Ordering::Relaxed) {
            let _ = events.send(Event::Failed(EngineError::ShuttingDown));
            return;
        }
        if Instant::now() >= request.deadline {
            let _ = events.send(Event::Failed(EngineError::Timeout));
            return;
        }
        let mut cache = self.model.new_cache();
        let mut constraint = request.constraint;
        // The first mask needs no logits: compute it while the prompt runs (when cores are free).
        let overlap = self.config.overlap_grammar;
        let (prefilled, mask) = std::thread::scope(|scope| {
            let mask = constraint.as_mut().map(|c| {
                if overlap { MaskJob::Running(scope.spawn(move || c.mask())) } else { MaskJob::Done(c.mask()) }
            });
            let mut logits = Ok(Vec::new());
            for chunk in request.prompt.chunks(self.config.prefill_chunk.max(1)) {
                logits = self.model.prefill(chunk, &mut cache);
                if logits.is_err() {
                    break;
                }
            }
            (logits, mask.map(MaskJob::finish))
        });
        let mut logits = match prefilled {
            Ok(logits) => logits,
            Err(e) => {
                let _ = events.send(Event::Failed(EngineError::Backend(e.to_string())));
                return;
            }
        };
        let mask = match mask.transpose() {
            Ok(mask) => mask,
            Err(e) => {
                let _ = events.send(Event::Failed(e));
                return;
            }
        };
        let reserved = request.prompt.len() + request.max_tokens;
        let mut sequence = Sequence {
            events,
            prompt_len: request.prompt.len(),
            max_tokens: request.max_tokens,
            reserved_tokens: reserved,
            tokens: request.prompt,
            cache,
            sampler: Sampler::new(request.sampling),
            detokenizer: Detokenizer::default(),
            stop: StopMatcher::new(&request.stop),
            ignore_eos: request.ignore_eos,
            deadline: request.deadline,
            queue_seconds: enqueued.elapsed().as_secs_f64(),
            constraint,
            mask,
        };
        if let Step::Continue = self.accept_logits(&mut sequence, &mut logits) {
            self.reserved_tokens += reserved;
            self.running.push(sequence);
            self.stats.running.store(self.running.len(), Ordering::Relaxed);
        }
    }

    /// One batched decode step over the running sequences.
    fn decode_step(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.running.len() {
            let s = &self.running[i];
            if s.events.is_closed() {
                self.remove(i);
            } else if now >= s.deadline {
                let _ = s.events.send(Event::Failed(EngineError::Timeout));
                self.remove(i);
            } else {
                i += 1;
            }
        }
        if self.running.is_empty() {
            return;
        }
        let inputs: Vec<u32> = self.running.iter().map(|s| *s.tokens.last().unwrap_or(&0)).collect();
        let (result, masks) = {
            let mut caches = Vec::with_capacity(self.running.len());
            let mut constraints = Vec::new();
            for (i, s) in self.running.iter_mut().enumerate() {
                caches.push(&mut s.cache);
                if let Some(c) = s.constraint.as_mut() {
                    constraints.push((i, c));
                }
            }
            let model = &self.model;
            let overlap = self.config.overlap_grammar && !constraints.is_empty();
            let stats = &self.stats;
            let masks_of = move || {
                let started = Instant::now();
                let masks = constraints.into_iter().map(|(i, c)| (i, c.mask())).collect::<Vec<_>>();
                stats.grammar_masks.fetch_add(masks.len() as u64, Ordering::Relaxed);
                stats.grammar_mask_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                masks
            };
            if overlap {
                // Grammar masks depend only on tokens already chosen: compute them while the
                // forward pass runs.
                std::thread::scope(|scope| {
                    let masks = scope.spawn(masks_of);
                    let result = model.decode(&inputs, &mut caches);
                    (result, masks.join().unwrap_or_default())
                })
            } else {
                let masks = masks_of();
                (model.decode(&inputs, &mut caches), masks)
            }
        };
        for (i, mask) in masks {
            match mask {
                Ok(mask) => self.running[i].mask = Some(mask),
                Err(e) => {
                    let _ = self.running[i].events.send(Event::Failed(EngineError::Backend(format!("grammar: {e}"))));
                }
            }
        }
        self.stats.decode_steps.fetch_add(1, Ordering::Relaxed);
        self.stats.decoded_sequences.fetch_add(inputs.len() as u64, Ordering::Relaxed);
        match result {
            Ok(mut all_logits) => {
                let mut finished = Vec::new();
                let mut sequences = std::mem::take(&mut self.running);
                for (idx, (sequence, logits)) in sequences.iter_mut().zip(all_logits.iter_mut()).enumerate() {
                    // A constrained sequence without a mask failed computing it (and was told).
                    if sequence.constraint.is_some() && sequence.mask.is_none() {
                        finished.push(idx);
                        continue;
                    }
                    if let Step::Finished = self.accept_logits(sequence, logits) {
                        finished.push(idx);
                    }
                }
                self.running = sequences;
                for idx in finished.into_iter().rev() {
                    self.remove(idx);
                }
            }
            Err(e) => {
                let error = EngineError::Backend(e.to_string());
                for s in self.running.drain(..) {
                    let _ = s.events.send(Event::Failed(error.clone()));
                }
                self.reserved_tokens = 0;
            }
        }
        self.stats.running.store(self.running.len(), Ordering::Relaxed);
    }

    /// Samples the next token from `logits`, sends it, and decides whether the sequence ends.
    fn accept_logits(&self, s: &mut Sequence<M::Cache>, logits: &mut [f32]) -> Step {
        let mask = s.mask.take();
        let (token, logprob) = s.sampler.sample_within(logits, &s.tokens, mask.as_ref());
        let is_stop_id = !s.ignore_eos && self.vocab.stop_ids().contains(&token);
        let mut finish = None;
        let mut grammar_done = false;
        if let Some(constraint) = s.constraint.as_mut() {
            if let Err(e) = constraint.accept(token) {
                let _ = s.events.send(Event::Failed(EngineError::Backend(format!("grammar: {e}"))));
                return Step::Finished;
            }
            grammar_done = !is_stop_id && constraint.is_finished();
        }
        let text = if is_stop_id {
            finish = Some(FinishReason::Stop);
            String::new()
        } else {
            s.tokens.push(token);
            let decoded = self.detokenize(s);
            match s.stop.push(&decoded) {
                StopOutcome::Emit(text) => text,
                StopOutcome::Stopped(text) => {
                    finish = Some(FinishReason::Stop);
                    text
                }
            }
        };
        // A finished grammar ends the output and releases what the detokenizer held back, like a
        // stop token does; a stop sequence that matched first keeps its own ending (no tail).
        let grammar_done = grammar_done && finish.is_none();
        if grammar_done {
            finish = Some(FinishReason::Stop);
        }
        let generated = s.generated().len() + usize::from(is_stop_id);
        if finish.is_none() && (generated >= s.max_tokens || s.tokens.len() >= self.config.context_length) {
            finish = Some(FinishReason::Length);
        }
        // An end-of-sequence token is not part of the answer: it ends it.
        if !is_stop_id && s.events.send(Event::Token(GeneratedToken { id: token, text, logprob })).is_err() {
            return Step::Finished;
        }
        match finish {
            None => Step::Continue,
            Some(reason) => {
                let tail = if reason == FinishReason::Length || is_stop_id || grammar_done {
                    let rest = s.detokenizer.finish(self.vocab.as_ref(), &s.tokens[s.prompt_len..]);
                    match s.stop.push(&rest) {
                        StopOutcome::Emit(text) => text + &s.stop.flush(),
                        StopOutcome::Stopped(text) => text,
                    }
                } else {
                    String::new()
                };
                let _ = s.events.send(Event::Done(Finished {
                    reason,
                    prompt_tokens: s.prompt_len,
                    completion_tokens: generated,
                    tail,
                    queue_seconds: s.queue_seconds,
                }));
                Step::Finished
            }
        }
    }

    fn detokenize(&self, s: &mut Sequence<M::Cache>) -> String {
        let generated = &s.tokens[s.prompt_len..];
        s.detokenizer.next(self.vocab.as_ref(), generated)
    }

    fn remove(&mut self, index: usize) {
        let s = self.running.swap_remove(index);
        self.reserved_tokens = self.reserved_tokens.saturating_sub(s.reserved_tokens);
    }

    fn fail_everything(&mut self, error: EngineError) {
        for s in self.running.drain(..) {
            let _ = s.events.send(Event::Failed(error.clone()));
        }
        self.reserved_tokens = 0;
        for a in self.deferred.drain(..) {
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            let _ = a.events.send(Event::Failed(error.clone()));
        }
        while let Ok(a) = self.rx.try_recv() {
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            let _ = a.events.send(Event::Failed(error.clone()));
        }
        self.stats.running.store(0, Ordering::Relaxed);
    }
}

/// A sequence's first mask: computed on a scoped thread beside the prefill, or already done.
enum MaskJob<'scope> {
    Running(std::thread::ScopedJoinHandle<'scope, Result<TokenMask, String>>),
    Done(Result<TokenMask, String>),
}

impl MaskJob<'_> {
    /// The mask, or why there is none (a panic on the thread fails the sequence).
    fn finish(self) -> Result<TokenMask, EngineError> {
        let result = match self {
            Self::Running(handle) => handle.join().unwrap_or_else(|_| Err("the mask computation panicked".to_owned())),
            Self::Done(result) => result,
        };
        result.map_err(|e| EngineError::Backend(format!("grammar: {e}")))
    }
}
