//! The Cascade router's configuration (`router.yaml`), shared by the operator, which writes
//! it from a Cascade and its Models' endpoints, and `hearth-server cascade`, which reads it.
//! Local mode builds the same structure from a stack file.

use serde::{Deserialize, Serialize};

use crate::cascade::ConfidenceMeasure;
use crate::model::TokenCost;

/// The router's configuration (`router.yaml`): the Cascade's scoring settings and its
/// stages in order, each with the endpoint to call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouterConfig {
    /// The Cascade's name; clients pass it as `model`.
    pub name: String,
    /// The Cascade's namespace.
    pub namespace: String,
    /// How an answer's confidence is scored.
    pub confidence: ConfidenceMeasure,
    /// Share of requests that may escalate past the first stage before the router alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_escalation_ratio: Option<f64>,
    /// Requests the escalation ratio is computed over.
    pub escalation_window: u32,
    /// Stages from cheapest to most capable.
    pub stages: Vec<RouterStage>,
}

/// One stage as the router calls it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouterStage {
    /// The Model's name (sent as `model` in the request).
    pub model: String,
    /// Base URL of the Model's OpenAI-compatible API (ends in `/v1`).
    pub endpoint: String,
    /// Answers below this confidence escalate; absent on the last stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_confidence: Option<f64>,
    /// Longest the stage may take, in seconds.
    pub timeout_seconds: u32,
    /// Price of the Model's tokens, for savings metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<TokenCost>,
}
