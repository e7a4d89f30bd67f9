//! Fault injection, switchable per test at run time: error statuses, delays, dropped watches,
//! and clients that crash after an exact number of writes.

use crate::error::ApiError;
use crate::journal::Verb;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// A fault for matching requests: an HTTP error status and/or a delay, applied a number of
/// times and/or with a probability drawn from the seeded generator (see [`Faults::seed`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fault {
    verb: Option<Verb>,
    resource: Option<String>,
    client: Option<String>,
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

    /// After the delay, answer with this HTTP status, as a gateway that gave up would (504).
    pub fn then_status(mut self, code: u16) -> Self {
        self.status = Some(code);
        self
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

    /// Only requests from this client ([`crate::FakeApiServer::client_named`]).
    pub fn from_client(mut self, client: &str) -> Self {
        self.client = Some(client.to_string());
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

    /// What the fault does, as [`Faults::fired_by_kind`] counts it: `409`, `delay 3s`,
    /// `delay 300ms then 504`.
    pub fn kind(&self) -> String {
        match (self.delay, self.status) {
            (Some(delay), Some(code)) => format!("delay {delay:?} then {code}"),
            (Some(delay), None) => format!("delay {delay:?}"),
            (None, Some(code)) => code.to_string(),
            (None, None) => "nothing".to_string(),
        }
    }
}

/// One client's writes and crash plan.
#[derive(Debug, Default)]
struct Client {
    /// Writes accepted from it since the server started.
    writes: u64,
    /// The write count at which it crashes, when armed.
    crash_at: Option<u64>,
}

struct Rules {
    faults: Vec<Fault>,
    rng: StdRng,
    fired: BTreeMap<String, u64>,
    clients: BTreeMap<String, Client>,
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
    /// The clients that are crashed now.
    crashed: Arc<watch::Sender<BTreeSet<String>>>,
}

impl Faults {
    pub(crate) fn new() -> Self {
        let rules = Rules {
            faults: Vec::new(),
            rng: StdRng::seed_from_u64(0),
            fired: BTreeMap::new(),
            clients: BTreeMap::new(),
        };
        Self {
            rules: Arc::new(Mutex::new(rules)),
            close_watches: Arc::new(watch::channel(0).0),
            crashed: Arc::new(watch::channel(BTreeSet::new()).0),
        }
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

    /// A receiver of the set of crashed clients, for watches to end when theirs crashes.
    pub(crate) fn crash_watcher(&self) -> watch::Receiver<BTreeSet<String>> {
        self.crashed.subscribe()
    }

    /// Crashes `client` once it has made `writes` more accepted writes (creates, updates,
    /// patches and deletes, no-op writes included), counted from this call; `0` crashes it now.
    ///
    /// The crash happens as the last of those writes is committed, before its response is sent:
    /// from then on every request from the client (a write in flight included) fails with 500
    /// and its open watches close, as if the process had died, until [`Faults::revive`].
    pub fn crash_after_writes(&self, client: &str, writes: u64) {
        let mut rules = self.lock();
        let state = rules.clients.entry(client.to_string()).or_default();
        state.crash_at = Some(state.writes + writes);
        drop(rules);
        if writes == 0 {
            self.crash(client);
        }
    }

    /// Lets a crashed client be served again (as its restarted process) and disarms its crash.
    pub fn revive(&self, client: &str) {
        self.lock().clients.entry(client.to_string()).or_default().crash_at = None;
        self.crashed.send_if_modified(|crashed| crashed.remove(client));
    }

    /// Whether `client` is crashed now.
    pub fn is_crashed(&self, client: &str) -> bool {
        self.crashed.borrow().contains(client)
    }

    /// Waits until `client` is crashed (returns at once when it is).
    pub async fn crashed(&self, client: &str) {
        let mut crashed = self.crashed.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = crashed.wait_for(|crashed| crashed.contains(client)).await;
    }

    /// How many writes the server accepted from `client` (no-op writes included).
    pub fn writes_from(&self, client: &str) -> u64 {
        self.lock().clients.get(client).map_or(0, |c| c.writes)
    }

    /// How many times injected faults fired (a delay and a status of one fault count once);
    /// requests refused because their client crashed are not counted.
    pub fn fired(&self) -> u64 {
        self.lock().fired.values().sum()
    }

    /// How many times injected faults fired, by [`Fault::kind`].
    pub fn fired_by_kind(&self) -> BTreeMap<String, u64> {
        self.lock().fired.clone()
    }

    fn crash(&self, client: &str) {
        self.crashed.send_if_modified(|crashed| crashed.insert(client.to_string()));
    }

    fn crashed_error(client: &str) -> ApiError {
        ApiError::new(500, "InternalError", format!("client {client} crashed (injected fault)"))
    }

    /// Refuses a write from a crashed client (one that passed [`Faults::decide`] before the crash).
    pub(crate) fn admit_write(&self, client: Option<&str>) -> Result<(), ApiError> {
        match client {
            Some(client) if self.is_crashed(client) => Err(Self::crashed_error(client)),
            _ => Ok(()),
        }
    }

    /// Counts a committed write from `client`, crashing it when that was its last one.
    pub(crate) fn wrote(&self, client: Option<&str>) {
        let Some(client) = client else { return };
        let mut rules = self.lock();
        let state = rules.clients.entry(client.to_string()).or_default();
        state.writes += 1;
        let crash = state.crash_at.is_some_and(|at| state.writes >= at);
        drop(rules);
        if crash {
            self.crash(client);
        }
    }

    pub(crate) fn decide(&self, verb: Verb, resource: &str, client: Option<&str>) -> Decision {
        if let Some(client) = client.filter(|c| self.is_crashed(c)) {
            return Decision { delay: None, error: Some(Self::crashed_error(client)) };
        }
        let mut rules = self.lock();
        let Rules { faults, rng, fired, .. } = &mut *rules;
        let mut decision = Decision::default();
        for fault in faults.iter_mut() {
            let matches = fault.verb.is_none_or(|v| v == verb)
                && fault.resource.as_deref().is_none_or(|r| r == resource)
                && fault.client.as_deref().is_none_or(|c| Some(c) == client)
                && fault.times != Some(0);
            if !matches || fault.probability.is_some_and(|p| !rng.random_bool(p.clamp(0.0, 1.0))) {
                continue;
            }
            if let Some(times) = fault.times.as_mut() {
                *times -= 1;
            }
            *fired.entry(fault.kind()).or_default() += 1;
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
        assert!(faults.decide(Verb::Get, "configmaps", None).error.is_none());
        assert!(faults.decide(Verb::Create, "secrets", None).error.is_none());
        assert_eq!(faults.decide(Verb::Create, "configmaps", None).error.map(|e| e.code), Some(500));
        assert!(faults.decide(Verb::Create, "configmaps", None).error.is_none());
        assert_eq!(faults.fired(), 1);
    }

    #[test]
    fn client_faults_hit_only_that_client_and_are_counted_by_kind() {
        let faults = Faults::new();
        faults.inject(Fault::status(409).from_client("operator"));
        faults.inject(Fault::delay(Duration::from_millis(1)).then_status(504).from_client("other"));
        assert!(faults.decide(Verb::Patch, "x", None).error.is_none());
        assert_eq!(faults.decide(Verb::Patch, "x", Some("operator")).error.map(|e| e.code), Some(409));
        let other = faults.decide(Verb::Patch, "x", Some("other"));
        assert_eq!((other.delay, other.error.map(|e| e.code)), (Some(Duration::from_millis(1)), Some(504)));
        let kinds = BTreeMap::from([("409".to_string(), 1), ("delay 1ms then 504".to_string(), 1)]);
        assert_eq!(faults.fired_by_kind(), kinds);
    }

    #[test]
    fn a_client_crashes_exactly_after_its_nth_write_until_revived() {
        let faults = Faults::new();
        faults.wrote(Some("operator"));
        faults.crash_after_writes("operator", 2);
        faults.wrote(Some("operator"));
        faults.wrote(None);
        faults.wrote(Some("cluster"));
        assert!(!faults.is_crashed("operator"));
        assert!(faults.admit_write(Some("operator")).is_ok());
        faults.wrote(Some("operator"));
        assert!(faults.is_crashed("operator"));
        assert_eq!(faults.writes_from("operator"), 3);
        assert_eq!(faults.decide(Verb::Get, "x", Some("operator")).error.map(|e| e.code), Some(500));
        assert_eq!(faults.admit_write(Some("operator")).map_err(|e| e.code), Err(500));
        assert!(faults.decide(Verb::Get, "x", Some("cluster")).error.is_none());
        assert_eq!(faults.fired(), 0, "refusals of a crashed client are not injected faults");
        faults.revive("operator");
        assert!(!faults.is_crashed("operator"));
        faults.wrote(Some("operator"));
        assert!(!faults.is_crashed("operator"), "reviving disarms the crash");
        faults.crash_after_writes("operator", 0);
        assert!(faults.is_crashed("operator"));
    }

    #[test]
    fn seeded_probability_repeats() {
        let run = || {
            let faults = Faults::new();
            faults.seed(7);
            faults.inject(Fault::status(429).retry_after(1).probability(0.5));
            (0..32).map(|_| faults.decide(Verb::Get, "x", None).error.is_some()).collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run());
        assert!(first.contains(&true) && first.contains(&false));
    }
}
