//! Knowledge bases: documents in, grounded retrieval out.
//!
//! Ingest loads every source, splits documents into chunks measured in the embedding model's
//! tokens, embeds only the chunks the store does not hold yet, upserts them, and then removes
//! the chunks of changed and deleted sources. Point ids are UUIDv5 of (source, chunk position,
//! chunk hash), so re-ingesting unchanged sources writes nothing, and a failed run (nothing is
//! deleted before every new chunk is stored) loses nothing. A source that could not be read
//! keeps its chunks: unreadable is not deleted.
//!
//! Retrieval is dense (the embedding), sparse (BM25-style term weights with the store's IDF)
//! or hybrid (both, fused by reciprocal rank), with top-k, a score threshold and a source
//! filter; every hit carries its text, source and byte offsets for citations.

pub mod any;
pub mod embedded;
pub mod embedder;
pub mod html;
pub mod loaders;
pub mod qdrant;
pub mod robots;
pub mod schedule;
pub mod sparse;
pub mod splitter;
pub mod store;
pub mod wordpiece;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use hearth_crds::KnowledgeBaseSpec;
use hearth_crds::knowledge_base::{RetrievalMode, VectorQuantization};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use any::AnyStore;
use embedder::Embedder;
use splitter::SplitterConfig;
use store::{ChunkPayload, CollectionSpec, Distance, Hit, Point, Query, QueryMode, StoreError, VectorStore};
use wordpiece::TokenizerCounter;

/// Namespace of chunk ids (UUIDv5), fixed forever: stored ids depend on it.
const CHUNK_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6865_6172_7468_2d6b_622d_6368_756e_6b73);
/// Chunks embedded per call to the embedding model.
const EMBED_BATCH: usize = 32;
/// Points per upsert.
const UPSERT_BATCH: usize = 256;
/// Source ids under this prefix are an agent's long-term memories, written through
/// [`KnowledgeBase::remember`]; ingestion never treats them as stale.
pub const MEMORY_SOURCE_PREFIX: &str = "memory:";

/// Why an ingest or a query failed.
#[derive(Debug, thiserror::Error)]
pub enum KbError {
    /// The store refused or failed.
    #[error("knowledge base `{kb}`: {source}")]
    Store {
        /// The knowledge base.
        kb: String,
        /// What the store said.
        source: StoreError,
    },
    /// The embedding model failed.
    #[error("knowledge base `{kb}`: embedding with `{model}` failed: {message}")]
    Embedding {
        /// The knowledge base.
        kb: String,
        /// The embedding model.
        model: String,
        /// Why.
        message: String,
    },
    /// A request field is wrong.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What was expected.
        message: String,
    },
}

/// What an ingest did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct IngestReport {
    /// Documents loaded.
    pub documents: usize,
    /// Chunks those documents make.
    pub chunks: usize,
    /// Chunks embedded and stored by this run.
    pub added: usize,
    /// Chunks already stored (unchanged).
    pub unchanged: usize,
    /// Stale chunks removed (changed or deleted sources).
    pub removed: u64,
    /// Sources that could not be read, with the reason; their stored chunks are kept.
    pub skipped: Vec<SkippedSource>,
    /// Wall time of the run.
    pub seconds: f64,
    /// Of which spent embedding.
    pub embedding_seconds: f64,
}

/// A source an ingest could not read.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SkippedSource {
    /// The source id.
    pub source: String,
    /// Why.
    pub reason: String,
}

/// A retrieval request (`POST /v1/knowledgebases/{name}/query`).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct QueryRequest {
    /// The question.
    pub query: String,
    /// Most hits (default: the spec's topK).
    pub top_k: Option<usize>,
    /// dense, sparse or hybrid (default: the spec's mode).
    pub mode: Option<RetrievalMode>,
    /// Lowest score kept (default: the spec's scoreThreshold).
    pub score_threshold: Option<f32>,
    /// Only hits from these sources.
    pub sources: Option<Vec<String>>,
}

/// One retrieved chunk, with what a citation needs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Retrieved {
    /// The chunk's id.
    pub id: String,
    /// Score under the query's mode (cosine similarity, sparse score, or fused RRF score).
    pub score: f32,
    /// The chunk's text.
    pub text: String,
    /// The source it came from.
    pub source: String,
    /// Byte offsets of the chunk in its document.
    pub start: usize,
    /// End offset (exclusive).
    pub end: usize,
    /// Markdown heading path at the chunk's start.
    pub headings: Vec<String>,
}

impl From<Hit> for Retrieved {
    fn from(hit: Hit) -> Self {
        Self {
            id: hit.id.to_string(),
            score: hit.score,
            text: hit.payload.text,
            source: hit.payload.source,
            start: hit.payload.start,
            end: hit.payload.end,
            headings: hit.payload.headings,
        }
    }
}

/// A knowledge base being served: its spec, its embedding model and its store.
pub struct KnowledgeBase<S: VectorStore = AnyStore> {
    name: String,
    spec: KnowledgeBaseSpec,
    /// Relative `directory` sources are resolved against it (the stack file's directory).
    base_dir: PathBuf,
    collection: String,
    embedder: Embedder,
    store: Arc<S>,
    ingesting: tokio::sync::Mutex<()>,
}

impl<S: VectorStore> KnowledgeBase<S> {
    /// Opens a knowledge base over `store`, creating its collection when missing. A
    /// collection of another dimension is an error, never silently re-created.
    pub async fn open(
        name: &str,
        spec: KnowledgeBaseSpec,
        base_dir: &Path,
        embedder: impl Into<Embedder>,
        store: Arc<S>,
    ) -> Result<Self, KbError> {
        let embedder = embedder.into();
        let collection =
            spec.store.qdrant.as_ref().and_then(|q| q.collection.clone()).unwrap_or_else(|| name.to_owned());
        let wanted = CollectionSpec {
            name: collection.clone(),
            dimension: embedder.dimension(),
            distance: Distance::Cosine,
            hnsw_m: spec.store.hnsw.m as usize,
            ef_construct: spec.store.hnsw.ef_construct as usize,
            int8_quantization: spec.store.quantization == VectorQuantization::Int8,
        };
        store.ensure_collection(&wanted).await.map_err(|source| KbError::Store { kb: name.to_owned(), source })?;
        let limit = match &embedder {
            Embedder::Local(model) => model.max_tokens().saturating_sub(2),
            Embedder::Remote(_) => usize::MAX,
        };
        if spec.chunking.chunk_tokens as usize > limit {
            tracing::warn!(
                knowledge_base = name,
                chunk_tokens = spec.chunking.chunk_tokens,
                model = %embedder.name(),
                model_tokens = limit,
                "chunks are longer than the embedding model reads: their tails are found only by lexical search; \
                 set spec.chunking.chunkTokens to at most the model's limit"
            );
        }
        Ok(Self {
            name: name.to_owned(),
            spec,
            base_dir: base_dir.to_owned(),
            collection,
            embedder,
            store,
            ingesting: tokio::sync::Mutex::new(()),
        })
    }

    /// The knowledge base's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hits a query returns when it does not say (the spec's `retrieval.topK`).
    pub fn default_top_k(&self) -> usize {
        self.spec.retrieval.top_k as usize
    }

    /// Chunks stored.
    pub async fn count(&self) -> Result<u64, KbError> {
        self.store.count(&self.collection).await.map_err(|source| self.store_error(source))
    }

    fn store_error(&self, source: StoreError) -> KbError {
        KbError::Store { kb: self.name.clone(), source }
    }

    /// Loads every source: documents with source ids prefixed by their source (so two
    /// directories may both hold a README.md), and the sources that failed as a whole.
    async fn load(&self) -> (Vec<loaders::Document>, Vec<SkippedSource>, Vec<String>) {
        let mut documents = Vec::new();
        let mut skipped = Vec::new();
        // Prefixes of sources that could not be read at all: their stored chunks stay.
        let mut unreadable = Vec::new();
        for source in &self.spec.sources {
            // Directory-like sources: (label, where it is mounted or lies).
            let local = if let Some(dir) = &source.directory {
                Some((format!("directory:{}", dir.path), self.base_dir.join(&dir.path), "is not a directory"))
            } else if let Some(pvc) = &source.pvc {
                // In a cluster the ingestion Job mounts the claim at /pvc/<claim>.
                let path = Path::new("/pvc").join(&pvc.claim_name).join(pvc.path.trim_start_matches('/'));
                Some((format!("pvc:{}{}", pvc.claim_name, pvc.path), path, "is not mounted here"))
            } else {
                // In a cluster the ingestion Job mounts the ConfigMap at /configmaps/<name>.
                source.config_map.as_ref().map(|config_map| {
                    let path = Path::new("/configmaps").join(&config_map.name);
                    (format!("configmap:{}", config_map.name), path, "is not mounted here")
                })
            };
            let (label, report) = match (local, &source.url) {
                (Some((label, path, missing)), _) => {
                    if !path.is_dir() {
                        skipped.push(SkippedSource {
                            source: label.clone(),
                            reason: format!("{} {missing}", path.display()),
                        });
                        unreadable.push(label);
                        continue;
                    }
                    (label, loaders::load_dir(&path, &loaders::LoadOptions::default()))
                }
                (None, Some(url)) => (
                    String::new(),
                    loaders::load_urls(std::slice::from_ref(url), &loaders::WebOptions::default()).await,
                ),
                (None, None) => continue,
            };
            let prefix = |id: &str| if label.is_empty() { id.to_owned() } else { format!("{label}/{id}") };
            for (source, reason) in report.skipped {
                let source = prefix(&source);
                unreadable.push(source.clone());
                skipped.push(SkippedSource { source, reason });
            }
            for mut document in report.documents {
                document.source = prefix(&document.source);
                documents.push(document);
            }
        }
        (documents, skipped, unreadable)
    }

    /// Brings the store in line with the sources (see the module documentation).
    pub async fn ingest(&self) -> Result<IngestReport, KbError> {
        self.ingest_with(&|_, _| {}).await
    }

    /// [`ingest`](Self::ingest), calling `progress(embedded, to_embed)` after each batch.
    pub async fn ingest_with(&self, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<IngestReport, KbError> {
        let _one_at_a_time = self.ingesting.lock().await;
        let started = Instant::now();
        let (documents, skipped, unreadable) = self.load().await;
        let config = SplitterConfig {
            chunk_tokens: self.spec.chunking.chunk_tokens as usize,
            overlap_tokens: self.spec.chunking.overlap_tokens as usize,
        };
        let Embedder::Local(service) = &self.embedder else {
            return Err(KbError::Embedding {
                kb: self.name.clone(),
                model: self.embedder.name().to_owned(),
                message: "ingestion needs the embedding model in this process (it measures chunks with the model's \
                          tokenizer); run `hearth-server ingest`"
                    .into(),
            });
        };
        let counter = TokenizerCounter::new(service.tokenizer().clone()).map_err(|e| KbError::Embedding {
            kb: self.name.clone(),
            model: service.name().to_owned(),
            message: format!("its tokenizer cannot count tokens: {e}"),
        })?;
        let stored = self.store.source_points(&self.collection).await.map_err(|e| self.store_error(e))?;

        let mut report = IngestReport { documents: documents.len(), skipped, ..IngestReport::default() };
        let mut wanted: BTreeMap<String, BTreeSet<uuid::Uuid>> = BTreeMap::new();
        let mut missing: Vec<(uuid::Uuid, ChunkPayload)> = Vec::new();
        for document in &documents {
            let ids = wanted.entry(document.source.clone()).or_default();
            let existing = stored.get(&document.source);
            for chunk in splitter::split(&document.text, &config, &counter) {
                let hash = hex(&Sha256::digest(chunk.text.as_bytes()));
                let id = uuid::Uuid::new_v5(
                    &CHUNK_NAMESPACE,
                    format!("{}\n{}\n{hash}", document.source, chunk.index).as_bytes(),
                );
                report.chunks += 1;
                ids.insert(id);
                if existing.is_some_and(|e| e.contains(&id)) {
                    report.unchanged += 1;
                    continue;
                }
                missing.push((
                    id,
                    ChunkPayload {
                        text: chunk.text,
                        source: document.source.clone(),
                        chunk_index: chunk.index,
                        start: chunk.start,
                        end: chunk.end,
                        headings: chunk.headings,
                        content_hash: hash,
                    },
                ));
            }
        }

        // Embed and store what is new. Nothing is deleted until all of it is stored. Similar
        // lengths are embedded together: each batch pads to its longest text, and document
        // order padded real corpora to 2–6× their tokens.
        missing.sort_by_key(|(_, payload)| payload.text.len());
        let mut points = Vec::with_capacity(UPSERT_BATCH);
        let mut embedding = std::time::Duration::ZERO;
        for batch in missing.chunks(EMBED_BATCH) {
            let texts: Vec<String> = batch.iter().map(|(_, p)| p.text.clone()).collect();
            let embed_started = Instant::now();
            let vectors = self.embedder.embed(texts).await.map_err(|message| KbError::Embedding {
                kb: self.name.clone(),
                model: self.embedder.name().to_owned(),
                message,
            })?;
            embedding += embed_started.elapsed();
            for ((id, payload), dense) in batch.iter().zip(vectors) {
                points.push(Point {
                    id: *id,
                    dense,
                    sparse: sparse::document(&payload.text),
                    payload: payload.clone(),
                });
            }
            if points.len() >= UPSERT_BATCH {
                self.store
                    .upsert(&self.collection, std::mem::take(&mut points))
                    .await
                    .map_err(|e| self.store_error(e))?;
            }
            report.added += batch.len();
            progress(report.added, missing.len());
        }
        if !points.is_empty() {
            self.store.upsert(&self.collection, points).await.map_err(|e| self.store_error(e))?;
        }

        // Remove stale chunks: changed chunks of loaded sources, and sources that are gone.
        // A source that could not be read (or lies under one) keeps what it had.
        let protected = |source: &str| {
            source.starts_with(MEMORY_SOURCE_PREFIX)
                || unreadable.iter().any(|u| source == u || source.starts_with(&format!("{u}/")))
        };
        let mut stale: Vec<uuid::Uuid> = Vec::new();
        for (source, ids) in &stored {
            match wanted.get(source) {
                Some(keep) => stale.extend(ids.difference(keep)),
                None if protected(source) => {}
                None => stale.extend(ids),
            }
        }
        if !stale.is_empty() {
            report.removed =
                self.store.delete_points(&self.collection, &stale).await.map_err(|e| self.store_error(e))?;
        }
        report.seconds = started.elapsed().as_secs_f64();
        report.embedding_seconds = embedding.as_secs_f64();
        tracing::info!(knowledge_base = %self.name, documents = report.documents, chunks = report.chunks,
            added = report.added, removed = report.removed, skipped = report.skipped.len(),
            seconds = report.seconds, "ingested");
        Ok(report)
    }

    /// Stores one memory (a short text) under `source`, which must start with
    /// [`MEMORY_SOURCE_PREFIX`] so that ingestion keeps it. The same text under the same source
    /// is stored once. Returns the point's id.
    pub async fn remember(&self, source: &str, text: &str) -> Result<uuid::Uuid, KbError> {
        if !source.starts_with(MEMORY_SOURCE_PREFIX) {
            return Err(KbError::Invalid {
                field: "source",
                message: format!("memory sources start with `{MEMORY_SOURCE_PREFIX}`, got `{source}`"),
            });
        }
        if text.trim().is_empty() {
            return Err(KbError::Invalid { field: "text", message: "a memory must not be empty".into() });
        }
        let hash = hex(&Sha256::digest(text.as_bytes()));
        let id = uuid::Uuid::new_v5(&CHUNK_NAMESPACE, format!("{source}\n0\n{hash}").as_bytes());
        let mut vectors = self.embedder.embed(vec![text.to_owned()]).await.map_err(|message| KbError::Embedding {
            kb: self.name.clone(),
            model: self.embedder.name().to_owned(),
            message,
        })?;
        let dense = vectors.pop().ok_or_else(|| KbError::Embedding {
            kb: self.name.clone(),
            model: self.embedder.name().to_owned(),
            message: "the model returned no vector".into(),
        })?;
        let payload = ChunkPayload {
            text: text.to_owned(),
            source: source.to_owned(),
            chunk_index: 0,
            start: 0,
            end: text.len(),
            headings: Vec::new(),
            content_hash: hash,
        };
        let point = Point { id, dense, sparse: sparse::document(text), payload };
        self.store.upsert(&self.collection, vec![point]).await.map_err(|e| self.store_error(e))?;
        Ok(id)
    }

    /// Retrieves the chunks that best answer `request`.
    pub async fn query(&self, request: &QueryRequest) -> Result<Vec<Retrieved>, KbError> {
        if request.query.trim().is_empty() {
            return Err(KbError::Invalid { field: "query", message: "the query must not be empty".into() });
        }
        let top_k = request.top_k.unwrap_or(self.spec.retrieval.top_k as usize);
        if !(1..=1000).contains(&top_k) {
            return Err(KbError::Invalid { field: "top_k", message: format!("top_k must be 1–1000, got {top_k}") });
        }
        let mode = match request.mode.unwrap_or(self.spec.retrieval.mode) {
            RetrievalMode::Dense => QueryMode::Dense,
            RetrievalMode::Sparse => QueryMode::Sparse,
            RetrievalMode::Hybrid => QueryMode::Hybrid,
        };
        let dense = if mode == QueryMode::Sparse {
            None
        } else {
            let mut vectors = self.embedder.embed(vec![request.query.clone()]).await.map_err(|message| {
                KbError::Embedding { kb: self.name.clone(), model: self.embedder.name().to_owned(), message }
            })?;
            vectors.pop()
        };
        let sparse = (mode != QueryMode::Dense).then(|| sparse::query(&request.query));
        let query = Query {
            dense,
            sparse,
            mode,
            top_k,
            score_threshold: request.score_threshold.or(self.spec.retrieval.score_threshold.map(|t| t as f32)),
            sources: request.sources.clone(),
        };
        let hits = self.store.query(&self.collection, &query).await.map_err(|e| self.store_error(e))?;
        Ok(hits.into_iter().map(Retrieved::from).collect())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
