//! A store chosen at run time: the embedded one, or a Qdrant server when the spec names one.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::embedded::EmbeddedStore;
use super::qdrant::QdrantStore;
use super::store::{CollectionInfo, CollectionSpec, Hit, Point, Query, StoreError, VectorStore};

/// Either store, behind the one trait.
pub enum AnyStore {
    /// The embedded SQLite store (local mode).
    Embedded(EmbeddedStore),
    /// A Qdrant server over gRPC.
    Qdrant(QdrantStore),
}

/// Forwards a trait call to whichever store this is.
macro_rules! forward {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {
        match $self {
            AnyStore::Embedded(store) => store.$method($($arg),*).await,
            AnyStore::Qdrant(store) => store.$method($($arg),*).await,
        }
    };
}

impl VectorStore for AnyStore {
    async fn ensure_collection(&self, spec: &CollectionSpec) -> Result<CollectionInfo, StoreError> {
        forward!(self, ensure_collection(spec))
    }

    async fn upsert(&self, collection: &str, points: Vec<Point>) -> Result<(), StoreError> {
        forward!(self, upsert(collection, points))
    }

    async fn delete_points(&self, collection: &str, ids: &[Uuid]) -> Result<u64, StoreError> {
        forward!(self, delete_points(collection, ids))
    }

    async fn delete_source(&self, collection: &str, source: &str) -> Result<u64, StoreError> {
        forward!(self, delete_source(collection, source))
    }

    async fn source_points(&self, collection: &str) -> Result<BTreeMap<String, BTreeSet<Uuid>>, StoreError> {
        forward!(self, source_points(collection))
    }

    async fn query(&self, collection: &str, query: &Query) -> Result<Vec<Hit>, StoreError> {
        forward!(self, query(collection, query))
    }

    async fn count(&self, collection: &str) -> Result<u64, StoreError> {
        forward!(self, count(collection))
    }

    async fn delete_collection(&self, collection: &str) -> Result<bool, StoreError> {
        forward!(self, delete_collection(collection))
    }
}
