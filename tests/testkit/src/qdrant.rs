//! Test support: an in-process Qdrant gRPC server on the embedded store, so the Qdrant store is
//! tested over a real connection, with `qdrant-client`'s own generated server traits.
//!
//! It implements the calls [`QdrantStore`](hearth_knowledge::qdrant::QdrantStore) makes (create, describe,
//! delete and check collections; create a payload index; upsert, delete, count, scroll and query
//! points) by translating them to an [`EmbeddedStore`], and answers every other call
//! `Unimplemented`. Requests outside what the embedded store can do (other vector names, filters
//! on fields other than `source`, fusion without `k` = [`RRF_K`], …) are refused rather than
//! approximated, so a change in what the client sends shows up as a failing test. Errors use
//! Qdrant's status codes: `NotFound` for a missing collection, `InvalidArgument` for bad input.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use qdrant_client::qdrant as pb;
use qdrant_client::qdrant::collections_server::{Collections, CollectionsServer};
use qdrant_client::qdrant::points_server::{Points, PointsServer};
use qdrant_client::qdrant::qdrant_server::{Qdrant, QdrantServer};
use tonic::codegen::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use hearth_knowledge::embedded::EmbeddedStore;
use hearth_knowledge::qdrant::{payload_from_qdrant, payload_to_qdrant};
use hearth_knowledge::store::{
    CollectionInfo, CollectionSpec, DENSE_VECTOR_NAME, Distance, Point, Query, QueryMode, RRF_K, SPARSE_VECTOR_NAME,
    SparseVector, StoreError, VectorStore, prefetch_limit,
};

/// Version the fake reports in its health check.
pub const FAKE_VERSION: &str = "1.20.0";

/// Largest request the fake accepts, as Qdrant's default `max_request_size_mb`.
const MAX_REQUEST_BYTES: usize = 32 << 20;

/// A running fake Qdrant server; stops when dropped.
#[derive(Debug)]
pub struct FakeQdrant {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl FakeQdrant {
    /// Serves `store` on a free loopback port; with `api_key`, requests without that `api-key`
    /// header are refused `Unauthenticated`. Must be called inside a tokio runtime.
    pub async fn start(store: EmbeddedStore, api_key: Option<String>) -> std::io::Result<Self> {
        let incoming = TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = incoming.local_addr()?;
        let service = Arc::new(FakeService { store, meta: tokio::sync::Mutex::new(()), indexes: Mutex::default() });
        let check = ApiKeyCheck { api_key: api_key.map(Arc::from) };
        let collections =
            CollectionsServer::from_arc(Arc::clone(&service)).max_decoding_message_size(MAX_REQUEST_BYTES);
        let points = PointsServer::from_arc(Arc::clone(&service)).max_decoding_message_size(MAX_REQUEST_BYTES);
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let router = Server::builder()
            .add_service(InterceptedService::new(collections, check.clone()))
            .add_service(InterceptedService::new(points, check.clone()))
            .add_service(InterceptedService::new(QdrantServer::from_arc(service), check));
        let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            // A dropped sender stops the server as well.
            let _ = stop.await;
        }));
        Ok(Self { addr, shutdown: Some(shutdown), task: Some(task) })
    }

    /// The URL to give `QdrantStore::connect`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and waits until the port is closed.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FakeQdrant {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Refuses requests without the configured `api-key` header, as Qdrant does.
#[derive(Clone)]
struct ApiKeyCheck {
    api_key: Option<Arc<str>>,
}

impl Interceptor for ApiKeyCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(want) = &self.api_key else { return Ok(request) };
        match request.metadata().get("api-key").and_then(|v| v.to_str().ok()) {
            Some(got) if got == &**want => Ok(request),
            _ => Err(Status::unauthenticated("Invalid api-key")),
        }
    }
}

struct FakeService {
    store: EmbeddedStore,
    /// Serialises creating, describing and deleting collections (describing probes the store).
    meta: tokio::sync::Mutex<()>,
    /// Payload indexes asked for, per collection: recorded and reported, not needed for search.
    indexes: Mutex<HashMap<String, BTreeSet<String>>>,
}

/// The status Qdrant answers for a store error.
fn status(e: StoreError) -> Status {
    match e {
        StoreError::NoCollection(name) => Status::not_found(format!("Not found: Collection `{name}` doesn't exist!")),
        e @ (StoreError::InvalidQuery(_)
        | StoreError::InvalidPoint(_)
        | StoreError::InvalidSpec(_)
        | StoreError::DimensionMismatch { .. }) => Status::invalid_argument(format!("Wrong input: {e}")),
        StoreError::Backend(msg) => Status::internal(msg),
    }
}

fn unsupported(what: impl std::fmt::Display) -> Status {
    Status::unimplemented(format!("the fake Qdrant does not support {what}"))
}

fn completed() -> pb::PointsOperationResponse {
    pb::PointsOperationResponse {
        result: Some(pb::UpdateResult { operation_id: Some(0), status: pb::UpdateStatus::Completed.into() }),
        ..Default::default()
    }
}

fn parse_id(id: Option<&pb::PointId>) -> Result<Uuid, Status> {
    match id.and_then(|id| id.point_id_options.as_ref()) {
        Some(pb::point_id::PointIdOptions::Uuid(s)) => {
            Uuid::parse_str(s).map_err(|e| Status::invalid_argument(format!("Wrong input: bad point id {s:?}: {e}")))
        }
        Some(pb::point_id::PointIdOptions::Num(_)) => Err(unsupported("numeric point ids")),
        None => Err(Status::invalid_argument("Wrong input: point id missing")),
    }
}

fn pb_id(id: Uuid) -> pb::PointId {
    pb::PointId::from(id.to_string())
}

/// The collection spec a create request asks for, if the embedded store can hold it.
fn spec_from_request(request: &pb::CreateCollection) -> Result<CollectionSpec, Status> {
    let map = match request.vectors_config.as_ref().and_then(|c| c.config.as_ref()) {
        Some(pb::vectors_config::Config::ParamsMap(map)) => &map.map,
        _ => return Err(unsupported("collections without named vectors")),
    };
    let dense = match map.get(DENSE_VECTOR_NAME) {
        Some(dense) if map.len() == 1 => dense,
        _ => return Err(unsupported(format!("dense vectors other than one named {DENSE_VECTOR_NAME:?}"))),
    };
    let sparse = request.sparse_vectors_config.as_ref().map(|c| &c.map);
    match sparse.and_then(|m| m.get(SPARSE_VECTOR_NAME).filter(|_| m.len() == 1)) {
        Some(s) if s.modifier == Some(pb::Modifier::Idf.into()) => {}
        _ => return Err(unsupported(format!("sparse vectors other than one named {SPARSE_VECTOR_NAME:?} with IDF"))),
    }
    let distance = match pb::Distance::try_from(dense.distance) {
        Ok(pb::Distance::Cosine) => Distance::Cosine,
        Ok(pb::Distance::Dot) => Distance::Dot,
        Ok(pb::Distance::Euclid) => Distance::Euclid,
        _ => return Err(unsupported(format!("distance {}", dense.distance))),
    };
    let hnsw = |pick: fn(&pb::HnswConfigDiff) -> Option<u64>| {
        dense.hnsw_config.as_ref().and_then(pick).or_else(|| request.hnsw_config.as_ref().and_then(pick))
    };
    let int8_quantization = match dense.quantization_config.as_ref().or(request.quantization_config.as_ref()) {
        None => false,
        Some(pb::QuantizationConfig { quantization: Some(pb::quantization_config::Quantization::Scalar(s)) })
            if s.r#type == i32::from(pb::QuantizationType::Int8) =>
        {
            true
        }
        Some(other) => return Err(unsupported(format!("quantization {other:?}"))),
    };
    let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    Ok(CollectionSpec {
        name: request.collection_name.clone(),
        dimension: to_usize(dense.size),
        distance,
        hnsw_m: hnsw(|h| h.m).map_or(16, to_usize),
        ef_construct: hnsw(|h| h.ef_construct).map_or(100, to_usize),
        int8_quantization,
    })
}

/// A collection as Qdrant describes it.
fn describe_pb(info: &CollectionInfo, indexed: Option<&BTreeSet<String>>) -> pb::CollectionInfo {
    let dense = hearth_knowledge::qdrant::dense_params(
        info.dimension,
        info.distance,
        info.hnsw_m,
        info.ef_construct,
        info.int8_quantization,
    );
    let (vectors, sparse) = hearth_knowledge::qdrant::vectors_config(dense);
    let params = pb::CollectionParams {
        shard_number: 1,
        vectors_config: Some(vectors),
        sparse_vectors_config: Some(sparse),
        ..Default::default()
    };
    let payload_schema = indexed
        .into_iter()
        .flatten()
        .map(|field| {
            let schema =
                pb::PayloadSchemaInfo { data_type: pb::PayloadSchemaType::Keyword.into(), ..Default::default() };
            (field.clone(), schema)
        })
        .collect();
    pb::CollectionInfo {
        status: pb::CollectionStatus::Green.into(),
        segments_count: 1,
        config: Some(pb::CollectionConfig {
            params: Some(params),
            // Qdrant's collection-wide defaults; the dense vector's own settings override them.
            hnsw_config: Some(pb::HnswConfigDiff {
                m: Some(16),
                ef_construct: Some(100),
                full_scan_threshold: Some(10_000),
                ..Default::default()
            }),
            ..Default::default()
        }),
        payload_schema,
        points_count: Some(info.points),
        indexed_vectors_count: Some(0),
        ..Default::default()
    }
}

/// The point an upsert carries, in the embedded store's terms.
#[allow(deprecated)] // Older clients send vectors in the deprecated fields; accept both.
fn point_from_pb(point: pb::PointStruct) -> Result<Point, Status> {
    let id = parse_id(point.id.as_ref())?;
    let vectors = match point.vectors.and_then(|v| v.vectors_options) {
        Some(pb::vectors::VectorsOptions::Vectors(named)) => named.vectors,
        _ => return Err(unsupported("points without named vectors")),
    };
    let mut dense = None;
    let mut sparse = SparseVector::default();
    for (name, vector) in vectors {
        match (name.as_str(), vector.vector, vector.indices) {
            (DENSE_VECTOR_NAME, Some(pb::vector::Vector::Dense(d)), _) => dense = Some(d.data),
            (DENSE_VECTOR_NAME, None, None) => dense = Some(vector.data),
            (SPARSE_VECTOR_NAME, Some(pb::vector::Vector::Sparse(s)), _) => {
                sparse = SparseVector::new(s.indices, s.values)
            }
            (SPARSE_VECTOR_NAME, None, Some(indices)) => sparse = SparseVector::new(indices.data, vector.data),
            (DENSE_VECTOR_NAME | SPARSE_VECTOR_NAME, _, _) => {
                return Err(Status::invalid_argument(format!("Wrong input: vector {name:?} has the wrong kind")));
            }
            _ => return Err(Status::invalid_argument(format!("Wrong input: Not existing vector name error: {name}"))),
        }
    }
    let dense =
        dense.ok_or_else(|| Status::invalid_argument(format!("Wrong input: point {id} has no vector \"dense\"")))?;
    let payload =
        payload_from_qdrant(point.payload).map_err(|e| Status::invalid_argument(format!("Wrong input: {e}")))?;
    Ok(Point { id, dense, sparse, payload })
}

/// One condition of a filter, in the forms the fake can evaluate.
enum Condition {
    /// `source` is (or, negated, is not) one of these.
    Source { sources: BTreeSet<String>, negated: bool },
    /// The point id is one of these.
    Ids(BTreeSet<Uuid>),
    /// A nested filter.
    Filter(Filter),
}

/// A filter over (id, source), compiled from Qdrant's.
struct Filter {
    must: Vec<Condition>,
    should: Vec<Condition>,
    must_not: Vec<Condition>,
}

impl Filter {
    fn compile(filter: &pb::Filter) -> Result<Self, Status> {
        if filter.min_should.is_some() {
            return Err(unsupported("min_should filters"));
        }
        let compile_all =
            |conditions: &[pb::Condition]| conditions.iter().map(Condition::compile).collect::<Result<Vec<_>, _>>();
        Ok(Self {
            must: compile_all(&filter.must)?,
            should: compile_all(&filter.should)?,
            must_not: compile_all(&filter.must_not)?,
        })
    }

    fn matches(&self, id: Uuid, source: &str) -> bool {
        self.must.iter().all(|c| c.matches(id, source))
            && (self.should.is_empty() || self.should.iter().any(|c| c.matches(id, source)))
            && !self.must_not.iter().any(|c| c.matches(id, source))
    }
}

impl Condition {
    fn compile(condition: &pb::Condition) -> Result<Self, Status> {
        use pb::condition::ConditionOneOf;
        use pb::r#match::MatchValue;
        match &condition.condition_one_of {
            Some(ConditionOneOf::Field(field)) if field.key == "source" => {
                let (sources, negated) = match field.r#match.as_ref().and_then(|m| m.match_value.as_ref()) {
                    Some(MatchValue::Keyword(s)) => (BTreeSet::from([s.clone()]), false),
                    Some(MatchValue::Keywords(list)) => (list.strings.iter().cloned().collect(), false),
                    Some(MatchValue::ExceptKeywords(list)) => (list.strings.iter().cloned().collect(), true),
                    other => return Err(unsupported(format!("matching source by {other:?}"))),
                };
                Ok(Condition::Source { sources, negated })
            }
            Some(ConditionOneOf::HasId(has)) => {
                Ok(Condition::Ids(has.has_id.iter().map(|id| parse_id(Some(id))).collect::<Result<_, _>>()?))
            }
            Some(ConditionOneOf::Filter(inner)) => Ok(Condition::Filter(Filter::compile(inner)?)),
            other => Err(unsupported(format!("filter condition {other:?}"))),
        }
    }

    fn matches(&self, id: Uuid, source: &str) -> bool {
        match self {
            Condition::Source { sources, negated } => sources.contains(source) != *negated,
            Condition::Ids(ids) => ids.contains(&id),
            Condition::Filter(filter) => filter.matches(id, source),
        }
    }
}

/// The sources a query filter restricts to: the embedded store filters queries by source only.
fn query_sources(filter: Option<&pb::Filter>) -> Result<Option<Vec<String>>, Status> {
    let Some(filter) = filter else { return Ok(None) };
    match Filter::compile(filter)? {
        Filter { must, should, must_not } if should.is_empty() && must_not.is_empty() && must.len() == 1 => {
            match must.into_iter().next() {
                Some(Condition::Source { sources, negated: false }) => Ok(Some(sources.into_iter().collect())),
                _ => Err(unsupported("query filters other than `source` is one of a list")),
            }
        }
        _ => Err(unsupported("query filters other than one `must` condition on source")),
    }
}

/// The vector a nearest-neighbour query names, checked against the vector it uses.
fn nearest_vector(
    query: Option<&pb::Query>,
    using: Option<&str>,
) -> Result<(Option<Vec<f32>>, Option<SparseVector>), Status> {
    let input = match query.and_then(|q| q.variant.as_ref()) {
        Some(pb::query::Variant::Nearest(input)) => input,
        other => return Err(unsupported(format!("query {other:?}"))),
    };
    match (using, input.variant.as_ref()) {
        (Some(DENSE_VECTOR_NAME), Some(pb::vector_input::Variant::Dense(d))) => Ok((Some(d.data.clone()), None)),
        (Some(SPARSE_VECTOR_NAME), Some(pb::vector_input::Variant::Sparse(s))) => {
            Ok((None, Some(SparseVector::new(s.indices.clone(), s.values.clone()))))
        }
        (using, _) => Err(unsupported(format!("nearest on vector {using:?} with input {:?}", input.variant))),
    }
}

impl FakeService {
    /// The collection, if it exists. The embedded store has no read-only describe, so this probes
    /// `ensure_collection` with dimension 1 and learns the real one from the mismatch; callers
    /// hold `meta`, so no create or delete interleaves.
    async fn describe(&self, name: &str) -> Result<Option<CollectionInfo>, StoreError> {
        match self.store.count(name).await {
            Err(StoreError::NoCollection(_)) => return Ok(None),
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        let probe = CollectionSpec {
            name: name.to_string(),
            dimension: 1,
            distance: Distance::Cosine,
            hnsw_m: 0,
            ef_construct: 0,
            int8_quantization: false,
        };
        match self.store.ensure_collection(&probe).await {
            Ok(info) => Ok(Some(info)),
            Err(StoreError::DimensionMismatch { existing, .. }) => {
                self.store.ensure_collection(&CollectionSpec { dimension: existing, ..probe }).await.map(Some)
            }
            Err(e) => Err(e),
        }
    }

    /// (id, source) of every point matching `filter`, ordered by id.
    async fn matching(&self, collection: &str, filter: Option<&pb::Filter>) -> Result<Vec<(Uuid, String)>, Status> {
        let filter = filter.map(Filter::compile).transpose()?;
        let sources = self.store.source_points(collection).await.map_err(status)?;
        let mut points: Vec<(Uuid, String)> = sources
            .into_iter()
            .flat_map(|(source, ids)| ids.into_iter().map(move |id| (id, source.clone())))
            .filter(|(id, source)| filter.as_ref().is_none_or(|f| f.matches(*id, source)))
            .collect();
        points.sort_unstable();
        Ok(points)
    }

    async fn get_collection(
        &self,
        request: pb::GetCollectionInfoRequest,
    ) -> Result<pb::GetCollectionInfoResponse, Status> {
        let name = request.collection_name;
        let _meta = self.meta.lock().await;
        let info = self.describe(&name).await.map_err(status)?.ok_or_else(|| status(StoreError::NoCollection(name)))?;
        let indexes = self.indexes.lock().unwrap_or_else(|e| e.into_inner());
        Ok(pb::GetCollectionInfoResponse { result: Some(describe_pb(&info, indexes.get(&info.name))), time: 0.0 })
    }

    async fn create_collection(
        &self,
        request: pb::CreateCollection,
    ) -> Result<pb::CollectionOperationResponse, Status> {
        let spec = spec_from_request(&request)?;
        let _meta = self.meta.lock().await;
        if self.describe(&spec.name).await.map_err(status)?.is_some() {
            return Err(Status::invalid_argument(format!("Wrong input: Collection `{}` already exists!", spec.name)));
        }
        self.store.ensure_collection(&spec).await.map_err(status)?;
        Ok(pb::CollectionOperationResponse { result: true, time: 0.0 })
    }

    async fn delete_collection(
        &self,
        request: pb::DeleteCollection,
    ) -> Result<pb::CollectionOperationResponse, Status> {
        let _meta = self.meta.lock().await;
        let existed = self.store.delete_collection(&request.collection_name).await.map_err(status)?;
        self.indexes.lock().unwrap_or_else(|e| e.into_inner()).remove(&request.collection_name);
        Ok(pb::CollectionOperationResponse { result: existed, time: 0.0 })
    }

    async fn collection_exists(
        &self,
        request: pb::CollectionExistsRequest,
    ) -> Result<pb::CollectionExistsResponse, Status> {
        let exists = match self.store.count(&request.collection_name).await {
            Ok(_) => true,
            Err(StoreError::NoCollection(_)) => false,
            Err(e) => return Err(status(e)),
        };
        Ok(pb::CollectionExistsResponse { result: Some(pb::CollectionExists { exists }), time: 0.0 })
    }

    async fn create_field_index(
        &self,
        request: pb::CreateFieldIndexCollection,
    ) -> Result<pb::PointsOperationResponse, Status> {
        if request.field_type != Some(pb::FieldType::Keyword.into()) {
            return Err(unsupported(format!("payload index type {:?}", request.field_type)));
        }
        self.store.count(&request.collection_name).await.map_err(status)?;
        let mut indexes = self.indexes.lock().unwrap_or_else(|e| e.into_inner());
        indexes.entry(request.collection_name).or_default().insert(request.field_name);
        Ok(completed())
    }

    async fn upsert_points(&self, request: pb::UpsertPoints) -> Result<pb::PointsOperationResponse, Status> {
        if request.update_filter.is_some() || request.shard_key_selector.is_some() {
            return Err(unsupported("conditional or sharded upserts"));
        }
        let points = request.points.into_iter().map(point_from_pb).collect::<Result<Vec<_>, _>>()?;
        self.store.upsert(&request.collection_name, points).await.map_err(status)?;
        Ok(completed())
    }

    async fn delete_points(&self, request: pb::DeletePoints) -> Result<pb::PointsOperationResponse, Status> {
        let collection = request.collection_name;
        let ids: Vec<Uuid> = match request.points.and_then(|p| p.points_selector_one_of) {
            Some(pb::points_selector::PointsSelectorOneOf::Points(list)) => {
                list.ids.iter().map(|id| parse_id(Some(id))).collect::<Result<_, _>>()?
            }
            Some(pb::points_selector::PointsSelectorOneOf::Filter(filter)) => {
                self.matching(&collection, Some(&filter)).await?.into_iter().map(|(id, _)| id).collect()
            }
            None => return Err(Status::invalid_argument("Wrong input: no points selector")),
        };
        self.store.delete_points(&collection, &ids).await.map_err(status)?;
        Ok(completed())
    }

    async fn count_points(&self, request: pb::CountPoints) -> Result<pb::CountResponse, Status> {
        let count = match &request.filter {
            None => self.store.count(&request.collection_name).await.map_err(status)?,
            Some(filter) => self.matching(&request.collection_name, Some(filter)).await?.len() as u64,
        };
        Ok(pb::CountResponse { result: Some(pb::CountResult { count }), ..Default::default() })
    }

    async fn scroll_points(&self, request: pb::ScrollPoints) -> Result<pb::ScrollResponse, Status> {
        use pb::with_payload_selector::SelectorOptions;
        if request.order_by.is_some() {
            return Err(unsupported("ordered scroll"));
        }
        let with_source = match request.with_payload.and_then(|w| w.selector_options) {
            None | Some(SelectorOptions::Enable(false)) => false,
            Some(SelectorOptions::Include(include)) if include.fields.iter().all(|f| f == "source") => true,
            Some(other) => return Err(unsupported(format!("scroll payload {other:?} (only `source`)"))),
        };
        match request.with_vectors.and_then(|w| w.selector_options) {
            None | Some(pb::with_vectors_selector::SelectorOptions::Enable(false)) => {}
            Some(other) => return Err(unsupported(format!("scroll with vectors {other:?}"))),
        }
        let start = request.offset.as_ref().map(|id| parse_id(Some(id))).transpose()?;
        let limit = request.limit.unwrap_or(10).max(1) as usize;
        let points = self.matching(&request.collection_name, request.filter.as_ref()).await?;
        let mut page = points.into_iter().filter(|(id, _)| start.is_none_or(|s| *id >= s));
        let result = page
            .by_ref()
            .take(limit)
            .map(|(id, source)| pb::RetrievedPoint {
                id: Some(pb_id(id)),
                payload: if with_source {
                    HashMap::from([("source".to_string(), pb::Value::from(source))])
                } else {
                    HashMap::new()
                },
                ..Default::default()
            })
            .collect();
        Ok(pb::ScrollResponse { next_page_offset: page.next().map(|(id, _)| pb_id(id)), result, ..Default::default() })
    }

    async fn query_points(&self, request: pb::QueryPoints) -> Result<pb::QueryResponse, Status> {
        if request.offset.unwrap_or(0) != 0 || request.lookup_from.is_some() || request.shard_key_selector.is_some() {
            return Err(unsupported("query offset, lookup or shard keys"));
        }
        let top_k = request.limit.unwrap_or(10) as usize;
        let sources = query_sources(request.filter.as_ref())?;
        let (mode, dense, sparse) =
            match (request.prefetch.as_slice(), request.query.as_ref().and_then(|q| q.variant.as_ref())) {
                ([], _) => {
                    let (dense, sparse) = nearest_vector(request.query.as_ref(), request.using.as_deref())?;
                    (if dense.is_some() { QueryMode::Dense } else { QueryMode::Sparse }, dense, sparse)
                }
                (prefetches @ ([_] | [_, _]), Some(pb::query::Variant::Rrf(rrf))) => {
                    if rrf.k != Some(RRF_K as u32) || !rrf.weights.is_empty() {
                        return Err(unsupported(format!(
                            "RRF with k {:?} and weights {:?} (only k = {RRF_K})",
                            rrf.k, rrf.weights
                        )));
                    }
                    let mut dense = None;
                    let mut sparse = None;
                    for prefetch in prefetches {
                        if !prefetch.prefetch.is_empty()
                            || prefetch.filter != request.filter
                            || prefetch.limit != Some(prefetch_limit(top_k) as u64)
                            || prefetch.score_threshold.is_some()
                        {
                            return Err(unsupported(concat!(
                                "prefetches that are nested, thresholded, filtered unlike the query, ",
                                "or not prefetch_limit(top_k) long"
                            )));
                        }
                        let (d, s) = nearest_vector(prefetch.query.as_ref(), prefetch.using.as_deref())?;
                        dense = dense.or(d);
                        sparse = sparse.or(s);
                    }
                    // A dense prefetch alone is a hybrid query whose sparse vector has no terms.
                    let sparse = match (prefetches.len(), sparse) {
                        (1, None) => Some(SparseVector::default()),
                        (_, sparse) => sparse,
                    };
                    if dense.is_none() || sparse.is_none() {
                        return Err(unsupported("hybrid queries without a dense and at most one sparse prefetch"));
                    }
                    (QueryMode::Hybrid, dense, sparse)
                }
                (_, other) => {
                    return Err(unsupported(format!("{} prefetches with query {other:?}", request.prefetch.len())));
                }
            };
        let query = Query { dense, sparse, mode, top_k, score_threshold: request.score_threshold, sources };
        let hits = self.store.query(&request.collection_name, &query).await.map_err(status)?;
        let with_payload = matches!(
            request.with_payload.and_then(|w| w.selector_options),
            Some(pb::with_payload_selector::SelectorOptions::Enable(true))
        );
        let result = hits
            .into_iter()
            .map(|hit| pb::ScoredPoint {
                id: Some(pb_id(hit.id)),
                payload: if with_payload { payload_to_qdrant(hit.payload) } else { HashMap::new() },
                score: hit.score,
                ..Default::default()
            })
            .collect();
        Ok(pb::QueryResponse { result, ..Default::default() })
    }
}

/// Implements a generated service trait: the listed handlers delegate to [`FakeService`] methods,
/// the rest answer `Unimplemented`. (One macro for the whole impl, so `async_trait` sees every
/// method.)
macro_rules! service {
    (
        $trait:ident {
            $($method:ident($request:ident) -> $response:ident => $handler:ident;)*
        }
        unimplemented {
            $($missing:ident($missing_request:ident) -> $missing_response:ident;)*
        }
    ) => {
        #[tonic::async_trait]
        impl $trait for FakeService {
            $(
                async fn $method(&self, request: Request<pb::$request>) -> Result<Response<pb::$response>, Status> {
                    self.$handler(request.into_inner()).await.map(Response::new)
                }
            )*
            $(
                async fn $missing(
                    &self,
                    _request: Request<pb::$missing_request>,
                ) -> Result<Response<pb::$missing_response>, Status> {
                    Err(Status::unimplemented(concat!(
                        "the fake Qdrant does not implement ",
                        stringify!($trait),
                        "/",
                        stringify!($missing)
                    )))
                }
            )*
        }
    };
}

service! {
    Collections {
        get(GetCollectionInfoRequest) -> GetCollectionInfoResponse => get_collection;
        create(CreateCollection) -> CollectionOperationResponse => create_collection;
        delete(DeleteCollection) -> CollectionOperationResponse => delete_collection;
        collection_exists(CollectionExistsRequest) -> CollectionExistsResponse => collection_exists;
    }
    unimplemented {
        list(ListCollectionsRequest) -> ListCollectionsResponse;
        update(UpdateCollection) -> CollectionOperationResponse;
        update_aliases(ChangeAliases) -> CollectionOperationResponse;
        list_collection_aliases(ListCollectionAliasesRequest) -> ListAliasesResponse;
        list_aliases(ListAliasesRequest) -> ListAliasesResponse;
        collection_cluster_info(CollectionClusterInfoRequest) -> CollectionClusterInfoResponse;
        update_collection_cluster_setup(UpdateCollectionClusterSetupRequest) -> UpdateCollectionClusterSetupResponse;
        create_shard_key(CreateShardKeyRequest) -> CreateShardKeyResponse;
        delete_shard_key(DeleteShardKeyRequest) -> DeleteShardKeyResponse;
        list_shard_keys(ListShardKeysRequest) -> ListShardKeysResponse;
    }
}

service! {
    Points {
        upsert(UpsertPoints) -> PointsOperationResponse => upsert_points;
        delete(DeletePoints) -> PointsOperationResponse => delete_points;
        create_field_index(CreateFieldIndexCollection) -> PointsOperationResponse => create_field_index;
        scroll(ScrollPoints) -> ScrollResponse => scroll_points;
        count(CountPoints) -> CountResponse => count_points;
        query(QueryPoints) -> QueryResponse => query_points;
    }
    unimplemented {
        get(GetPoints) -> GetResponse;
        update_vectors(UpdatePointVectors) -> PointsOperationResponse;
        delete_vectors(DeletePointVectors) -> PointsOperationResponse;
        set_payload(SetPayloadPoints) -> PointsOperationResponse;
        overwrite_payload(SetPayloadPoints) -> PointsOperationResponse;
        delete_payload(DeletePayloadPoints) -> PointsOperationResponse;
        clear_payload(ClearPayloadPoints) -> PointsOperationResponse;
        delete_field_index(DeleteFieldIndexCollection) -> PointsOperationResponse;
        create_vector_name(CreateVectorNameRequest) -> PointsOperationResponse;
        delete_vector_name(DeleteVectorNameRequest) -> PointsOperationResponse;
        search(SearchPoints) -> SearchResponse;
        search_batch(SearchBatchPoints) -> SearchBatchResponse;
        search_groups(SearchPointGroups) -> SearchGroupsResponse;
        recommend(RecommendPoints) -> RecommendResponse;
        recommend_batch(RecommendBatchPoints) -> RecommendBatchResponse;
        recommend_groups(RecommendPointGroups) -> RecommendGroupsResponse;
        discover(DiscoverPoints) -> DiscoverResponse;
        discover_batch(DiscoverBatchPoints) -> DiscoverBatchResponse;
        update_batch(UpdateBatchPoints) -> UpdateBatchResponse;
        query_batch(QueryBatchPoints) -> QueryBatchResponse;
        query_groups(QueryPointGroups) -> QueryGroupsResponse;
        facet(FacetCounts) -> FacetResponse;
        search_matrix_pairs(SearchMatrixPoints) -> SearchMatrixPairsResponse;
        search_matrix_offsets(SearchMatrixPoints) -> SearchMatrixOffsetsResponse;
    }
}

#[tonic::async_trait]
impl Qdrant for FakeService {
    async fn health_check(
        &self,
        _request: Request<pb::HealthCheckRequest>,
    ) -> Result<Response<pb::HealthCheckReply>, Status> {
        Ok(Response::new(pb::HealthCheckReply {
            title: "qdrant - vector search engine (Hearth test fake)".to_string(),
            version: FAKE_VERSION.to_string(),
            commit: None,
        }))
    }
}
