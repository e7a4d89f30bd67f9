//! `Cascade`: Models ordered from cheap to expensive; a request goes to the cheapest first
//! and escalates while the answer's confidence is below the stage's threshold.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::conditions::Condition;
use crate::scaling::Autoscaling;

/// A confidence-scored cascade of Models behind one OpenAI-compatible endpoint.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "hearth.dev",
    version = "v1alpha1",
    kind = "Cascade",
    namespaced,
    derive = "PartialEq",
    doc = "Models ordered from cheap to expensive behind one OpenAI-compatible endpoint: each request goes to the cheapest stage first and escalates while the answer's confidence is below the stage's threshold.",
    status = "CascadeStatus",
    shortname = "hc",
    category = "hearth",
    printcolumn = r#"{"name":"Stages","type":"string","jsonPath":".spec.stages[*].model"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Escalated","type":"number","jsonPath":".status.observedEscalationRatio","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    validation = Rule::new("self.stages.size() >= 1").message("a Cascade needs at least one stage").field_path(".stages"),
    validation = Rule::new("self.stages.size() == 0 || !has(self.stages[self.stages.size() - 1].minConfidence)").message("the last stage always answers: it must not set minConfidence").field_path(".stages"),
    validation = Rule::new("self.stages.size() == 0 || self.stages.exists_one(s, !has(s.minConfidence))").message("every stage but the last must set minConfidence").field_path(".stages"),
    validation = Rule::new("self.stages.all(s, self.stages.exists_one(t, t.model == s.model))").message("each Model may appear in only one stage").field_path(".stages"),
)]
#[serde(rename_all = "camelCase")]
pub struct CascadeSpec {
    /// Stages from cheapest to most capable; at least one, at most eight.
    #[schemars(length(min = 1, max = 8))]
    pub stages: Vec<CascadeStage>,
    /// How an answer's confidence is scored from its token log-probabilities. Every measure
    /// lies in (0, 1]: meanTokenProbability is the mean of token probabilities,
    /// minTokenProbability the lowest one, meanLogprob the geometric mean (exp of the mean
    /// log-probability).
    #[serde(default)]
    pub confidence: ConfidenceMeasure,
    /// Budget for escalations: when the share of requests escalated past the first stage over
    /// the last `escalationWindow` requests exceeds it, the router keeps serving but raises a
    /// metric and the EscalationBudgetExceeded condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_escalation_ratio: Option<f64>,
    /// Number of most recent requests the escalation ratio is computed over.
    #[serde(default = "default_escalation_window")]
    #[schemars(range(min = 10, max = 1000000))]
    pub escalation_window: u32,
    /// Router replicas when no autoscaling is set.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Scale the router with load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
}

fn default_escalation_window() -> u32 {
    1000
}

fn default_replicas() -> i32 {
    1
}

/// One stage of a cascade.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CascadeStage {
    /// Name of a chat Model in the same namespace.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub model: String,
    /// Answers scoring below this confidence escalate to the next stage; strictly between
    /// 0 and 1. Required on every stage but the last, which always answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0), extend("exclusiveMinimum" = true, "exclusiveMaximum" = true))]
    pub min_confidence: Option<f64>,
    /// Longest this stage may take before the router skips to the next one, in seconds.
    #[serde(default = "default_stage_timeout_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: u32,
}

fn default_stage_timeout_seconds() -> u32 {
    60
}

/// How a cascade scores an answer's confidence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ConfidenceMeasure {
    /// Mean of the sampled tokens' probabilities.
    #[default]
    MeanTokenProbability,
    /// Lowest sampled token probability: one unsure token escalates.
    MinTokenProbability,
    /// exp(mean log-probability): the geometric mean of token probabilities.
    MeanLogprob,
}

/// What the operator and the router observed about a Cascade.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CascadeStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling, Stalled, plus EscalationBudgetExceeded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// In-cluster URL of the router's OpenAI-compatible API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Share of recent requests escalated past the first stage, from the router's metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_escalation_ratio: Option<f64>,
    /// Each stage's resolved endpoint and readiness.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageStatus>,
}

/// The resolved state of one stage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// The stage's Model.
    pub model: String,
    /// The Model's endpoint, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Whether the Model is Ready.
    #[serde(default)]
    pub ready: bool,
}
