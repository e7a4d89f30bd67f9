//! Fault injection, switchable per test at run time: error statuses, delays and dropped watches.

use crate::error::ApiError;
use crate::journal::Verb;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// A fault for matching requests: an HTTP error status and/or a delay, applied a number of
/// times and/or with a probability drawn from the seeded generator (see [`Faults::seed`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fault {
    verb: Option<Verb>,
    resource: Option<String>,
    status: Option<u16>,
    retry_after_seconds: Option<u64>,
    delay: Option<Duration>,
    times: Option<u32>,
    probability: Option<f64>,
}

impl Fault {
    /// Answer matching requests with this HTTP status (e.g. 409, 429, 500) and a `Status` body.
    pub fn status(code: u16) -> Self {
        Self { status: Some(code), ..Self::default() }
    }

    /// Hold matching requests for this long before serving them (or failing them, when the
    /// fault also has a status).
    pub fn delay(delay: Duration) -> Self {
        Self { delay: Some(delay), ..Self::default() }
    }

    /// Only requests with this verb.
    pub fn on(mut self, verb: Verb) -> Self {
        self.verb = Some(verb);
        self
    }

    /// Only requests for this resource (plural name, e.g. `deployments`).
    pub fn on_resource(mut self, plural: &str) -> Self {
        self.resource = Some(plural.to_string());
        self
    }

    /// Send `Retry-After: seconds` (and `details.retryAfterSeconds`) with the status.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_seconds = Some(seconds);
        self
    }

    /// Fire for the next `n` matching requests only, then never again.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    /// Fire for each matching request with this probability (0.0 to 1.0).
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = Some(p);
        self
    }
}

struct Rules {
    faults: Vec<Fault>,
    rng: StdRng,
}

/// What the faults decided for one request.
#[derive(Debug, Default)]
pub(crate) struct Decision {
    pub(crate) delay: Option<Duration>,
    pub(crate) error: Option<ApiError>,
}

/// The handle that switches faults on and off while a test runs ([`crate::FakeApiServer::faults`]).
#[derive(Clone)]
pub struct Faults {
    rules: Arc<Mutex<Rules>>,
    close_watches: Arc<watch::Sender<u64>>,
}

impl Faults {
    pub(crate) fn new() -> Self {
        let rules = Rules { faults: Vec::new(), rng: StdRng::seed_from_u64(0) };
        Self { rules: Arc::new(Mutex::new(rules)), close_watches: Arc::new(watch::channel(0).0) }
    }

    /// Adds a fault; faults are checked in the order they were injected.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.lock().faults.clear();
    }

    /// Reseeds the generator behind probabilistic faults (the server starts with seed 0), so
    /// the same requests in the same order fail the same way.
    pub fn seed(&self, seed: u64) {
        self.lock().rng = StdRng::seed_from_u64(seed);
    }

    /// Closes every open watch stream now, as an API server restart or a load balancer would;
    /// clients see the stream end and watch again.
    pub fn drop_watches(&self) {
        self.close_watches.send_modify(|epoch| *epoch += 1);
    }

    /// A receiver that changes whenever watches are to be closed.
    pub(crate) fn watch_closer(&self) -> watch::Receiver<u64> {
        self.close_watches.subscribe()
    }

    pub(crate) fn decide(&self, verb: Verb, resource: &str) -> Decision {
        let mut rules = self.lock();
        let Rules { faults, rng } = &mut *rules;
        let mut decision = Decision::default();
        for fault in faults.iter_mut() {
            let matches = fault.verb.is_none_or(|v| v == verb)
                && fault.resource.as_deref().is_none_or(|r| r == resource)
                && fault.times != Some(0);
            if !matches || fault.probability.is_some_and(|p| !rng.random_bool(p.clamp(0.0, 1.0))) {
                continue;
            }
            if let Some(times) = fault.times.as_mut() {
                *times -= 1;
            }
            if let Some(delay) = fault.delay {
                decision.delay = Some(decision.delay.unwrap_or_default() + delay);
            }
            if let Some(code) = fault.status {
                let mut error = ApiError::for_code(code);
                error.retry_after_seconds = fault.retry_after_seconds;
                decision.error = Some(error);
                break;
            }
        }
        decision
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_fault_fires_then_stops_and_filters_by_verb_and_resource() {
        let faults = Faults::new();
        faults.inject(Fault::status(500).on(Verb::Create).on_resource("configmaps").times(1));
        assert!(faults.decide(Verb::Get, "configmaps").error.is_none());
        assert!(faults.decide(Verb::Create, "secrets").error.is_none());
        assert_eq!(faults.decide(Verb::Create, "configmaps").error.map(|e| e.code), Some(500));
        assert!(faults.decide(Verb::Create, "configmaps").error.is_none());
    }

    #[test]
    fn seeded_probability_repeats() {
        let run = || {
            let faults = Faults::new();
            faults.seed(7);
            faults.inject(Fault::status(429).retry_after(1).probability(0.5));
            (0..32).map(|_| faults.decide(Verb::Get, "x").error.is_some()).collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run());
        assert!(first.contains(&true) && first.contains(&false));
    }
}
