//! Qdrant administration: the collections KnowledgeBases own, created, tuned and deleted over
//! gRPC with `qdrant-client`. [`QdrantAdmin`] is what the controller uses, so tests can swap
//! in a fake; [`GrpcQdrantAdmin`] is the real one.
//!
//! A Hearth collection is what `hearth-server` creates and queries: a named dense vector
//! [`DENSE_VECTOR_NAME`] (the embedding dimension, cosine distance, HNSW parameters, optional
//! int8 scalar quantization), a named sparse vector [`SPARSE_VECTOR_NAME`] with the IDF
//! modifier, and a keyword index on the payload field `source`. HNSW parameters and
//! quantization change in place; the dimension never does (a collection is never re-created
//! behind the user's back).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use qdrant_client::qdrant as pb;
use qdrant_client::{Qdrant, QdrantError};

pub use hearth_crds::runtime::{DENSE_VECTOR_NAME, SPARSE_VECTOR_NAME};
/// The payload field holding a chunk's source; it gets a keyword index.
const SOURCE_FIELD: &str = "source";
/// Qdrant's HNSW defaults, for collections that state none.
const DEFAULT_HNSW_M: u64 = 16;
const DEFAULT_EF_CONSTRUCT: u64 = 100;

/// The parameters of a collection that can change in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollectionTuning {
    /// HNSW `m`.
    pub hnsw_m: u64,
    /// HNSW `ef_construct`.
    pub ef_construct: u64,
    /// int8 scalar quantization of the dense vectors.
    pub int8_quantization: bool,
}

/// A Hearth collection as it exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollectionShape {
    /// Length of the dense vectors.
    pub dimension: u64,
    /// What can change in place.
    pub tuning: CollectionTuning,
}

/// What a server holds under a collection name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Collection {
    /// Nothing.
    Missing,
    /// A collection Hearth can use.
    Hearth(CollectionShape),
    /// A collection Hearth did not make and cannot use; the text says why.
    Foreign(String),
}

/// Why a Qdrant call failed: the server could not be reached, or it refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("qdrant at {url}: {message}")]
pub struct QdrantAdminError {
    /// The server.
    pub url: String,
    /// What went wrong.
    pub message: String,
}

/// Collection administration on a Qdrant server (its gRPC URL).
pub trait QdrantAdmin: Send + Sync {
    /// What the server holds under `collection`.
    fn describe<'a>(&'a self, url: &'a str, collection: &'a str)
    -> BoxFuture<'a, Result<Collection, QdrantAdminError>>;
    /// Creates a Hearth collection.
    fn create<'a>(
        &'a self,
        url: &'a str,
        collection: &'a str,
        shape: CollectionShape,
    ) -> BoxFuture<'a, Result<(), QdrantAdminError>>;
    /// Changes a collection's HNSW parameters and quantization.
    fn tune<'a>(
        &'a self,
        url: &'a str,
        collection: &'a str,
        tuning: CollectionTuning,
    ) -> BoxFuture<'a, Result<(), QdrantAdminError>>;
    /// Deletes a collection; whether it existed.
    fn delete<'a>(&'a self, url: &'a str, collection: &'a str) -> BoxFuture<'a, Result<bool, QdrantAdminError>>;
}

/// The real admin: one `qdrant-client` connection pool per server URL, no API key (the
/// operator does not read Secrets).
#[derive(Default)]
pub struct GrpcQdrantAdmin {
    clients: Mutex<HashMap<String, Arc<Qdrant>>>,
}

impl GrpcQdrantAdmin {
    fn client(&self, url: &str) -> Result<Arc<Qdrant>, QdrantAdminError> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(url) {
            return Ok(client.clone());
        }
        let client = Qdrant::from_url(url)
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .skip_compatibility_check()
            .build()
            .map_err(|e| error(url, e))?;
        let client = Arc::new(client);
        clients.insert(url.to_owned(), client.clone());
        Ok(client)
    }
}

fn error(url: &str, e: QdrantError) -> QdrantAdminError {
    let message = match e {
        QdrantError::ResponseError { status } => format!("{:?}: {}", status.code(), status.message()),
        other => other.to_string(),
    };
    QdrantAdminError { url: url.to_owned(), message }
}

fn is_not_found(e: &QdrantError) -> bool {
    matches!(e, QdrantError::ResponseError { status } if status.code() == tonic::Code::NotFound)
}

impl QdrantAdmin for GrpcQdrantAdmin {
    fn describe<'a>(
        &'a self,
        url: &'a str,
        collection: &'a str,
    ) -> BoxFuture<'a, Result<Collection, QdrantAdminError>> {
        Box::pin(async move {
            let client = self.client(url)?;
            let request = pb::GetCollectionInfoRequest { collection_name: collection.to_owned() };
            match client.collection_info(request).await {
                Ok(response) => Ok(response.result.map_or_else(
                    || Collection::Foreign("the server described it without a result".into()),
                    |info| read_collection(&info),
                )),
                Err(e) if is_not_found(&e) => Ok(Collection::Missing),
                Err(e) => Err(error(url, e)),
            }
        })
    }

    fn create<'a>(
        &'a self,
        url: &'a str,
        collection: &'a str,
        shape: CollectionShape,
    ) -> BoxFuture<'a, Result<(), QdrantAdminError>> {
        Box::pin(async move {
            let client = self.client(url)?;
            client.create_collection(create_request(collection, shape)).await.map_err(|e| error(url, e))?;
            let index = pb::CreateFieldIndexCollection {
                collection_name: collection.to_owned(),
                wait: Some(true),
                field_name: SOURCE_FIELD.to_owned(),
                field_type: Some(pb::FieldType::Keyword.into()),
                ..Default::default()
            };
            client.create_field_index(index).await.map_err(|e| error(url, e))?;
            Ok(())
        })
    }

    fn tune<'a>(
        &'a self,
        url: &'a str,
        collection: &'a str,
        tuning: CollectionTuning,
    ) -> BoxFuture<'a, Result<(), QdrantAdminError>> {
        Box::pin(async move {
            let client = self.client(url)?;
            client.update_collection(tune_request(collection, tuning)).await.map_err(|e| error(url, e))?;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, url: &'a str, collection: &'a str) -> BoxFuture<'a, Result<bool, QdrantAdminError>> {
        Box::pin(async move {
            let client = self.client(url)?;
            let request = pb::DeleteCollection { collection_name: collection.to_owned(), timeout: None };
            match client.delete_collection(request).await {
                Ok(response) => Ok(response.result),
                Err(e) if is_not_found(&e) => Ok(false),
                Err(e) => Err(error(url, e)),
            }
        })
    }
}

fn hnsw(tuning: CollectionTuning) -> pb::HnswConfigDiff {
    pb::HnswConfigDiff { m: Some(tuning.hnsw_m), ef_construct: Some(tuning.ef_construct), ..Default::default() }
}

fn int8() -> pb::ScalarQuantization {
    pb::ScalarQuantization { r#type: pb::QuantizationType::Int8.into(), ..Default::default() }
}

/// The request creating a Hearth collection.
pub fn create_request(collection: &str, shape: CollectionShape) -> pb::CreateCollection {
    let dense = pb::VectorParams {
        size: shape.dimension,
        distance: pb::Distance::Cosine.into(),
        hnsw_config: Some(hnsw(shape.tuning)),
        quantization_config: shape.tuning.int8_quantization.then(|| pb::QuantizationConfig {
            quantization: Some(pb::quantization_config::Quantization::Scalar(int8())),
        }),
        ..Default::default()
    };
    let sparse = pb::SparseVectorParams { index: None, modifier: Some(pb::Modifier::Idf.into()) };
    pb::CreateCollection {
        collection_name: collection.to_owned(),
        vectors_config: Some(pb::VectorsConfig {
            config: Some(pb::vectors_config::Config::ParamsMap(pb::VectorParamsMap {
                map: HashMap::from([(DENSE_VECTOR_NAME.to_owned(), dense)]),
            })),
        }),
        sparse_vectors_config: Some(pb::SparseVectorConfig {
            map: HashMap::from([(SPARSE_VECTOR_NAME.to_owned(), sparse)]),
        }),
        ..Default::default()
    }
}

/// The request changing the dense vector's HNSW parameters and quantization.
pub fn tune_request(collection: &str, tuning: CollectionTuning) -> pb::UpdateCollection {
    let quantization = if tuning.int8_quantization {
        pb::quantization_config_diff::Quantization::Scalar(int8())
    } else {
        pb::quantization_config_diff::Quantization::Disabled(pb::Disabled {})
    };
    let diff = pb::VectorParamsDiff {
        hnsw_config: Some(hnsw(tuning)),
        quantization_config: Some(pb::QuantizationConfigDiff { quantization: Some(quantization) }),
        ..Default::default()
    };
    pb::UpdateCollection {
        collection_name: collection.to_owned(),
        vectors_config: Some(pb::VectorsConfigDiff {
            config: Some(pb::vectors_config_diff::Config::ParamsMap(pb::VectorParamsDiffMap {
                map: HashMap::from([(DENSE_VECTOR_NAME.to_owned(), diff)]),
            })),
        }),
        ..Default::default()
    }
}

/// Reads a collection's description: a Hearth collection's shape, or why it is not one.
pub fn read_collection(info: &pb::CollectionInfo) -> Collection {
    let foreign = |why: String| Collection::Foreign(format!("it was not created by Hearth: {why}"));
    let Some(config) = info.config.as_ref() else { return foreign("its description has no config".into()) };
    let Some(params) = config.params.as_ref() else { return foreign("its description has no params".into()) };
    let dense = match params.vectors_config.as_ref().and_then(|c| c.config.as_ref()) {
        Some(pb::vectors_config::Config::ParamsMap(map)) => map.map.get(DENSE_VECTOR_NAME),
        _ => None,
    };
    let Some(dense) = dense else { return foreign(format!("it has no dense vector named {DENSE_VECTOR_NAME:?}")) };
    let sparse = params.sparse_vectors_config.as_ref().and_then(|c| c.map.get(SPARSE_VECTOR_NAME));
    if sparse.and_then(|s| s.modifier) != Some(pb::Modifier::Idf.into()) {
        return foreign(format!("it has no sparse vector {SPARSE_VECTOR_NAME:?} with the IDF modifier"));
    }
    // Per-vector settings override the collection's.
    let pick = |field: fn(&pb::HnswConfigDiff) -> Option<u64>| {
        dense.hnsw_config.as_ref().and_then(field).or_else(|| config.hnsw_config.as_ref().and_then(field))
    };
    let quantization = dense.quantization_config.as_ref().or(config.quantization_config.as_ref());
    let int8_quantization = matches!(
        quantization.and_then(|q| q.quantization.as_ref()),
        Some(pb::quantization_config::Quantization::Scalar(s)) if s.r#type == i32::from(pb::QuantizationType::Int8)
    );
    Collection::Hearth(CollectionShape {
        dimension: dense.size,
        tuning: CollectionTuning {
            hnsw_m: pick(|h| h.m).unwrap_or(DEFAULT_HNSW_M),
            ef_construct: pick(|h| h.ef_construct).unwrap_or(DEFAULT_EF_CONSTRUCT),
            int8_quantization,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(int8: bool) -> CollectionShape {
        CollectionShape {
            dimension: 384,
            tuning: CollectionTuning { hnsw_m: 32, ef_construct: 200, int8_quantization: int8 },
        }
    }

    /// What a server would describe after the create request.
    fn described(request: &pb::CreateCollection) -> pb::CollectionInfo {
        pb::CollectionInfo {
            config: Some(pb::CollectionConfig {
                params: Some(pb::CollectionParams {
                    vectors_config: request.vectors_config.clone(),
                    sparse_vectors_config: request.sparse_vectors_config.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_created_collection_reads_back_as_the_shape_asked_for() {
        for int8 in [false, true] {
            let request = create_request("ai-handbook", shape(int8));
            assert_eq!(request.collection_name, "ai-handbook");
            assert_eq!(read_collection(&described(&request)), Collection::Hearth(shape(int8)));
        }
    }

    #[test]
    fn a_collection_without_the_idf_sparse_vector_is_foreign() {
        let mut request = create_request("c", shape(false));
        request.sparse_vectors_config = None;
        match read_collection(&described(&request)) {
            Collection::Foreign(why) => assert!(why.contains("IDF"), "{why}"),
            other => panic!("expected Foreign, got {other:?}"),
        }
    }

    #[test]
    fn tuning_disables_quantization_explicitly() {
        let request = tune_request("c", shape(false).tuning);
        let Some(pb::vectors_config_diff::Config::ParamsMap(map)) = request.vectors_config.and_then(|v| v.config)
        else {
            panic!("a vector map")
        };
        let dense = &map.map[DENSE_VECTOR_NAME];
        assert_eq!(dense.hnsw_config.as_ref().and_then(|h| h.m), Some(32));
        assert!(matches!(
            dense.quantization_config.and_then(|q| q.quantization),
            Some(pb::quantization_config_diff::Quantization::Disabled(_))
        ));
    }
}
