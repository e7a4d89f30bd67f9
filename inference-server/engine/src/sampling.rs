//! Turning logits into the next token: penalties, temperature, top-k, top-p, seeded
//! sampling or greedy argmax, and the log-probabilities the Cascade scores confidence with.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::constraint::TokenMask;

/// How a request wants its tokens chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability sums to this.
    pub top_p: f32,
    /// Keep only the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Seed for reproducible sampling; random when absent.
    pub seed: Option<u64>,
    /// llama.cpp-style repetition penalty over prompt and output (1 = off).
    pub repetition_penalty: f32,
    /// OpenAI frequency penalty: subtracted once per earlier occurrence in the output.
    pub frequency_penalty: f32,
    /// OpenAI presence penalty: subtracted once if the token occurred in the output.
    pub presence_penalty: f32,
    /// Return the chosen token's log-probability.
    pub logprobs: bool,
    /// Also return this many most likely alternatives per position (0–20).
    pub top_logprobs: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logprobs: false,
            top_logprobs: 0,
        }
    }
}

/// The log-probability of a chosen token and of the likeliest alternatives, from the
/// model's own distribution (before penalties and temperature), as OpenAI reports them.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// Natural-log probability of the chosen token (≤ 0).
    pub logprob: f32,
    /// The most likely tokens at this position with their log-probabilities, best first.
    pub top: Vec<(u32, f32)>,
}

/// Per-sequence sampling state (its random generator and output counts).
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// How often each token occurred in the output so far (for OpenAI penalties).
    output_counts: std::collections::HashMap<u32, u32>,
    scratch: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler for one sequence.
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self { params, rng, output_counts: Default::default(), scratch: Vec::new() }
    }

    /// The parameters in use.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Chooses the next token from `logits` (modified in place). `history` is the prompt
    /// plus the output so far (for the repetition penalty).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> (u32, Option<TokenLogprob>) {
        self.sample_within(logits, history, None)
    }

    /// [`sample`](Self::sample), choosing only among the tokens `mask` allows (a grammar's).
    pub fn sample_within(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
        mask: Option<&TokenMask>,
    ) -> (u32, Option<TokenLogprob>) {
        // Log-probabilities describe the model's own distribution, so they are read before
        // penalties, the grammar's mask and temperature change the logits.
        let wants_logprobs = self.params.logprobs || self.params.top_logprobs > 0;
        let raw = wants_logprobs.then(|| logits.to_vec());
        self.apply_penalties(logits, history);
        if let Some(mask) = mask {
            mask.apply(logits);
        }
        let token = if self.params.temperature <= 0.0 { argmax(logits) } else { self.sample_random(logits) };
        *self.output_counts.entry(token).or_insert(0) += 1;
        let logprob = raw.map(|raw| token_logprob(&raw, token, self.params.top_logprobs));
        (token, logprob)
    }

    fn apply_penalties(&self, logits: &mut [f32], history: &[u32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 && p.repetition_penalty > 0.0 {
            let mut seen = std::collections::HashSet::new();
            for &t in history {
                if seen.insert(t)
                    && let Some(l) = logits.get_mut(t as usize)
                {
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            for (&t, &count) in &self.output_counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.frequency_penalty * count as f32 + p.presence_penalty;
                }
            }
        }
    }

    fn sample_random(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let candidates = &mut self.scratch;
        candidates.clear();
        candidates.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l / p.temperature)));
        if p.top_k > 0 && p.top_k < candidates.len() {
            candidates.select_nth_unstable_by(p.top_k - 1, |a, b| b.1.total_cmp(&a.1));
            candidates.truncate(p.top_k);
        }
        let max = candidates.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        for c in candidates.iter_mut() {
            c.1 = (c.1 - max).exp();
        }
        if p.top_p < 1.0 {
            candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
            let total: f32 = candidates.iter().map(|c| c.1).sum();
            let mut cumulative = 0.0;
            let mut keep = candidates.len();
            for (i, c) in candidates.iter().enumerate() {
                cumulative += c.1 / total;
                if cumulative >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            candidates.truncate(keep.max(1));
        }
        let total: f32 = candidates.iter().map(|c| c.1).sum();
        let mut target = self.rng.random::<f32>() * total;
        for c in candidates.iter() {
            target -= c.1;
            if target <= 0.0 {
                return c.0;
            }
        }
        candidates.last().map_or(0, |c| c.0)
    }
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The log-probability of `token` under softmax(logits), and the `top` likeliest tokens.
pub fn token_logprob(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
    let to_logprob = |l: f32| (l - max - log_sum).min(0.0);
    let mut best: Vec<(u32, f32)> = Vec::new();
    if top > 0 {
        let mut indexed: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        let n = top.min(indexed.len());
        if n > 0 {
            indexed.select_nth_unstable_by(n - 1, |a, b| b.1.total_cmp(&a.1));
            indexed.truncate(n);
            indexed.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        }
        best = indexed.into_iter().map(|(i, l)| (i, to_logprob(l))).collect();
    }
    let chosen = logits.get(token as usize).copied().unwrap_or(f32::NEG_INFINITY);
    TokenLogprob { logprob: to_logprob(chosen), top: best }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams { temperature, seed: Some(7), ..SamplingParams::default() }
    }

    #[test]
    fn temperature_zero_is_greedy() {
        let mut s = Sampler::new(params(0.0));
        let mut logits = vec![0.1, 2.0, 1.9, -1.0];
        assert_eq!(s.sample(&mut logits, &[]).0, 1);
    }

    #[test]
    fn logprobs_are_normalised_and_read_before_penalties() {
        let mut s =
            Sampler::new(SamplingParams { logprobs: true, top_logprobs: 2, repetition_penalty: 100.0, ..params(0.0) });
        let raw = vec![1.0f32, 3.0, 2.0];
        let mut logits = raw.clone();
        // The penalty pushes token 1 down, so token 2 is chosen, but its logprob is the raw one.
        let (token, lp) = s.sample(&mut logits, &[1]);
        let lp = lp.unwrap();
        assert_eq!(token, 2);
        let z: f32 = raw.iter().map(|l| l.exp()).sum();
        assert!((lp.logprob - (2.0f32.exp() / z).ln()).abs() < 1e-5);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        let sum: f32 = (0..3).map(|t| token_logprob(&raw, t, 0).logprob.exp()).sum();
        assert!((sum - 1.0).abs() < 1e-5);
    }

    #[test]
    fn a_seed_makes_sampling_reproducible() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = || {
            let mut s = Sampler::new(params(1.0));
            (0..20).map(|_| s.sample(&mut logits.clone(), &[]).0).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
        assert!(run().iter().collect::<std::collections::HashSet<_>>().len() > 1, "temperature 1 should vary");
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = vec![0.5f32, 0.2, 0.9, 0.1];
        let mut k1 = Sampler::new(SamplingParams { top_k: 1, ..params(1.0) });
        let mut p0 = Sampler::new(SamplingParams { top_p: 0.01, ..params(1.0) });
        for _ in 0..20 {
            assert_eq!(k1.sample(&mut logits.clone(), &[]).0, 2);
            assert_eq!(p0.sample(&mut logits.clone(), &[]).0, 2);
        }
    }

    #[test]
    fn frequency_and_presence_penalties_discourage_repeats() {
        let mut s = Sampler::new(SamplingParams { presence_penalty: 2.0, ..params(0.0) });
        let logits = vec![1.0f32, 0.5];
        assert_eq!(s.sample(&mut logits.clone(), &[]).0, 0);
        // Token 0 is now present in the output: 1.0 - 2.0 < 0.5.
        assert_eq!(s.sample(&mut logits.clone(), &[]).0, 1);
    }
}
