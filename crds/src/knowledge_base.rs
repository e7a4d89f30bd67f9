//! `KnowledgeBase`: documents ingested, chunked, embedded locally and stored in a Qdrant
//! collection, re-indexed on a schedule and retrieved hybrid (lexical + semantic).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::conditions::Condition;
use crate::references::{ConfigMapRef, SecretKeyRef};

/// A searchable collection of documents.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "hearth.dev",
    version = "v1alpha1",
    kind = "KnowledgeBase",
    namespaced,
    derive = "PartialEq",
    doc = "Documents ingested, chunked, embedded by a local Model and stored in a Qdrant collection, re-indexed on a schedule and retrieved by dense, sparse or hybrid search.",
    status = "KnowledgeBaseStatus",
    shortname = "hkb",
    shortname = "kb",
    category = "hearth",
    printcolumn = r#"{"name":"Documents","type":"integer","jsonPath":".status.documents"}"#,
    printcolumn = r#"{"name":"Chunks","type":"integer","jsonPath":".status.chunks"}"#,
    printcolumn = r#"{"name":"Last Indexed","type":"date","jsonPath":".status.lastIndexedTime"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct KnowledgeBaseSpec {
    /// The embedding Model that turns chunks and queries into vectors.
    pub embedding: EmbeddingRef,
    /// Where the documents come from; at least one source.
    #[schemars(length(min = 1, max = 64))]
    pub sources: Vec<DocumentSource>,
    /// How documents are split into chunks.
    #[serde(default)]
    pub chunking: Chunking,
    /// Where the vectors are stored.
    #[serde(default)]
    pub store: Store,
    /// How queries are answered.
    #[serde(default)]
    pub retrieval: Retrieval,
    /// Re-index on this cron schedule (five fields, e.g. `0 3 * * *`); never when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(\S+\s+){4}\S+)$"))]
    pub schedule: Option<String>,
    /// What happens to the collection when the KnowledgeBase is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// The embedding Model a KnowledgeBase uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingRef {
    /// Name of a Model with `task: embedding` in the same namespace.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub model: String,
}

/// One place documents come from; exactly one kind is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.configMap), has(self.pvc), has(self.url), has(self.directory)].filter(x, x).size() == 1").message("set exactly one of configMap, pvc, url or directory"))]
pub struct DocumentSource {
    /// Every key (or one key) of a ConfigMap, each key one document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapRef>,
    /// Files under a path of a PersistentVolumeClaim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcSource>,
    /// One document fetched over HTTPS (robots.txt honoured, rate-limited, size-capped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https://[^\s]+$"))]
    pub url: Option<String>,
    /// A directory on the local machine; only `hearth-server up` reads it, the operator
    /// rejects it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<DirectorySource>,
}

/// Files under a path of a PersistentVolumeClaim.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    /// Name of the PersistentVolumeClaim.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub claim_name: String,
    /// Directory inside the volume, read recursively.
    #[serde(default = "default_root")]
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
}

fn default_root() -> String {
    "/".to_owned()
}

/// A directory on the local machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DirectorySource {
    /// Path of the directory, read recursively; relative paths are relative to the stack file.
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
}

/// How documents are split into chunks, measured in the embedding model's tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.overlapTokens < self.chunkTokens").message("overlapTokens must be smaller than chunkTokens").field_path(".overlapTokens"))]
pub struct Chunking {
    /// Splitting strategy.
    #[serde(default)]
    pub strategy: ChunkingStrategy,
    /// Largest chunk, in embedding-model tokens.
    #[serde(default = "default_chunk_tokens")]
    #[schemars(range(min = 16, max = 8192))]
    pub chunk_tokens: u32,
    /// Tokens each chunk repeats from the end of the previous one.
    #[serde(default = "default_overlap_tokens")]
    #[schemars(range(min = 0, max = 4096))]
    pub overlap_tokens: u32,
}

impl Default for Chunking {
    fn default() -> Self {
        Self {
            strategy: ChunkingStrategy::default(),
            chunk_tokens: default_chunk_tokens(),
            overlap_tokens: default_overlap_tokens(),
        }
    }
}

fn default_chunk_tokens() -> u32 {
    500
}
fn default_overlap_tokens() -> u32 {
    50
}

/// How text is split.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ChunkingStrategy {
    /// Split on paragraphs, then lines, sentences, words and characters, until chunks fit.
    #[default]
    Recursive,
}

/// Where vectors are stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Store {
    /// An external Qdrant; when omitted, the operator runs a managed Qdrant (and local mode
    /// uses its embedded store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qdrant: Option<QdrantStore>,
    /// HNSW index parameters.
    #[serde(default)]
    pub hnsw: Hnsw,
    /// Vector quantization: none, or int8 scalar quantization (4× less memory).
    #[serde(default)]
    pub quantization: VectorQuantization,
}

/// An external Qdrant server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct QdrantStore {
    /// gRPC URL of the Qdrant server, e.g. `http://qdrant.db:6334`.
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub url: String,
    /// The Secret key holding Qdrant's API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// Collection name; defaults to `<namespace>-<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub collection: Option<String>,
}

/// HNSW graph parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hnsw {
    /// Edges per node.
    #[serde(default = "default_m")]
    #[schemars(range(min = 4, max = 128))]
    pub m: u32,
    /// Candidates considered while building the graph.
    #[serde(default = "default_ef_construct")]
    #[schemars(range(min = 4, max = 1000))]
    pub ef_construct: u32,
}

impl Default for Hnsw {
    fn default() -> Self {
        Self { m: default_m(), ef_construct: default_ef_construct() }
    }
}

fn default_m() -> u32 {
    16
}
fn default_ef_construct() -> u32 {
    100
}

/// Vector quantization in the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum VectorQuantization {
    /// Full 32-bit vectors.
    #[default]
    None,
    /// int8 scalar quantization.
    Int8,
}

/// How queries are answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retrieval {
    /// dense (embeddings), sparse (BM25-style keywords) or hybrid (both, fused by RRF).
    #[serde(default)]
    pub mode: RetrievalMode,
    /// Chunks returned per query.
    #[serde(default = "default_top_k")]
    #[schemars(range(min = 1, max = 100))]
    pub top_k: u32,
    /// Drop hits scoring below this (dense mode's cosine similarity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1.0, max = 1.0))]
    pub score_threshold: Option<f64>,
}

impl Default for Retrieval {
    fn default() -> Self {
        Self { mode: RetrievalMode::default(), top_k: default_top_k(), score_threshold: None }
    }
}

fn default_top_k() -> u32 {
    5
}

/// Retrieval modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RetrievalMode {
    /// Embedding similarity only.
    Dense,
    /// Keyword (BM25-style) only.
    Sparse,
    /// Dense and sparse fused by reciprocal rank fusion.
    #[default]
    Hybrid,
}

/// Whether deleting the KnowledgeBase deletes its collection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the collection with the KnowledgeBase.
    #[default]
    Delete,
    /// Keep the collection.
    Retain,
}

/// What the operator and the last ingestion observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct KnowledgeBaseStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling, Stalled, plus Indexed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Documents in the collection.
    #[serde(default)]
    pub documents: u64,
    /// Chunks (points) in the collection.
    #[serde(default)]
    pub chunks: u64,
    /// Documents skipped by the last ingestion (unsupported or unreadable).
    #[serde(default)]
    pub skipped_documents: u64,
    /// When the last ingestion finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_indexed_time: Option<Time>,
    /// How long the last ingestion took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_index_duration_seconds: Option<f64>,
    /// The Qdrant collection in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
}
