//! The vector store on a Qdrant server, spoken to over gRPC with `qdrant-client`.
//!
//! A collection has a named dense vector [`DENSE_VECTOR_NAME`] (the spec's size, distance, HNSW
//! parameters and optional int8 scalar quantization), a named sparse vector [`SPARSE_VECTOR_NAME`]
//! with the IDF modifier, and a keyword payload index on `source`. A point's payload holds the
//! [`ChunkPayload`] fields. Queries use the Query API: nearest on one vector for dense and sparse,
//! two prefetches fused by parameterised RRF (`k` = [`RRF_K`]) for hybrid.
//!
//! Results match the embedded store's: queries and points are checked on the client with the same
//! rules and messages before anything is sent, score thresholds mean the same per mode, and ties
//! are ordered by ascending id. Two differences remain. Search is approximate (HNSW) where the
//! embedded store's is exact, so on large collections a hit may differ. An upsert larger than
//! [`UPSERT_BATCH`] points is sent as several requests, each applied whole: if one request fails,
//! the batches before it stay stored (re-running the upsert is idempotent).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use qdrant_client::qdrant as pb;
use qdrant_client::{Qdrant, QdrantError};
use tonic::Code;
use uuid::Uuid;

use super::store::{
    ChunkPayload, CollectionInfo, CollectionSpec, DENSE_VECTOR_NAME, Distance, Hit, Point, Query, QueryMode, RRF_K,
    SPARSE_VECTOR_NAME, StoreError, VectorStore, prefetch_limit,
};

/// Most points sent in one upsert request (about 1 MB at 384 dimensions).
pub const UPSERT_BATCH: usize = 256;

/// Points fetched per scroll page when listing sources.
const SCROLL_PAGE: u32 = 1024;

/// Payload field holding the chunk's source; it carries a keyword index.
const SOURCE_FIELD: &str = "source";

/// Qdrant's HNSW defaults, reported when a collection states none.
const DEFAULT_HNSW_M: usize = 16;
const DEFAULT_EF_CONSTRUCT: usize = 100;

/// How long one request may take (large upserts wait for indexing) and how long connecting may.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a query needs to know about its collection, cached so a query costs one round trip.
#[derive(Debug, Clone, Copy)]
struct Shape {
    dimension: usize,
    distance: Distance,
}

/// A [`VectorStore`] on a Qdrant server. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct QdrantStore {
    client: Qdrant,
    url: String,
    shapes: Arc<RwLock<HashMap<String, Shape>>>,
}

impl std::fmt::Debug for QdrantStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantStore").field("url", &self.url).finish_non_exhaustive()
    }
}

/// How a rejected request (`InvalidArgument`) is reported for one operation.
type Invalid = fn(String) -> StoreError;

impl QdrantStore {
    /// A store on the Qdrant server at `url` (its gRPC port, usually `http://host:6334`), sending
    /// `api_key` with every request when given. Connects lazily: an unreachable server is
    /// reported by the first operation, as [`StoreError::Backend`] naming the URL.
    pub fn connect(url: &str, api_key: Option<String>) -> Result<Self, StoreError> {
        let bad_url = |why: &str| {
            StoreError::Backend(format!(
                "qdrant url {url:?}: {why}; expected http://HOST:PORT or https://HOST:PORT \
                 (the gRPC port, usually 6334)"
            ))
        };
        let uri: tonic::codegen::http::Uri = url.parse().map_err(|e| bad_url(&format!("{e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(bad_url("the scheme must be http or https"));
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(bad_url("no host"));
        }
        let client = Qdrant::from_url(url)
            .api_key(api_key)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .skip_compatibility_check()
            .build()
            .map_err(|e| bad_url(&e.to_string()))?;
        Ok(Self { client, url: url.to_string(), shapes: Arc::default() })
    }

    /// The server URL this store talks to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Asks the server for its version (a readiness check).
    pub async fn server_version(&self) -> Result<String, StoreError> {
        let reply =
            self.client.health_check().await.map_err(|e| self.error(e, "", "health check", StoreError::Backend))?;
        Ok(reply.version)
    }

    /// Maps a client error: a missing collection is [`StoreError::NoCollection`], a rejected
    /// request is what `invalid` makes of the server's message, anything else (connection,
    /// permission, server failure) is [`StoreError::Backend`] naming the URL.
    fn error(&self, e: QdrantError, collection: &str, action: &str, invalid: Invalid) -> StoreError {
        let status = match e {
            QdrantError::ResponseError { status } | QdrantError::ResourceExhaustedError { status, .. } => status,
            other => return StoreError::Backend(format!("qdrant at {}: {action} {collection}: {other}", self.url)),
        };
        match status.code() {
            Code::NotFound if !collection.is_empty() => {
                self.forget(collection);
                StoreError::NoCollection(collection.to_string())
            }
            Code::InvalidArgument => {
                // The collection may have been re-created elsewhere with another shape.
                self.forget(collection);
                invalid(format!("collection {collection}: {}", status.message()))
            }
            code => StoreError::Backend(format!(
                "qdrant at {}: {action} {collection}: {code:?}: {}",
                self.url,
                status.message()
            )),
        }
    }

    fn remember(&self, collection: &str, shape: Shape) {
        self.shapes.write().unwrap_or_else(|e| e.into_inner()).insert(collection.to_string(), shape);
    }

    fn forget(&self, collection: &str) {
        self.shapes.write().unwrap_or_else(|e| e.into_inner()).remove(collection);
    }

    fn cached_shape(&self, collection: &str) -> Option<Shape> {
        self.shapes.read().unwrap_or_else(|e| e.into_inner()).get(collection).copied()
    }

    /// The collection's description from the server.
    async fn info(&self, collection: &str) -> Result<pb::CollectionInfo, StoreError> {
        let request = pb::GetCollectionInfoRequest { collection_name: collection.to_string() };
        let response = self
            .client
            .collection_info(request)
            .await
            .map_err(|e| self.error(e, collection, "read collection", StoreError::Backend))?;
        response.result.ok_or_else(|| {
            StoreError::Backend(format!(
                "qdrant at {}: collection {collection}: info response without a result",
                self.url
            ))
        })
    }

    /// The collection's shape, read from the server (and cached).
    async fn fetch_shape(&self, collection: &str) -> Result<Shape, StoreError> {
        let params = Params::read(collection, &self.info(collection).await?)?;
        self.remember(collection, params.shape);
        Ok(params.shape)
    }

    /// The collection's shape from the cache, or the server.
    async fn shape(&self, collection: &str) -> Result<Shape, StoreError> {
        match self.cached_shape(collection) {
            Some(shape) => Ok(shape),
            None => self.fetch_shape(collection).await,
        }
    }

    async fn create(&self, spec: &CollectionSpec) -> Result<(), StoreError> {
        let dense = dense_params(spec.dimension, spec.distance, spec.hnsw_m, spec.ef_construct, spec.int8_quantization);
        let (vectors, sparse) = vectors_config(dense);
        let request = pb::CreateCollection {
            collection_name: spec.name.clone(),
            vectors_config: Some(vectors),
            sparse_vectors_config: Some(sparse),
            ..Default::default()
        };
        self.client
            .create_collection(request)
            .await
            .map(|_| ())
            .map_err(|e| self.error(e, &spec.name, "create collection", StoreError::InvalidSpec))
    }

    async fn create_source_index(&self, collection: &str) -> Result<(), StoreError> {
        let request = pb::CreateFieldIndexCollection {
            collection_name: collection.to_string(),
            wait: Some(true),
            field_name: SOURCE_FIELD.to_string(),
            field_type: Some(pb::FieldType::Keyword.into()),
            ..Default::default()
        };
        self.client
            .create_field_index(request)
            .await
            .map(|_| ())
            .map_err(|e| self.error(e, collection, "create source index", StoreError::Backend))
    }

    /// Exact number of points matching `filter` (all points without one).
    async fn count_matching(&self, collection: &str, filter: Option<pb::Filter>) -> Result<u64, StoreError> {
        let request = pb::CountPoints {
            collection_name: collection.to_string(),
            filter,
            exact: Some(true),
            ..Default::default()
        };
        let response =
            self.client.count(request).await.map_err(|e| self.error(e, collection, "count", StoreError::Backend))?;
        Ok(response.result.map_or(0, |r| r.count))
    }

    async fn delete_selected(&self, collection: &str, selector: pb::PointsSelector) -> Result<(), StoreError> {
        let request = pb::DeletePoints {
            collection_name: collection.to_string(),
            wait: Some(true),
            points: Some(selector),
            ..Default::default()
        };
        self.client
            .delete_points(request)
            .await
            .map(|_| ())
            .map_err(|e| self.error(e, collection, "delete points", StoreError::Backend))
    }
}

/// A collection's parameters as the server reports them.
struct Params {
    shape: Shape,
    hnsw_m: usize,
    ef_construct: usize,
    int8_quantization: bool,
}

impl Params {
    /// Reads the dense vector's parameters and checks the sparse vector is there with IDF: a
    /// collection without them was not made by this store and cannot serve its queries.
    fn read(collection: &str, info: &pb::CollectionInfo) -> Result<Self, StoreError> {
        let foreign = |what: String| {
            StoreError::Backend(format!(
                "collection {collection} exists but {what}: it was not created by Hearth; delete it or use another name"
            ))
        };
        let config = info.config.as_ref().ok_or_else(|| foreign("its info has no config".to_string()))?;
        let params = config.params.as_ref().ok_or_else(|| foreign("its info has no params".to_string()))?;
        let dense = match params.vectors_config.as_ref().and_then(|c| c.config.as_ref()) {
            Some(pb::vectors_config::Config::ParamsMap(map)) => map.map.get(DENSE_VECTOR_NAME),
            _ => None,
        }
        .ok_or_else(|| foreign(format!("has no dense vector named {DENSE_VECTOR_NAME:?}")))?;
        let distance = match pb::Distance::try_from(dense.distance) {
            Ok(pb::Distance::Cosine) => Distance::Cosine,
            Ok(pb::Distance::Dot) => Distance::Dot,
            Ok(pb::Distance::Euclid) => Distance::Euclid,
            _ => return Err(foreign(format!("its dense vector has unsupported distance {}", dense.distance))),
        };
        let sparse = params.sparse_vectors_config.as_ref().and_then(|c| c.map.get(SPARSE_VECTOR_NAME));
        if sparse.and_then(|s| s.modifier) != Some(pb::Modifier::Idf.into()) {
            return Err(foreign(format!("has no sparse vector {SPARSE_VECTOR_NAME:?} with the IDF modifier")));
        }
        // Per-vector settings override the collection's.
        let hnsw = |pick: fn(&pb::HnswConfigDiff) -> Option<u64>| {
            dense.hnsw_config.as_ref().and_then(pick).or_else(|| config.hnsw_config.as_ref().and_then(pick))
        };
        let quantization = dense.quantization_config.as_ref().or(config.quantization_config.as_ref());
        let int8_quantization = matches!(
            quantization.and_then(|q| q.quantization.as_ref()),
            Some(pb::quantization_config::Quantization::Scalar(s)) if s.r#type == i32::from(pb::QuantizationType::Int8)
        );
        let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Ok(Self {
            shape: Shape { dimension: to_usize(dense.size), distance },
            hnsw_m: hnsw(|h| h.m).map_or(DEFAULT_HNSW_M, to_usize),
            ef_construct: hnsw(|h| h.ef_construct).map_or(DEFAULT_EF_CONSTRUCT, to_usize),
            int8_quantization,
        })
    }
}

/// Checks a point against its collection with the embedded store's rules and messages, so a bad
/// batch is refused before any of it is sent.
fn check_point(collection: &str, dimension: usize, point: &Point) -> Result<(), StoreError> {
    let invalid = |msg: String| StoreError::InvalidPoint(format!("collection {collection}: point {}: {msg}", point.id));
    if point.dense.len() != dimension {
        return Err(invalid(format!(
            "dense vector has the wrong length: expected {dimension}, got {}",
            point.dense.len()
        )));
    }
    if point.dense.iter().any(|v| !v.is_finite()) {
        return Err(invalid("dense vector has a non-finite value".to_string()));
    }
    point.sparse.check().map_err(|e| invalid(format!("sparse vector: {e}")))
}

fn point_id(id: Uuid) -> pb::PointId {
    pb::PointId::from(id.to_string())
}

fn parse_point_id(id: Option<&pb::PointId>, collection: &str) -> Result<Uuid, StoreError> {
    match id.and_then(|id| id.point_id_options.as_ref()) {
        Some(pb::point_id::PointIdOptions::Uuid(s)) => Uuid::parse_str(s)
            .map_err(|e| StoreError::Backend(format!("collection {collection}: point id {s:?} is not a UUID: {e}"))),
        other => Err(StoreError::Backend(format!("collection {collection}: expected a UUID point id, got {other:?}"))),
    }
}

fn string_value(s: String) -> pb::Value {
    pb::Value::from(s)
}

fn integer_value(n: usize) -> pb::Value {
    pb::Value::from(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The chunk's fields as a Qdrant payload.
pub fn payload_to_qdrant(payload: ChunkPayload) -> HashMap<String, pb::Value> {
    let headings = pb::Value {
        kind: Some(pb::value::Kind::ListValue(pb::ListValue {
            values: payload.headings.into_iter().map(string_value).collect(),
        })),
    };
    HashMap::from([
        ("text".to_string(), string_value(payload.text)),
        (SOURCE_FIELD.to_string(), string_value(payload.source)),
        ("chunk_index".to_string(), integer_value(payload.chunk_index)),
        ("start".to_string(), integer_value(payload.start)),
        ("end".to_string(), integer_value(payload.end)),
        ("headings".to_string(), headings),
        ("content_hash".to_string(), string_value(payload.content_hash)),
    ])
}

/// A Qdrant payload back as the chunk's fields; the error names the field that is missing or of
/// the wrong type.
pub fn payload_from_qdrant(mut payload: HashMap<String, pb::Value>) -> Result<ChunkPayload, String> {
    let mut take = |field: &str| payload.remove(field).and_then(|v| v.kind).ok_or(format!("payload has no {field:?}"));
    let string = |field: &str, kind: pb::value::Kind| match kind {
        pb::value::Kind::StringValue(s) => Ok(s),
        other => Err(format!("payload field {field:?} should be a string, got {other:?}")),
    };
    let integer = |field: &str, kind: pb::value::Kind| match kind {
        pb::value::Kind::IntegerValue(n) => {
            usize::try_from(n).map_err(|_| format!("payload field {field:?} should be non-negative, got {n}"))
        }
        other => Err(format!("payload field {field:?} should be an integer, got {other:?}")),
    };
    let headings = match take("headings")? {
        pb::value::Kind::ListValue(list) => list
            .values
            .into_iter()
            .map(|v| match v.kind {
                Some(pb::value::Kind::StringValue(s)) => Ok(s),
                other => Err(format!("payload field \"headings\" should hold strings, got {other:?}")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        other => return Err(format!("payload field \"headings\" should be a list, got {other:?}")),
    };
    Ok(ChunkPayload {
        text: string("text", take("text")?)?,
        source: string(SOURCE_FIELD, take(SOURCE_FIELD)?)?,
        chunk_index: integer("chunk_index", take("chunk_index")?)?,
        start: integer("start", take("start")?)?,
        end: integer("end", take("end")?)?,
        headings,
        content_hash: string("content_hash", take("content_hash")?)?,
    })
}

fn point_struct(point: Point) -> pb::PointStruct {
    let mut vectors = HashMap::from([(DENSE_VECTOR_NAME.to_string(), pb::Vector::new_dense(point.dense))]);
    // A point without terms simply has no sparse vector, as Qdrant stores it.
    if !point.sparse.is_empty() {
        vectors
            .insert(SPARSE_VECTOR_NAME.to_string(), pb::Vector::new_sparse(point.sparse.indices, point.sparse.values));
    }
    pb::PointStruct {
        id: Some(point_id(point.id)),
        payload: payload_to_qdrant(point.payload),
        vectors: Some(pb::Vectors::from(pb::NamedVectors { vectors })),
    }
}

/// Condition `source` is one of `sources`.
fn sources_filter(sources: &[String]) -> pb::Filter {
    let condition = pb::FieldCondition {
        key: SOURCE_FIELD.to_string(),
        r#match: Some(pb::Match {
            match_value: Some(pb::r#match::MatchValue::Keywords(pb::RepeatedStrings { strings: sources.to_vec() })),
        }),
        ..Default::default()
    };
    pb::Filter { must: vec![pb::Condition::from(condition)], ..Default::default() }
}

/// Condition `source` equals `source`.
fn source_filter(source: &str) -> pb::Filter {
    let condition = pb::FieldCondition {
        key: SOURCE_FIELD.to_string(),
        r#match: Some(pb::Match { match_value: Some(pb::r#match::MatchValue::Keyword(source.to_string())) }),
        ..Default::default()
    };
    pb::Filter { must: vec![pb::Condition::from(condition)], ..Default::default() }
}

fn ids_filter(ids: &BTreeSet<Uuid>) -> pb::Filter {
    let condition = pb::HasIdCondition { has_id: ids.iter().map(|id| point_id(*id)).collect() };
    pb::Filter { must: vec![pb::Condition::from(condition)], ..Default::default() }
}

fn nearest(input: pb::VectorInput) -> pb::Query {
    pb::Query { variant: Some(pb::query::Variant::Nearest(input)) }
}

/// The Query API request for a checked query.
fn query_request(collection: &str, query: &Query) -> Result<pb::QueryPoints, StoreError> {
    let missing = |what: &str| StoreError::InvalidQuery(format!("collection {collection}: {what} vector missing"));
    let dense = || query.dense.clone().map(pb::VectorInput::new_dense).ok_or_else(|| missing("dense"));
    let sparse = || {
        let sparse = query.sparse.as_ref().ok_or_else(|| missing("sparse"))?;
        Ok::<_, StoreError>(pb::VectorInput::new_sparse(sparse.indices.clone(), sparse.values.clone()))
    };
    let filter = query.sources.as_deref().map(sources_filter);
    let base = pb::QueryPoints {
        collection_name: collection.to_string(),
        filter: filter.clone(),
        score_threshold: query.score_threshold,
        limit: Some(query.top_k as u64),
        with_payload: Some(pb::WithPayloadSelector::from(true)),
        ..Default::default()
    };
    Ok(match query.mode {
        QueryMode::Dense => {
            pb::QueryPoints { query: Some(nearest(dense()?)), using: Some(DENSE_VECTOR_NAME.to_string()), ..base }
        }
        QueryMode::Sparse => {
            pb::QueryPoints { query: Some(nearest(sparse()?)), using: Some(SPARSE_VECTOR_NAME.to_string()), ..base }
        }
        QueryMode::Hybrid => {
            let limit = Some(prefetch_limit(query.top_k) as u64);
            let prefetch = |input: pb::VectorInput, using: &str| pb::PrefetchQuery {
                query: Some(nearest(input)),
                using: Some(using.to_string()),
                filter: filter.clone(),
                limit,
                ..Default::default()
            };
            let rrf = pb::Rrf { k: Some(RRF_K as u32), weights: Vec::new() };
            let mut prefetches = vec![prefetch(dense()?, DENSE_VECTOR_NAME)];
            // A query without terms (say, only stop words) matches nothing sparse: fuse the dense
            // list alone, as the embedded store does, rather than send an empty sparse vector.
            if query.sparse.as_ref().is_some_and(|s| !s.is_empty()) {
                prefetches.push(prefetch(sparse()?, SPARSE_VECTOR_NAME));
            }
            pb::QueryPoints {
                prefetch: prefetches,
                query: Some(pb::Query { variant: Some(pb::query::Variant::Rrf(rrf)) }),
                ..base
            }
        }
    })
}

impl VectorStore for QdrantStore {
    async fn ensure_collection(&self, spec: &CollectionSpec) -> Result<CollectionInfo, StoreError> {
        spec.check()?;
        let info = match self.info(&spec.name).await {
            Ok(info) => info,
            Err(StoreError::NoCollection(_)) => match self.create(spec).await {
                Ok(()) => self.info(&spec.name).await?,
                // Someone else may have created it meanwhile: then use theirs.
                Err(e) => self.info(&spec.name).await.map_err(|_| e)?,
            },
            Err(e) => return Err(e),
        };
        let params = Params::read(&spec.name, &info)?;
        if params.shape.dimension != spec.dimension {
            return Err(StoreError::DimensionMismatch {
                collection: spec.name.clone(),
                existing: params.shape.dimension,
                wanted: spec.dimension,
            });
        }
        self.remember(&spec.name, params.shape);
        if !info.payload_schema.contains_key(SOURCE_FIELD) {
            self.create_source_index(&spec.name).await?;
        }
        Ok(CollectionInfo {
            name: spec.name.clone(),
            dimension: params.shape.dimension,
            distance: params.shape.distance,
            points: self.count_matching(&spec.name, None).await?,
            hnsw_m: params.hnsw_m,
            ef_construct: params.ef_construct,
            int8_quantization: params.int8_quantization,
        })
    }

    async fn upsert(&self, collection: &str, points: Vec<Point>) -> Result<(), StoreError> {
        // Always read the shape from the server: a stale dimension must not let a bad batch half land.
        let shape = self.fetch_shape(collection).await?;
        for point in &points {
            check_point(collection, shape.dimension, point)?;
        }
        let mut points = points.into_iter().map(point_struct);
        loop {
            let batch: Vec<pb::PointStruct> = points.by_ref().take(UPSERT_BATCH).collect();
            if batch.is_empty() {
                return Ok(());
            }
            let request = pb::UpsertPoints {
                collection_name: collection.to_string(),
                wait: Some(true),
                points: batch,
                ..Default::default()
            };
            self.client
                .upsert_points(request)
                .await
                .map_err(|e| self.error(e, collection, "upsert", StoreError::InvalidPoint))?;
        }
    }

    async fn delete_points(&self, collection: &str, ids: &[Uuid]) -> Result<u64, StoreError> {
        let ids: BTreeSet<Uuid> = ids.iter().copied().collect();
        if ids.is_empty() {
            // Still report a missing collection, as the embedded store does.
            self.count_matching(collection, None).await?;
            return Ok(0);
        }
        let existing = self.count_matching(collection, Some(ids_filter(&ids))).await?;
        if existing > 0 {
            let selector = pb::PointsSelector::from(ids.iter().map(|id| point_id(*id)).collect::<Vec<_>>());
            self.delete_selected(collection, selector).await?;
        }
        Ok(existing)
    }

    async fn delete_source(&self, collection: &str, source: &str) -> Result<u64, StoreError> {
        let existing = self.count_matching(collection, Some(source_filter(source))).await?;
        if existing > 0 {
            self.delete_selected(collection, pb::PointsSelector::from(source_filter(source))).await?;
        }
        Ok(existing)
    }

    async fn source_points(&self, collection: &str) -> Result<BTreeMap<String, BTreeSet<Uuid>>, StoreError> {
        let mut out: BTreeMap<String, BTreeSet<Uuid>> = BTreeMap::new();
        let mut offset = None;
        loop {
            let request = pb::ScrollPoints {
                collection_name: collection.to_string(),
                offset,
                limit: Some(SCROLL_PAGE),
                with_payload: Some(pb::WithPayloadSelector::from(vec![SOURCE_FIELD])),
                with_vectors: Some(pb::WithVectorsSelector::from(false)),
                ..Default::default()
            };
            let page = self
                .client
                .scroll(request)
                .await
                .map_err(|e| self.error(e, collection, "list sources", StoreError::Backend))?;
            for point in page.result {
                let id = parse_point_id(point.id.as_ref(), collection)?;
                let source = match point.payload.get(SOURCE_FIELD).and_then(|v| v.kind.as_ref()) {
                    Some(pb::value::Kind::StringValue(s)) => s.clone(),
                    other => {
                        return Err(StoreError::Backend(format!(
                            "collection {collection}: point {id} has no string source, got {other:?}"
                        )));
                    }
                };
                out.entry(source).or_default().insert(id);
            }
            match page.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(out),
            }
        }
    }

    async fn query(&self, collection: &str, query: &Query) -> Result<Vec<Hit>, StoreError> {
        let shape = self.shape(collection).await?;
        query.check(collection, shape.dimension)?;
        // Nothing can match an empty source list, or a sparse query without terms.
        let no_terms = query.mode == QueryMode::Sparse && query.sparse.as_ref().is_some_and(|s| s.is_empty());
        if no_terms || query.sources.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Vec::new());
        }
        let request = query_request(collection, query)?;
        let response = self
            .client
            .query(request)
            .await
            .map_err(|e| self.error(e, collection, "query", StoreError::InvalidQuery))?;
        let mut hits = response
            .result
            .into_iter()
            .map(|point| {
                let id = parse_point_id(point.id.as_ref(), collection)?;
                let payload = payload_from_qdrant(point.payload)
                    .map_err(|e| StoreError::Backend(format!("collection {collection}: point {id}: {e}")))?;
                Ok(Hit { id, score: point.score, payload })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Only a dense Euclid score is a distance (lower is better); every other score is higher-is-better.
        let lower_is_better = query.mode == QueryMode::Dense && !shape.distance.higher_is_better();
        // The server applies the threshold too; applying it here keeps the hybrid meaning (on the
        // fused score) whatever the server version does with it.
        if let Some(t) = query.score_threshold {
            hits.retain(|h| if lower_is_better { h.score <= t } else { h.score >= t });
        }
        hits.sort_by(|a, b| {
            let by_score = if lower_is_better { a.score.total_cmp(&b.score) } else { b.score.total_cmp(&a.score) };
            by_score.then_with(|| a.id.cmp(&b.id))
        });
        hits.truncate(query.top_k);
        Ok(hits)
    }

    async fn count(&self, collection: &str) -> Result<u64, StoreError> {
        self.count_matching(collection, None).await
    }

    async fn delete_collection(&self, collection: &str) -> Result<bool, StoreError> {
        self.forget(collection);
        let request = pb::DeleteCollection { collection_name: collection.to_string(), timeout: None };
        match self.client.delete_collection(request).await {
            Ok(response) => Ok(response.result),
            Err(e) => match self.error(e, collection, "delete collection", StoreError::Backend) {
                StoreError::NoCollection(_) => Ok(false),
                other => Err(other),
            },
        }
    }
}

/// A Hearth collection's vectors: `dense` with `dense`'s parameters, and the sparse `text`
/// with the IDF modifier.
pub fn vectors_config(dense: pb::VectorParams) -> (pb::VectorsConfig, pb::SparseVectorConfig) {
    let sparse = pb::SparseVectorParams { index: None, modifier: Some(pb::Modifier::Idf.into()) };
    (
        pb::VectorsConfig {
            config: Some(pb::vectors_config::Config::ParamsMap(pb::VectorParamsMap {
                map: HashMap::from([(DENSE_VECTOR_NAME.to_string(), dense)]),
            })),
        },
        pb::SparseVectorConfig { map: HashMap::from([(SPARSE_VECTOR_NAME.to_string(), sparse)]) },
    )
}

/// The dense vector's parameters as Qdrant takes them (and, in the test server, describes them).
pub fn dense_params(
    dimension: usize,
    distance: Distance,
    hnsw_m: usize,
    ef_construct: usize,
    int8_quantization: bool,
) -> pb::VectorParams {
    let distance = match distance {
        Distance::Cosine => pb::Distance::Cosine,
        Distance::Dot => pb::Distance::Dot,
        Distance::Euclid => pb::Distance::Euclid,
    };
    let quantization = int8_quantization.then(|| pb::QuantizationConfig {
        quantization: Some(pb::quantization_config::Quantization::Scalar(pb::ScalarQuantization {
            r#type: pb::QuantizationType::Int8.into(),
            ..Default::default()
        })),
    });
    pb::VectorParams {
        size: dimension as u64,
        distance: distance.into(),
        hnsw_config: Some(pb::HnswConfigDiff {
            m: Some(hnsw_m as u64),
            ef_construct: Some(ef_construct as u64),
            ..Default::default()
        }),
        quantization_config: quantization,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips() {
        let payload = ChunkPayload {
            text: "hello".to_string(),
            source: "a.md".to_string(),
            chunk_index: 3,
            start: 10,
            end: 20,
            headings: vec!["A".to_string(), "B".to_string()],
            content_hash: "ff".to_string(),
        };
        assert_eq!(payload_from_qdrant(payload_to_qdrant(payload.clone())), Ok(payload));
    }

    #[test]
    fn payload_with_a_wrong_type_names_the_field() {
        let mut map = payload_to_qdrant(ChunkPayload::default());
        map.insert("start".to_string(), pb::Value::from("x"));
        let err = payload_from_qdrant(map).expect_err("start is a string");
        assert!(err.contains("\"start\"") && err.contains("integer"), "{err}");
    }

    #[test]
    fn connect_refuses_urls_without_http_scheme_or_host() {
        for url in ["localhost:6334", "ftp://h:1", "not a url", "http://"] {
            match QdrantStore::connect(url, None) {
                Err(StoreError::Backend(msg)) => assert!(msg.contains(url), "{msg}"),
                other => panic!("{url}: expected Backend, got {other:?}"),
            }
        }
        assert!(QdrantStore::connect("http://qdrant.db:6334", Some("key".to_string())).is_ok());
    }

    #[test]
    fn hybrid_request_has_two_filtered_prefetches_and_rrf_k() {
        let query = Query {
            dense: Some(vec![1.0, 0.0]),
            sparse: Some(super::super::store::SparseVector::new(vec![3], vec![1.0])),
            mode: QueryMode::Hybrid,
            top_k: 5,
            score_threshold: Some(0.01),
            sources: Some(vec!["a".to_string()]),
        };
        let request = query_request("kb", &query).expect("request");
        assert_eq!(request.prefetch.len(), 2);
        for (prefetch, using) in request.prefetch.iter().zip([DENSE_VECTOR_NAME, SPARSE_VECTOR_NAME]) {
            assert_eq!(prefetch.using.as_deref(), Some(using));
            assert_eq!(prefetch.limit, Some(prefetch_limit(5) as u64));
            assert_eq!(prefetch.filter, request.filter);
            assert_eq!(prefetch.score_threshold, None, "prefetches are not thresholded");
        }
        assert_eq!(
            request.query.and_then(|q| q.variant),
            Some(pb::query::Variant::Rrf(pb::Rrf { k: Some(RRF_K as u32), weights: vec![] }))
        );
        assert_eq!((request.limit, request.score_threshold), (Some(5), Some(0.01)));
    }
}
