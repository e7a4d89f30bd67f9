//! `Agent`: a ReAct agent (observe, reason, act with tools, reflect) with tiered memory,
//! bound to a Model or a Cascade, KnowledgeBases and tools.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::conditions::Condition;
use crate::references::ConfigMapRef;
use crate::scaling::Autoscaling;

/// An agent served behind the OpenAI chat API (model = the agent's name) and a runs API.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "hearth.dev",
    version = "v1alpha1",
    kind = "Agent",
    namespaced,
    derive = "PartialEq",
    doc = "A ReAct agent (observe, reason, act with tools, reflect) bound to a Model or Cascade, KnowledgeBases and tools, with tiered memory and guardrails.",
    status = "AgentStatus",
    shortname = "ha",
    category = "hearth",
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".spec.model.model"}"#,
    printcolumn = r#"{"name":"Cascade","type":"string","jsonPath":".spec.model.cascade"}"#,
    printcolumn = r#"{"name":"Tools","type":"integer","jsonPath":".status.toolCount"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// What the agent thinks with: a Model or a Cascade.
    pub model: AgentModelRef,
    /// Instructions placed first in every prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32768))]
    pub system_prompt: Option<String>,
    /// Tools the agent may call; each entry sets exactly one kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tools: Vec<Tool>,
    /// What the agent remembers.
    #[serde(default)]
    pub memory: Memory,
    /// Most reason–act rounds in one run.
    #[serde(default = "default_max_iterations")]
    #[schemars(range(min = 1, max = 64))]
    pub max_iterations: u32,
    /// Budgets and allowlists enforced by the runtime and the network policy.
    #[serde(default)]
    pub guardrails: Guardrails,
    /// Agent runtime replicas when no autoscaling is set.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Scale the agent runtime with load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
}

fn default_max_iterations() -> u32 {
    8
}
fn default_replicas() -> i32 {
    1
}

/// The Model or Cascade an agent reasons with; exactly one is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.model) != has(self.cascade)").message("set exactly one of model or cascade"))]
pub struct AgentModelRef {
    /// Name of a chat Model in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub model: Option<String>,
    /// Name of a Cascade in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub cascade: Option<String>,
}

/// One tool; exactly one kind is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.retrieval), has(self.http), has(self.agent), has(self.mcp), has(self.calculator)].filter(x, x).size() == 1").message("set exactly one of retrieval, http, agent, mcp or calculator"))]
pub struct Tool {
    /// Search a KnowledgeBase; results reach the model as delimited, untrusted data with
    /// citations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrieval: Option<RetrievalTool>,
    /// Call operations of an HTTP API described by an OpenAPI document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpTool>,
    /// Delegate a sub-goal to another Agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentTool>,
    /// Use the tools of a Model Context Protocol server (streamable HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpTool>,
    /// Safe arithmetic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calculator: Option<CalculatorTool>,
}

/// Search a KnowledgeBase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrievalTool {
    /// Name of a KnowledgeBase in the same namespace.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub knowledge_base: String,
    /// Chunks returned per search; the KnowledgeBase's topK when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50))]
    pub top_k: Option<u32>,
}

/// Operations of an HTTP API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpTool {
    /// Where the OpenAPI document (JSON or YAML) is.
    pub openapi: OpenApiSource,
    /// operationIds the agent may call; every other operation is hidden from it.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9_.-]+$")))]
    pub allow: Vec<String>,
    /// Base URL every call goes to; the model cannot change it.
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub base_url: String,
    /// Longest one call may take, in seconds.
    #[serde(default = "default_tool_timeout_seconds")]
    #[schemars(range(min = 1, max = 600))]
    pub timeout_seconds: u32,
    /// Largest response body passed back to the model, in bytes.
    #[serde(default = "default_max_response_bytes")]
    #[schemars(range(min = 1024, max = 10485760))]
    pub max_response_bytes: u32,
}

fn default_tool_timeout_seconds() -> u32 {
    30
}
fn default_max_response_bytes() -> u32 {
    65536
}

/// Where an OpenAPI document is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenApiSource {
    /// A ConfigMap key holding the document.
    pub config_map_ref: ConfigMapRef,
}

/// Delegate to another Agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentTool {
    /// Name of an Agent in the same namespace.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
}

/// A Model Context Protocol server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct McpTool {
    /// URL of the server's streamable-HTTP endpoint.
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub url: String,
    /// Tool names the agent may call; all of the server's tools when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 128)))]
    pub allow: Vec<String>,
    /// Longest one call may take, in seconds.
    #[serde(default = "default_tool_timeout_seconds")]
    #[schemars(range(min = 1, max = 600))]
    pub timeout_seconds: u32,
}

/// Safe arithmetic; takes no settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
pub struct CalculatorTool {}

/// What an agent remembers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    /// Recent turns of a conversation kept in the prompt (within the token budget).
    #[serde(default = "default_short_term_turns")]
    #[schemars(range(min = 0, max = 1000))]
    pub short_term_turns: u32,
    /// Write a summary at the end of each run and recall it on later runs of the same
    /// conversation or user.
    #[serde(default = "default_true")]
    pub episodic: bool,
    /// Facts embedded into a KnowledgeBase and recalled by similarity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_term: Option<LongTermMemory>,
}

impl Default for Memory {
    fn default() -> Self {
        Self { short_term_turns: default_short_term_turns(), episodic: true, long_term: None }
    }
}

fn default_short_term_turns() -> u32 {
    20
}
fn default_true() -> bool {
    true
}

/// Long-term memory in a KnowledgeBase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LongTermMemory {
    /// Name of a KnowledgeBase in the same namespace.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub knowledge_base: String,
}

/// Budgets and allowlists for a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Guardrails {
    /// Most tool calls in one run.
    #[serde(default = "default_max_tool_calls")]
    #[schemars(range(min = 0, max = 256))]
    pub max_tool_calls: u32,
    /// Most prompt plus generated tokens in one run.
    #[serde(default = "default_max_tokens_per_run")]
    #[schemars(range(min = 256, max = 10000000))]
    pub max_tokens_per_run: u32,
    /// Longest one run may take, in seconds.
    #[serde(default = "default_max_run_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub max_run_seconds: u32,
    /// Hosts (DNS names, optionally with a port) the agent's pods may reach besides its
    /// models, knowledge bases and DNS; enforced by a NetworkPolicy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?$"))
    )]
    pub egress: Vec<String>,
    /// Tool names whose calls pause the run until approved through the runs API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 128)))]
    pub require_approval: Vec<String>,
}

impl Default for Guardrails {
    fn default() -> Self {
        Self {
            max_tool_calls: default_max_tool_calls(),
            max_tokens_per_run: default_max_tokens_per_run(),
            max_run_seconds: default_max_run_seconds(),
            egress: Vec::new(),
            require_approval: Vec::new(),
        }
    }
}

fn default_max_tool_calls() -> u32 {
    16
}
fn default_max_tokens_per_run() -> u32 {
    8000
}
fn default_max_run_seconds() -> u32 {
    300
}

/// What the operator observed about an Agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling, Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// In-cluster URL of the agent's OpenAI-compatible API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Number of tools configured.
    #[serde(default)]
    pub tool_count: u32,
}
