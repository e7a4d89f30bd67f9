//! Prometheus metrics of the server. Label values are bounded: routes are fixed, models are
//! the served names, statuses are HTTP codes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The API route, e.g. `/v1/chat/completions`.
    pub route: String,
    /// The served model name.
    pub model: String,
    /// HTTP status code.
    pub status: u16,
}

/// Labels of per-model series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// The served model name.
    pub model: String,
}

/// Labels of per-tenant series (tenants are configured, so the values are bounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    /// The tenant's name.
    pub tenant: String,
    /// The model.
    pub model: String,
    /// `admitted`, or the limit that refused the request (`requestsPerMinute`, `tokensPerMinute`).
    pub outcome: String,
}

/// Labels of per-tenant token counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantModelLabels {
    /// The tenant's name.
    pub tenant: String,
    /// The model.
    pub model: String,
}

type Histograms = Family<ModelLabels, Histogram, fn() -> Histogram>;

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by route, model and status.
    pub requests: Family<RequestLabels, Counter>,
    /// End-to-end request duration.
    pub request_duration: Histograms,
    /// Time from arrival to the first generated token.
    pub time_to_first_token: Histograms,
    /// Time between consecutive generated tokens of one stream.
    pub inter_token_latency: Histograms,
    /// Prompt tokens processed.
    pub prompt_tokens: Family<ModelLabels, Counter>,
    /// Tokens generated.
    pub generated_tokens: Family<ModelLabels, Counter>,
    /// Requests waiting for a batch slot.
    pub queue_depth: Family<ModelLabels, Gauge>,
    /// Requests being served (queued or running), what the autoscaler targets.
    pub inflight_requests: Family<ModelLabels, Gauge>,
    /// Sequences in the running batch.
    pub batch_size: Family<ModelLabels, Gauge>,
    /// Tenants' requests, admitted or refused by a limit.
    pub tenant_requests: Family<TenantLabels, Counter>,
    /// Tokens (prompt plus generated) charged to tenants.
    pub tenant_tokens: Family<TenantModelLabels, Counter>,
    /// The cascade router's metrics.
    pub cascade: hearth_cascade::metrics::CascadeMetrics,
    /// The agents' metrics.
    pub agent: hearth_agent::metrics::AgentMetrics,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Histograms::new_with_constructor(latency_histogram as fn() -> Histogram);
        let time_to_first_token = Histograms::new_with_constructor(latency_histogram as fn() -> Histogram);
        let inter_token_latency = Histograms::new_with_constructor(latency_histogram as fn() -> Histogram);
        let prompt_tokens = Family::<ModelLabels, Counter>::default();
        let generated_tokens = Family::<ModelLabels, Counter>::default();
        let queue_depth = Family::<ModelLabels, Gauge>::default();
        let inflight_requests = Family::<ModelLabels, Gauge>::default();
        let batch_size = Family::<ModelLabels, Gauge>::default();
        registry.register("hearth_server_requests", "Requests by route, model and HTTP status", requests.clone());
        registry.register(
            "hearth_server_request_duration_seconds",
            "End-to-end request duration",
            request_duration.clone(),
        );
        registry.register(
            "hearth_server_time_to_first_token_seconds",
            "Time from arrival to the first generated token",
            time_to_first_token.clone(),
        );
        registry.register(
            "hearth_server_inter_token_latency_seconds",
            "Time between consecutive generated tokens of a stream",
            inter_token_latency.clone(),
        );
        registry.register("hearth_server_prompt_tokens", "Prompt tokens processed", prompt_tokens.clone());
        registry.register("hearth_server_generated_tokens", "Tokens generated", generated_tokens.clone());
        registry.register("hearth_server_queue_depth", "Requests waiting for a batch slot", queue_depth.clone());
        registry.register(
            "hearth_server_inflight_requests",
            "Requests being served, queued or running",
            inflight_requests.clone(),
        );
        registry.register("hearth_server_batch_size", "Sequences in the running batch", batch_size.clone());
        let tenant_requests = Family::<TenantLabels, Counter>::default();
        let tenant_tokens = Family::<TenantModelLabels, Counter>::default();
        registry.register(
            "hearth_server_tenant_requests",
            "Tenants' requests, admitted or refused by a limit",
            tenant_requests.clone(),
        );
        registry.register("hearth_server_tenant_tokens", "Tokens charged to tenants", tenant_tokens.clone());
        let cascade = hearth_cascade::metrics::CascadeMetrics::register(&mut registry);
        let agent = hearth_agent::metrics::AgentMetrics::register(&mut registry);
        Self {
            registry,
            requests,
            request_duration,
            time_to_first_token,
            inter_token_latency,
            prompt_tokens,
            generated_tokens,
            queue_depth,
            inflight_requests,
            batch_size,
            tenant_requests,
            tenant_tokens,
            cascade,
            agent,
        }
    }
}

impl Metrics {
    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Labels for one model.
    pub fn model(name: &str) -> ModelLabels {
        ModelLabels { model: name.to_owned() }
    }
}
