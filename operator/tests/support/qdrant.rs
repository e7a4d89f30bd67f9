//! A Qdrant admin in memory, for the KnowledgeBase controller's collections.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::future::BoxFuture;
use hearth_operator::qdrant::{Collection, CollectionShape, CollectionTuning, QdrantAdmin, QdrantAdminError};
use hearth_test_apiserver::Faults;

/// The collections one fake Qdrant deployment holds, by (server URL, name).
pub type Collections = BTreeMap<(String, String), CollectionShape>;

/// Collections in memory, keyed by (server URL, name), with a log of every change.
#[derive(Default)]
pub struct FakeQdrant {
    collections: Mutex<Collections>,
    log: Mutex<Vec<String>>,
    /// Refuses every call while this API client is crashed: the process that would make the
    /// call is gone (see `Faults::crash_after_writes`).
    gate: Option<(Faults, String)>,
}

impl FakeQdrant {
    /// A Qdrant that refuses calls while `client` is crashed on the fake API server.
    pub fn gated(faults: &Faults, client: &str) -> Self {
        Self { gate: Some((faults.clone(), client.to_owned())), ..Self::default() }
    }

    /// The shape of one collection, if it exists.
    pub fn shape(&self, url: &str, name: &str) -> Option<CollectionShape> {
        self.collections.lock().unwrap().get(&(url.to_owned(), name.to_owned())).copied()
    }

    /// Creates or replaces a collection behind the operator's back.
    pub fn put(&self, url: &str, name: &str, shape: CollectionShape) {
        self.collections.lock().unwrap().insert((url.to_owned(), name.to_owned()), shape);
    }

    /// Every collection.
    pub fn collections(&self) -> Collections {
        self.collections.lock().unwrap().clone()
    }

    /// Every change, in order: `create NAME DIMENSION`, `tune NAME m=M`, `delete NAME`.
    pub fn logged(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn alive(&self, url: &str) -> Result<(), QdrantAdminError> {
        match &self.gate {
            Some((faults, client)) if faults.is_crashed(client) => {
                Err(QdrantAdminError { url: url.to_owned(), message: format!("{client} crashed") })
            }
            _ => Ok(()),
        }
    }
}

impl QdrantAdmin for FakeQdrant {
    fn describe<'a>(
        &'a self,
        url: &'a str,
        collection: &'a str,
    ) -> BoxFuture<'a, Result<Collection, QdrantAdminError>> {
        Box::pin(async move {
            self.alive(url)?;
            Ok(self.shape(url, collection).map_or(Collection::Missing, Collection::Hearth))
        })
    }

    fn create<'a>(
        &'a self,
        url: &'a str,
        collection: &'a str,
        shape: CollectionShape,
    ) -> BoxFuture<'a, Result<(), QdrantAdminError>> {
        Box::pin(async move {
            self.alive(url)?;
            self.log.lock().unwrap().push(format!("create {collection} {}", shape.dimension));
            self.put(url, collection, shape);
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
            self.alive(url)?;
            self.log.lock().unwrap().push(format!("tune {collection} m={}", tuning.hnsw_m));
            let mut collections = self.collections.lock().unwrap();
            let shape = collections.get_mut(&(url.to_owned(), collection.to_owned())).expect("tuned after created");
            shape.tuning = tuning;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, url: &'a str, collection: &'a str) -> BoxFuture<'a, Result<bool, QdrantAdminError>> {
        Box::pin(async move {
            self.alive(url)?;
            self.log.lock().unwrap().push(format!("delete {collection}"));
            Ok(self.collections.lock().unwrap().remove(&(url.to_owned(), collection.to_owned())).is_some())
        })
    }
}
