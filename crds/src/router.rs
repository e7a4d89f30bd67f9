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

/// A cascade's escalation budget as its router sees it (`GET /cascades` on the router), read
/// by the operator into the Cascade's status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterReport {
    /// The Cascade.
    pub name: String,
    /// Its stages' Models, cheapest first.
    pub stages: Vec<String>,
    /// Escalated share of the requests in the window.
    pub escalation_ratio: f64,
    /// Requests in the window.
    pub window_requests: usize,
    /// The window's size.
    pub escalation_window: u32,
    /// The budget, if any.
    pub max_escalation_ratio: Option<f64>,
    /// Whether the ratio is above the budget.
    pub budget_exceeded: bool,
}
