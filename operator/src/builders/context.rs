//! What the builders need to know about the cluster and the operator's installation.

use std::collections::BTreeMap;

use crate::sizing::{HardwareProfile, builtin_profiles};

/// Installation settings the builders read: images, storage, what the cluster offers.
/// The operator fills it from flags and discovery (e.g. whether KEDA's CRDs exist).
#[derive(Clone, Debug, PartialEq)]
pub struct BuildContext {
    /// The inference-server image (CPU and Metal builds; multi-arch).
    pub server_image: String,
    /// The CUDA build of the inference server, used for `accelerator: nvidia`.
    pub server_image_cuda: String,
    /// StorageClass of model-cache claims; the cluster default when `None`.
    pub storage_class: Option<String>,
    /// Access mode of model-cache claims. `ReadWriteOnce` keeps every replica on the node
    /// holding the volume; use `ReadWriteMany` where the storage class offers it.
    pub cache_access_mode: String,
    /// CPU request of a model server when `spec.resources` does not set one (a quantity).
    pub cpu_request: String,
    /// Whether KEDA's ScaledObject CRD is installed (needed for scale to zero).
    pub keda_available: bool,
    /// Prometheus base URL KEDA queries for the scaling metric.
    pub prometheus_address: String,
    /// Labels of the namespace Prometheus scrapes from; the servers admit its traffic. Empty
    /// means no monitoring rule in the NetworkPolicy.
    pub monitoring_namespace_labels: BTreeMap<String, String>,
    /// The operator's namespace: its pods may reach Cascade routers, to read their escalation
    /// ratio into the Cascade's status. `None` adds no such rule.
    pub operator_namespace: Option<String>,
    /// The cluster's DNS domain, for endpoint URLs.
    pub cluster_domain: String,
    /// Image of the managed Qdrant a KnowledgeBase gets when it names no external one: the
    /// official image, pinned by tag (hybrid queries need Qdrant 1.16 or later).
    pub qdrant_image: String,
    /// Size of a managed Qdrant's storage claim (a quantity).
    pub qdrant_storage_size: String,
    /// Hardware profiles models are sized against.
    pub profiles: Vec<HardwareProfile>,
}

impl BuildContext {
    /// Defaults for a standard cluster: the released images of this version, the default
    /// StorageClass, one CPU per server, no KEDA, Prometheus in `monitoring`, the built-in
    /// hardware profiles.
    pub fn new() -> Self {
        let version = env!("CARGO_PKG_VERSION");
        Self {
            server_image: format!("ghcr.io/hearth-dev/hearth-server:{version}"),
            server_image_cuda: format!("ghcr.io/hearth-dev/hearth-server:{version}-cuda"),
            storage_class: None,
            cache_access_mode: "ReadWriteOnce".into(),
            cpu_request: "1".into(),
            keda_available: false,
            prometheus_address: "http://prometheus-operated.monitoring.svc:9090".into(),
            monitoring_namespace_labels: BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                "monitoring".to_owned(),
            )]),
            operator_namespace: None,
            cluster_domain: "cluster.local".into(),
            qdrant_image: "docker.io/qdrant/qdrant:v1.19.1".into(),
            qdrant_storage_size: "10Gi".into(),
            profiles: builtin_profiles(),
        }
    }
}

impl Default for BuildContext {
    fn default() -> Self {
        Self::new()
    }
}
