//! What the server saw: requests counted by verb and resource, and a log of writes.

use std::collections::BTreeMap;

/// A Kubernetes API verb, as requests are counted and faults matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    /// GET of one object.
    Get,
    /// GET of a collection.
    List,
    /// GET of a collection with `watch=true`.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH of any type, server-side apply included.
    Patch,
    /// DELETE of one object.
    Delete,
    /// DELETE of a collection.
    DeleteCollection,
}

/// How a PATCH body was interpreted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/apply-patch+yaml`: server-side apply.
    Apply,
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`, applied as a merge patch.
    Strategic,
    /// `application/json-patch+json` (RFC 6902).
    Json,
}

/// One write the server accepted, in the order it was made.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    /// Create, Update, Patch or Delete (a delete-collection logs one Delete per object).
    pub verb: Verb,
    /// The patch type, for patches.
    pub patch: Option<PatchType>,
    /// The resource's plural name.
    pub resource: String,
    /// The namespace, for namespaced resources.
    pub namespace: Option<String>,
    /// The object's name.
    pub name: String,
    /// `Some("status")` for writes through the status subresource.
    pub subresource: Option<String>,
    /// The `fieldManager` query parameter, when given.
    pub field_manager: Option<String>,
    /// The client that made the write, when it named itself ([`crate::CLIENT_HEADER`]).
    pub client: Option<String>,
    /// Whether the object changed; a no-op write keeps its resourceVersion and sends no event.
    pub changed: bool,
    /// The object's resourceVersion after the write.
    pub resource_version: String,
}

/// Request counts and the write log.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    pub(crate) requests: BTreeMap<(Verb, String), u64>,
    pub(crate) writes: Vec<Write>,
}
