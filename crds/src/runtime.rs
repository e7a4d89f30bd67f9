//! What the operator hands the processes it runs, shared with `hearth-server` so both sides
//! read one type: the agent runtime's configuration (`agent.yaml`, from an Agent and the
//! endpoints it resolves to) and the summary an ingestion Job leaves in its termination
//! message (read back into the KnowledgeBase's status).

use serde::{Deserialize, Serialize};

use crate::agent::AgentSpec;
use crate::knowledge_base::KnowledgeBaseSpec;

/// Name of the dense vector of every knowledge-base collection (written by `hearth-server`,
/// created and tuned by the operator).
pub const DENSE_VECTOR_NAME: &str = "dense";
/// Name of the sparse (BM25-style, IDF modifier) vector of every knowledge-base collection.
pub const SPARSE_VECTOR_NAME: &str = "text";

/// Where the agent runtime reads its configuration in a cluster.
pub const AGENT_CONFIG_PATH: &str = "/etc/hearth/agent/agent.yaml";
/// Where an http tool's OpenAPI document is mounted in a cluster:
/// `<OPENAPI_DIR>/<configmap name>/<key>`.
pub const OPENAPI_DIR: &str = "/etc/hearth/openapi";

/// Where `hearth-server` keeps fetched models outside a cluster (and tests find theirs):
/// `$HEARTH_CACHE/models`, else `~/.cache/hearth/models`.
pub fn model_cache_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    match std::env::var_os("HEARTH_CACHE") {
        Some(dir) => PathBuf::from(dir).join("models"),
        None => std::env::var_os("HOME")
            .map_or_else(|| PathBuf::from(".cache/hearth/models"), |h| PathBuf::from(h).join(".cache/hearth/models")),
    }
}

/// The agent runtime's configuration (`hearth-server agent --config agent.yaml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRuntimeConfig {
    /// The Agent's name; clients pass it as `model`.
    pub name: String,
    /// The Agent's namespace.
    pub namespace: String,
    /// The Agent's spec as written.
    pub spec: AgentSpec,
    /// The OpenAI-compatible endpoint the agent reasons with (a Model's or a Cascade's).
    pub model: ChatEndpoint,
    /// The KnowledgeBases the retrieval tools and long-term memory use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub knowledge_bases: Vec<KnowledgeBaseBinding>,
    /// The Agents the delegation tools call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<ChatEndpoint>,
    /// Where http tools' OpenAPI documents are mounted (default [`OPENAPI_DIR`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openapi_dir: Option<String>,
}

/// An OpenAI-compatible endpoint and the `model` name to send it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatEndpoint {
    /// The `model` field of requests (a Model, Cascade or Agent name).
    pub name: String,
    /// Base URL ending in `/v1`.
    pub endpoint: String,
}

/// A KnowledgeBase as the agent runtime queries it: its spec with `store.qdrant` resolved
/// (URL and collection filled in, the managed Qdrant's when the spec names none) and the
/// endpoint of its embedding Model, which embeds the queries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KnowledgeBaseBinding {
    /// The KnowledgeBase's name.
    pub name: String,
    /// Its spec, store resolved.
    pub spec: KnowledgeBaseSpec,
    /// The embedding Model's OpenAI-compatible endpoint (`name` is the Model).
    pub embedding: ChatEndpoint,
}

/// What one ingestion run did, compact enough for a container's termination message
/// (`hearth-server ingest --report-file /dev/termination-log`, at most 4 KiB).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestSummary {
    /// The KnowledgeBase.
    pub knowledge_base: String,
    /// Documents loaded.
    pub documents: u64,
    /// Chunks in the collection after the run.
    pub chunks: u64,
    /// Chunks embedded and stored by this run.
    pub added: u64,
    /// Stale chunks removed.
    pub removed: u64,
    /// Sources that could not be read (their stored chunks are kept).
    pub skipped: u64,
    /// Wall time of the run, in seconds.
    pub seconds: f64,
    /// Why the run failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
