//! The vector store behind a KnowledgeBase: collections of text chunks with a dense embedding and a
//! sparse (BM25-style) vector each, searched by dense similarity, sparse relevance or both fused.
//!
//! Two implementations share this interface: the embedded store (local mode and tests) and the
//! Qdrant server (gRPC). Shapes follow Qdrant's so both return the same results for the same data.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use hearth_crds::runtime::{DENSE_VECTOR_NAME, SPARSE_VECTOR_NAME};

/// The `k` of reciprocal rank fusion: a point at 0-based rank `r` in a prefetch adds `1 / (k + r)`,
/// the formula Qdrant uses for `fusion: rrf` with `k` set.
pub const RRF_K: usize = 60;

/// Largest dense dimension a collection may have (Qdrant's limit).
pub const MAX_DIMENSION: usize = 65_536;

/// How many candidates each prefetch of a hybrid query fetches before fusion.
pub fn prefetch_limit(top_k: usize) -> usize {
    top_k.saturating_mul(4).max(20)
}

/// A sparse vector: parallel lists of term ids and weights (a term id is a hashed or vocabulary
/// token; the weight is its term-frequency weight, IDF is applied at query time).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SparseVector {
    /// Term ids; unique within one vector.
    pub indices: Vec<u32>,
    /// Weight of each term id, same length as `indices`.
    pub values: Vec<f32>,
}

impl SparseVector {
    /// A sparse vector from term ids and their weights.
    pub fn new(indices: Vec<u32>, values: Vec<f32>) -> Self {
        Self { indices, values }
    }

    /// Number of terms.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether the vector has no terms.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Checks that the lists have the same length, the ids are unique and the weights finite;
    /// the error says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.indices.len() != self.values.len() {
            return Err(format!("sparse vector has {} indices but {} values", self.indices.len(), self.values.len()));
        }
        if let Some(v) = self.values.iter().find(|v| !v.is_finite()) {
            return Err(format!("sparse vector has a non-finite weight {v}"));
        }
        let mut seen = BTreeSet::new();
        if let Some(dup) = self.indices.iter().find(|i| !seen.insert(**i)) {
            return Err(format!("sparse vector repeats index {dup}"));
        }
        Ok(())
    }
}

/// How dense vectors are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    /// Cosine similarity (vectors are stored normalised); score in [-1, 1], higher is closer.
    Cosine,
    /// Dot product; higher is closer.
    Dot,
    /// Euclidean (L2) distance; score is the distance, lower is closer.
    Euclid,
}

impl Distance {
    /// The lowercase name, as in the CRD and in Qdrant's REST API.
    pub fn as_str(self) -> &'static str {
        match self {
            Distance::Cosine => "cosine",
            Distance::Dot => "dot",
            Distance::Euclid => "euclid",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "cosine" => Some(Distance::Cosine),
            "dot" => Some(Distance::Dot),
            "euclid" => Some(Distance::Euclid),
            _ => None,
        }
    }

    /// Whether a higher score means closer (false only for Euclid, whose score is a distance).
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Distance::Euclid)
    }
}

impl std::fmt::Display for Distance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a KnowledgeBase asks of its collection. Every collection also has the sparse vector
/// [`SPARSE_VECTOR_NAME`] with the IDF modifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionSpec {
    /// Collection name.
    pub name: String,
    /// Length of the dense vectors (the embedding model's output size).
    pub dimension: usize,
    /// How dense vectors are compared.
    pub distance: Distance,
    /// HNSW graph degree (`m`).
    pub hnsw_m: usize,
    /// HNSW build-time candidate list size (`ef_construct`).
    pub ef_construct: usize,
    /// Whether dense vectors are scalar-quantised to int8 for search.
    pub int8_quantization: bool,
}

impl CollectionSpec {
    /// Checks the name and dimension; the error says what is wrong.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.name.is_empty() || self.name.len() > 255 || self.name.contains(['/', '\\', '\0']) {
            return Err(StoreError::InvalidSpec(format!(
                "collection name must be 1 to 255 characters without '/', '\\' or NUL, got {:?}",
                self.name
            )));
        }
        if self.dimension == 0 || self.dimension > MAX_DIMENSION {
            return Err(StoreError::InvalidSpec(format!(
                "collection {}: dimension must be 1 to {MAX_DIMENSION}, got {}",
                self.name, self.dimension
            )));
        }
        Ok(())
    }
}

/// What is stored with each chunk and returned with each hit.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChunkPayload {
    /// The chunk's text.
    pub text: String,
    /// Where the chunk came from (a document URI); the unit of re-ingest and deletion.
    pub source: String,
    /// Position of the chunk within its source.
    pub chunk_index: usize,
    /// Byte offset of the chunk's start in the source text.
    pub start: usize,
    /// Byte offset just past the chunk's end in the source text.
    pub end: usize,
    /// Headings that enclose the chunk, outermost first.
    pub headings: Vec<String>,
    /// Hash of the chunk's text (hex), part of the point id.
    pub content_hash: String,
}

/// One chunk to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Point id, derived from source + chunk position + content hash so re-ingest is idempotent.
    pub id: Uuid,
    /// Dense embedding; its length must be the collection's dimension.
    pub dense: Vec<f32>,
    /// Sparse (BM25-style term weight) vector; may be empty.
    pub sparse: SparseVector,
    /// The chunk and where it came from.
    pub payload: ChunkPayload,
}

/// Which vectors a query searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryMode {
    /// Dense similarity only.
    Dense,
    /// Sparse relevance (with IDF) only.
    Sparse,
    /// Reciprocal rank fusion of a dense and a sparse prefetch.
    #[default]
    Hybrid,
}

/// A search request.
///
/// `score_threshold` means, per mode: Dense — a minimum similarity for Cosine and Dot and a maximum
/// distance for Euclid; Sparse — a minimum sparse score (Σ query weight × document weight × IDF);
/// Hybrid — a minimum fused RRF score (at most `2 / RRF_K` ≈ 0.033, for a point ranked first by
/// both prefetches), applied after fusion; the prefetches themselves are not thresholded.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Query {
    /// Dense query vector, required for Dense and Hybrid.
    pub dense: Option<Vec<f32>>,
    /// Sparse query vector, required for Sparse and Hybrid.
    pub sparse: Option<SparseVector>,
    /// Which vectors to search.
    pub mode: QueryMode,
    /// How many hits to return at most (at least 1).
    pub top_k: usize,
    /// Drop hits worse than this (see the type's documentation for its meaning per mode).
    pub score_threshold: Option<f32>,
    /// Only hits whose `payload.source` is one of these.
    pub sources: Option<Vec<String>>,
}

impl Query {
    /// Checks the query against a collection's dimension: the vectors the mode needs are present,
    /// the dense vector has the right length, values are finite, `top_k` is at least 1.
    pub fn check(&self, collection: &str, dimension: usize) -> Result<(), StoreError> {
        let invalid = |msg: String| Err(StoreError::InvalidQuery(format!("collection {collection}: {msg}")));
        if self.top_k == 0 {
            return invalid("top_k must be at least 1".to_string());
        }
        let needs_dense = matches!(self.mode, QueryMode::Dense | QueryMode::Hybrid);
        let needs_sparse = matches!(self.mode, QueryMode::Sparse | QueryMode::Hybrid);
        if needs_dense && self.dense.is_none() {
            return invalid(format!("{:?} query needs a dense vector, got none", self.mode));
        }
        if needs_sparse && self.sparse.is_none() {
            return invalid(format!("{:?} query needs a sparse vector, got none", self.mode));
        }
        if let Some(dense) = self.dense.as_ref().filter(|_| needs_dense) {
            if dense.len() != dimension {
                return invalid(format!(
                    "dense query vector has the wrong length: expected {dimension}, got {}",
                    dense.len()
                ));
            }
            if dense.iter().any(|v| !v.is_finite()) {
                return invalid("dense query vector has a non-finite value".to_string());
            }
        }
        if let Some(sparse) = self.sparse.as_ref().filter(|_| needs_sparse) {
            sparse.check().or_else(|e| invalid(format!("sparse query vector: {e}")))?;
        }
        if self.score_threshold.is_some_and(|t| t.is_nan()) {
            return invalid("score_threshold is NaN".to_string());
        }
        Ok(())
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Point id.
    pub id: Uuid,
    /// Score in the query mode's scale (similarity, distance, sparse score or RRF score).
    pub score: f32,
    /// The stored chunk.
    pub payload: ChunkPayload,
}

/// What a collection is, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionInfo {
    /// Collection name.
    pub name: String,
    /// Length of the dense vectors.
    pub dimension: usize,
    /// How dense vectors are compared.
    pub distance: Distance,
    /// Number of points.
    pub points: u64,
    /// HNSW graph degree.
    pub hnsw_m: usize,
    /// HNSW build-time candidate list size.
    pub ef_construct: usize,
    /// Whether dense vectors are int8-quantised.
    pub int8_quantization: bool,
}

impl CollectionInfo {
    /// Parameters of `spec` that differ from this collection and cannot change in place, as
    /// `name: existing -> wanted` lines (empty when the collection matches).
    pub fn differences(&self, spec: &CollectionSpec) -> Vec<String> {
        let mut out = Vec::new();
        if self.dimension != spec.dimension {
            out.push(format!("dimension: {} -> {}", self.dimension, spec.dimension));
        }
        if self.distance != spec.distance {
            out.push(format!("distance: {} -> {}", self.distance, spec.distance));
        }
        if self.hnsw_m != spec.hnsw_m {
            out.push(format!("hnsw m: {} -> {}", self.hnsw_m, spec.hnsw_m));
        }
        if self.ef_construct != spec.ef_construct {
            out.push(format!("hnsw ef_construct: {} -> {}", self.ef_construct, spec.ef_construct));
        }
        if self.int8_quantization != spec.int8_quantization {
            out.push(format!("int8 quantization: {} -> {}", self.int8_quantization, spec.int8_quantization));
        }
        out
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The collection exists with another dense dimension (it is never re-created silently).
    #[error("collection {collection} has dimension {existing}, but {wanted} was asked for")]
    DimensionMismatch {
        /// Collection name.
        collection: String,
        /// Dimension of the existing collection.
        existing: usize,
        /// Dimension asked for.
        wanted: usize,
    },
    /// No collection of this name.
    #[error("collection {0} does not exist")]
    NoCollection(String),
    /// The query cannot run (missing vector for the mode, wrong length, …).
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// A point cannot be stored (dense vector of the wrong length, non-finite values, …).
    #[error("invalid point: {0}")]
    InvalidPoint(String),
    /// A collection spec cannot be created (bad name, zero dimension, …).
    #[error("invalid collection spec: {0}")]
    InvalidSpec(String),
    /// The storage engine or server failed.
    #[error("vector store backend: {0}")]
    Backend(String),
}

/// A vector store: collections of chunks searched by dense, sparse or hybrid queries.
pub trait VectorStore: Send + Sync {
    /// Creates the collection, or checks an existing one: a different dimension is
    /// [`StoreError::DimensionMismatch`]; other differences are not errors, and the returned
    /// info (what exists) lets the caller report them ([`CollectionInfo::differences`]).
    fn ensure_collection(
        &self,
        spec: &CollectionSpec,
    ) -> impl Future<Output = Result<CollectionInfo, StoreError>> + Send;

    /// Inserts or replaces points by id; all of them land or none does.
    fn upsert(&self, collection: &str, points: Vec<Point>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes points by id; returns how many existed.
    fn delete_points(&self, collection: &str, ids: &[Uuid]) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Deletes every point of one source; returns how many there were.
    fn delete_source(&self, collection: &str, source: &str) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Every source and its point ids (for idempotent re-ingest diffs).
    fn source_points(
        &self,
        collection: &str,
    ) -> impl Future<Output = Result<BTreeMap<String, BTreeSet<Uuid>>, StoreError>> + Send;

    /// Searches the collection; hits best first, ties broken by ascending id.
    fn query(&self, collection: &str, query: &Query) -> impl Future<Output = Result<Vec<Hit>, StoreError>> + Send;

    /// Number of points in the collection.
    fn count(&self, collection: &str) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Deletes the collection and its points; returns whether it existed.
    fn delete_collection(&self, collection: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;
}
