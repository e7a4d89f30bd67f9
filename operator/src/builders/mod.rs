//! Desired state: pure functions from a Hearth resource (plus what the controller resolved
//! about the cluster) to the Kubernetes objects it owns. No I/O happens here; the controllers
//! server-side apply what these return and delete what they leave out.
//!
//! Every owned object is named after its resource (`<model>-server`, `<model>-cache`,
//! `<cascade>-router`, `<kb>-ingest-<hash>`, `<kb>-qdrant`, `<agent>-agent`), carries the
//! `app.kubernetes.io/*` labels plus `hearth.dev/<kind>`, and a controller owner reference to
//! the resource.
//!
//! Errors are split in two. [`BuildError`] means nothing can be built (the resource lacks a
//! uid or namespace, or its name cannot be turned into Kubernetes names). Everything else
//! the user can fix in the spec is a [`BuildNote`]: a Model that fits no hardware comes back
//! with `deployment: None` and `blocked` saying why, so the controller applies what is there,
//! deletes what is `None`, and turns the notes into conditions.

mod agent;
mod autoscaling;
mod cache;
mod cascade;
mod context;
mod knowledge_base;
mod metadata;
mod model;
mod network_policy;
mod qdrant;
mod security;
mod server;

pub use agent::{
    AGENT_DATA_DIR, AgentObjects, Dependency, ResolvedAgent, ResolvedKnowledgeBase, agent_config,
    agent_knowledge_bases, delegated_agents, desired_agent_objects,
};
pub use autoscaling::scaled_object_resource;
pub use cache::{served_path, weights_format};
pub use cascade::{CascadeObjects, ResolvedStage, desired_cascade_objects, router_config};
pub use context::BuildContext;
pub use hearth_crds::router::{RouterConfig, RouterStage};
pub use knowledge_base::{
    CollectionTarget, INGEST_COMPONENT, INGEST_HASH_ANNOTATION, KnowledgeBaseObjects, collection_name,
    desired_knowledge_base_objects, ingest_hash, reindex_cron_job_name, resolved_knowledge_base_spec,
};
pub use metadata::{
    AGENT_LABEL, CASCADE_LABEL, HTTP_PORT, KNOWLEDGE_BASE_LABEL, MODEL_LABEL, agent_endpoint, cascade_endpoint,
    client_label, model_endpoint, service_endpoint,
};
pub use model::{ModelObjects, desired_model_objects};
pub use qdrant::{ManagedQdrant, QDRANT_GRPC_PORT, QDRANT_HTTP_PORT, managed_qdrant_url, qdrant_stateful_set_name};
pub use security::{RUN_AS_USER, restricted_profile_violations};

/// Hex SHA-256 of a text: short names of long ones, configuration hashes that roll pods.
pub(crate) fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A configuration document as YAML.
pub(crate) fn to_yaml(what: &'static str, value: &impl serde::Serialize) -> Result<String, BuildError> {
    serde_yaml::to_string(value).map_err(|e| BuildError::Serialize { what, message: e.to_string() })
}

/// Why no objects could be built for a resource at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BuildError {
    /// A metadata field the owned objects need is missing (objects read from the API server
    /// always have them; a document read from a file may not).
    #[error("{kind} has no metadata.{field}; owned objects need it")]
    MissingMetadata {
        /// The resource kind.
        kind: &'static str,
        /// The missing field: `name`, `namespace` or `uid`.
        field: &'static str,
    },
    /// The resource's name cannot be used to derive Service names and labels.
    #[error("{kind} \"{name}\": {reason}")]
    InvalidName {
        /// The resource kind.
        kind: &'static str,
        /// The name.
        name: String,
        /// What was expected.
        reason: String,
    },
    /// A configuration document could not be written as YAML.
    #[error("cannot write {what} as YAML: {message}")]
    Serialize {
        /// Which document.
        what: &'static str,
        /// The serializer's message.
        message: String,
    },
}

/// Why a builder left something out or changed what the spec asked for; the controller
/// reports it as a condition with this reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteReason {
    /// The model needs more memory than any hardware profile of its kind offers.
    FitsNowhere,
    /// `spec.hardware.profile` names no known profile.
    UnknownProfile,
    /// Neither the weights size nor parameters and quantization are known, and
    /// `spec.resources` does not size the pod either.
    SizingUnknown,
    /// Scale to zero was asked but cannot be done; the autoscaler keeps one replica.
    ScaleToZeroUnavailable,
    /// A KnowledgeBase source is a local directory, which only `hearth-server up` reads.
    DirectorySource,
    /// A KnowledgeBase's embedding Model has task chat.
    NotAnEmbeddingModel,
}

impl NoteReason {
    /// The CamelCase condition reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FitsNowhere => "FitsNowhere",
            Self::UnknownProfile => "UnknownProfile",
            Self::SizingUnknown => "SizingUnknown",
            Self::ScaleToZeroUnavailable => "ScaleToZeroUnavailable",
            Self::DirectorySource => "DirectorySource",
            Self::NotAnEmbeddingModel => "NotAnEmbeddingModel",
        }
    }
}

impl std::fmt::Display for NoteReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason and a sentence for a person, ready to become a status condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildNote {
    /// Condition reason.
    pub reason: NoteReason,
    /// Condition message: what happened and what to do.
    pub message: String,
}

impl BuildNote {
    pub(crate) fn new(reason: NoteReason, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }
}
