//! The cascade's Prometheus metrics. Labels are bounded: cascades and stages come from the
//! configuration, failure reasons from a fixed list.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets, linear_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-cascade series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CascadeLabels {
    /// The Cascade's name.
    pub cascade: String,
}

/// Labels of per-stage series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// The Cascade's name.
    pub cascade: String,
    /// The stage's Model.
    pub stage: String,
}

/// Labels of stage failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The Cascade's name.
    pub cascade: String,
    /// The stage's Model.
    pub stage: String,
    /// timeout, unreachable, overloaded, upstream_error, context_length or bad_response.
    pub reason: &'static str,
}

/// Labels of token counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// The Cascade's name.
    pub cascade: String,
    /// The stage's Model.
    pub stage: String,
    /// prompt or completion.
    pub kind: &'static str,
}

type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Every cascade metric.
#[derive(Clone)]
pub struct CascadeMetrics {
    /// Requests received by a cascade.
    pub requests: Family<CascadeLabels, Counter>,
    /// Answers rejected for low confidence, by the stage that gave them.
    pub escalations: Family<StageLabels, Counter>,
    /// Answers returned, by the stage that gave them.
    pub answers: Family<StageLabels, Counter>,
    /// Stage calls that failed, by reason; the request moved on to the next stage.
    pub failures: Family<FailureLabels, Counter>,
    /// Requests no stage could answer (503).
    pub exhausted: Family<CascadeLabels, Counter>,
    /// Confidence of each stage's answers.
    pub confidence: Family<StageLabels, Histogram, fn() -> Histogram>,
    /// Time a stage took to answer (the whole answer, or until the stream ended).
    pub stage_latency: Family<StageLabels, Histogram, fn() -> Histogram>,
    /// Tokens each stage used.
    pub tokens: Family<TokenLabels, Counter>,
    /// Cost of every stage call, at the Models' configured prices.
    pub cost: Family<CascadeLabels, FloatCounter>,
    /// What always asking the last stage would have cost for the same requests.
    pub baseline_cost: Family<CascadeLabels, FloatCounter>,
    /// baseline_cost − cost: positive when cascading saves.
    pub cost_saved: Family<CascadeLabels, FloatGauge>,
    /// Escalated share of the last `escalationWindow` requests.
    pub escalation_ratio: Family<CascadeLabels, FloatGauge>,
    /// 1 while the escalation ratio is above maxEscalationRatio.
    pub budget_exceeded: Family<CascadeLabels, Gauge>,
    /// Requests served while the budget was exceeded.
    pub over_budget: Family<CascadeLabels, Counter>,
}

fn confidence_histogram() -> Histogram {
    Histogram::new(linear_buckets(0.05, 0.05, 20))
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

impl CascadeMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            escalations: Family::default(),
            answers: Family::default(),
            failures: Family::default(),
            exhausted: Family::default(),
            confidence: Family::new_with_constructor(confidence_histogram as fn() -> Histogram),
            stage_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            tokens: Family::default(),
            cost: Family::default(),
            baseline_cost: Family::default(),
            cost_saved: Family::default(),
            escalation_ratio: Family::default(),
            budget_exceeded: Family::default(),
            over_budget: Family::default(),
        };
        registry.register("hearth_cascade_requests", "Requests received by a cascade", m.requests.clone());
        registry.register(
            "hearth_cascade_escalations",
            "Answers rejected for low confidence, by the stage that gave them",
            m.escalations.clone(),
        );
        registry.register("hearth_cascade_answers", "Answers returned, by the stage that gave them", m.answers.clone());
        registry.register(
            "hearth_cascade_stage_failures",
            "Stage calls that failed and were skipped, by reason",
            m.failures.clone(),
        );
        registry.register("hearth_cascade_exhausted", "Requests no stage could answer (503)", m.exhausted.clone());
        registry.register("hearth_cascade_confidence", "Confidence of each stage's answers", m.confidence.clone());
        registry.register(
            "hearth_cascade_stage_latency_seconds",
            "Time a stage took to answer",
            m.stage_latency.clone(),
        );
        registry.register("hearth_cascade_stage_tokens", "Tokens used by each stage", m.tokens.clone());
        registry.register("hearth_cascade_cost", "Cost of every stage call at the Models' prices", m.cost.clone());
        registry.register(
            "hearth_cascade_baseline_cost",
            "What always asking the last stage would have cost",
            m.baseline_cost.clone(),
        );
        registry.register(
            "hearth_cascade_cost_saved",
            "Estimated cost saved against always asking the last stage",
            m.cost_saved.clone(),
        );
        registry.register(
            "hearth_cascade_escalation_ratio",
            "Escalated share of the requests in the escalation window",
            m.escalation_ratio.clone(),
        );
        registry.register(
            "hearth_cascade_escalation_budget_exceeded",
            "1 while the escalation ratio is above maxEscalationRatio",
            m.budget_exceeded.clone(),
        );
        registry.register(
            "hearth_cascade_over_budget_requests",
            "Requests served while the escalation budget was exceeded",
            m.over_budget.clone(),
        );
        m
    }
}

/// Labels for a cascade.
pub fn cascade(name: &str) -> CascadeLabels {
    CascadeLabels { cascade: name.to_owned() }
}

/// Labels for a stage.
pub fn stage(cascade: &str, model: &str) -> StageLabels {
    StageLabels { cascade: cascade.to_owned(), stage: model.to_owned() }
}
