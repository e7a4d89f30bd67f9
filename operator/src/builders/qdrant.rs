//! The managed Qdrant a KnowledgeBase gets when `spec.store.qdrant` names no external server:
//! a one-replica StatefulSet of the official image with its storage on a claim from a
//! volumeClaimTemplate, a Service, and a NetworkPolicy admitting only the knowledge base's
//! clients (its ingestion Jobs and the Agents that use it), the operator and monitoring.

use std::collections::BTreeMap;

use hearth_crds::knowledge_base::{DeletionPolicy, KnowledgeBaseSpec};
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Service, ServicePort,
    ServiceSpec, Volume, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::BuildContext;
use super::metadata::{Owner, bounded_name, client_label};
use super::security::{container_security_context, pod_security_context};
use super::server::{mount, quantity, tmp_volume};

/// Qdrant's gRPC port: what `qdrant-client` (the operator, ingestion, agents) speaks.
pub const QDRANT_GRPC_PORT: i32 = 6334;
/// Qdrant's HTTP port: health checks and `/metrics`.
pub const QDRANT_HTTP_PORT: i32 = 6333;
/// The component label of a managed Qdrant's objects.
pub(crate) const QDRANT_COMPONENT: &str = "qdrant";
/// Where Qdrant keeps its collections (its working directory is `/qdrant`).
const STORAGE_DIR: &str = "/qdrant/storage";
/// Where Qdrant writes snapshots; scratch space here, the collections are the durable part.
const SNAPSHOTS_DIR: &str = "/qdrant/snapshots";
/// Qdrant marks a finished start with a file, by default in its (read-only) working directory.
const INIT_DIR: &str = "/qdrant/init";
/// A StatefulSet's name plus the 11 characters of its controller-revision-hash label value
/// must fit a 63-character label.
const MAX_STATEFUL_SET_NAME: usize = 52;

/// The objects of a managed Qdrant.
#[derive(Clone, Debug)]
pub struct ManagedQdrant {
    /// `<kb>-qdrant`: gRPC (6334) and HTTP (6333).
    pub service: Service,
    /// `<kb>-qdrant` (cut to 52 characters): one Qdrant with a `storage` claim.
    pub stateful_set: StatefulSet,
    /// `<kb>-qdrant`: ingress from the knowledge base's clients, the operator and monitoring.
    pub network_policy: NetworkPolicy,
}

/// The gRPC URL of a KnowledgeBase's managed Qdrant: `http://<kb>-qdrant.<ns>.svc.<domain>:6334`.
pub fn managed_qdrant_url(knowledge_base: &str, namespace: &str, ctx: &BuildContext) -> String {
    format!("http://{knowledge_base}-qdrant.{namespace}.svc.{}:{QDRANT_GRPC_PORT}", ctx.cluster_domain)
}

/// The name of a KnowledgeBase's managed Qdrant StatefulSet.
pub fn qdrant_stateful_set_name(knowledge_base: &str) -> String {
    bounded_name(knowledge_base, "-qdrant", MAX_STATEFUL_SET_NAME)
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn http_get(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(5),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
}

fn empty_dir(name: &str, size: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource { size_limit: Some(quantity(size)), medium: None }),
        ..Volume::default()
    }
}

/// The managed Qdrant of a KnowledgeBase. Its storage claim follows `spec.deletionPolicy`:
/// deleted with the StatefulSet under `Delete`, kept under `Retain`.
pub(crate) fn desired_managed_qdrant(owner: &Owner, spec: &KnowledgeBaseSpec, ctx: &BuildContext) -> ManagedQdrant {
    let service_name = format!("{}-qdrant", owner.name);
    let (tmp, tmp_mount) = tmp_volume();
    let container = Container {
        name: "qdrant".into(),
        image: Some(ctx.qdrant_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        ports: Some(vec![port("grpc", QDRANT_GRPC_PORT), port("http", QDRANT_HTTP_PORT)]),
        env: Some(vec![
            env("QDRANT_INIT_FILE_PATH", &format!("{INIT_DIR}/.qdrant-initialized")),
            // A private stack sends nothing home.
            env("QDRANT__TELEMETRY_DISABLED", "true"),
        ]),
        startup_probe: Some(http_get("/readyz", 5, 120)),
        liveness_probe: Some(http_get("/livez", 10, 3)),
        readiness_probe: Some(http_get("/readyz", 5, 3)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), quantity("250m")),
                ("memory".to_owned(), quantity("512Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".to_owned(), quantity("2Gi"))])),
            claims: None,
        }),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![
            mount("storage", STORAGE_DIR, false),
            mount("snapshots", SNAPSHOTS_DIR, false),
            mount("init", INIT_DIR, false),
            tmp_mount,
        ]),
        ..Container::default()
    };
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("storage".into()),
            labels: Some(owner.labels(QDRANT_COMPONENT)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: ctx.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_owned(), quantity(&ctx.qdrant_storage_size))])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    };
    let retention = match spec.deletion_policy {
        DeletionPolicy::Delete => "Delete",
        DeletionPolicy::Retain => "Retain",
    };
    let annotations = BTreeMap::from([
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/port".to_owned(), QDRANT_HTTP_PORT.to_string()),
        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
    ]);
    let stateful_set = StatefulSet {
        metadata: owner.meta(qdrant_stateful_set_name(&owner.name), QDRANT_COMPONENT),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(service_name.clone()),
            selector: owner.pod_selector(QDRANT_COMPONENT),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: None,
            }),
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some(retention.into()),
                when_scaled: Some("Retain".into()),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(owner.labels(QDRANT_COMPONENT)),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(vec![empty_dir("snapshots", "10Gi"), empty_dir("init", "1Mi"), tmp]),
                    security_context: Some(pod_security_context()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(30),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![claim]),
            ..StatefulSetSpec::default()
        }),
        status: None,
    };
    let service = Service {
        metadata: owner.meta(service_name.clone(), QDRANT_COMPONENT),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(owner.selector_labels(QDRANT_COMPONENT)),
            ports: Some(vec![
                ServicePort {
                    name: Some("grpc".into()),
                    port: QDRANT_GRPC_PORT,
                    target_port: Some(IntOrString::String("grpc".into())),
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("http".into()),
                    port: QDRANT_HTTP_PORT,
                    target_port: Some(IntOrString::String("http".into())),
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    ManagedQdrant { service, stateful_set, network_policy: qdrant_network_policy(owner, service_name, ctx) }
}

/// Ingress to the Qdrant pods: both ports from the knowledge base's clients (pods labelled
/// `hearth.dev/client-of-<kb>`), gRPC from the operator (it manages the collection), HTTP
/// from monitoring (`/metrics`).
fn qdrant_network_policy(owner: &Owner, name: String, ctx: &BuildContext) -> NetworkPolicy {
    let ports = |numbers: &[i32]| {
        Some(
            numbers
                .iter()
                .map(|n| NetworkPolicyPort {
                    port: Some(IntOrString::Int(*n)),
                    protocol: Some("TCP".into()),
                    end_port: None,
                })
                .collect(),
        )
    };
    let selector =
        |labels: BTreeMap<String, String>| LabelSelector { match_labels: Some(labels), ..LabelSelector::default() };
    let mut rules = vec![NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            pod_selector: Some(selector(BTreeMap::from([(client_label(&owner.name), "true".to_owned())]))),
            ..NetworkPolicyPeer::default()
        }]),
        ports: ports(&[QDRANT_GRPC_PORT, QDRANT_HTTP_PORT]),
    }];
    if let Some(namespace) = &ctx.operator_namespace {
        rules.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(selector(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_owned(),
                    namespace.clone(),
                )]))),
                pod_selector: Some(selector(BTreeMap::from([
                    ("app.kubernetes.io/part-of".to_owned(), "hearth".to_owned()),
                    ("app.kubernetes.io/component".to_owned(), "operator".to_owned()),
                ]))),
                ..NetworkPolicyPeer::default()
            }]),
            ports: ports(&[QDRANT_GRPC_PORT]),
        });
    }
    if !ctx.monitoring_namespace_labels.is_empty() {
        rules.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(selector(ctx.monitoring_namespace_labels.clone())),
                ..NetworkPolicyPeer::default()
            }]),
            ports: ports(&[QDRANT_HTTP_PORT]),
        });
    }
    NetworkPolicy {
        metadata: owner.meta(name, QDRANT_COMPONENT),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(owner.pod_selector(QDRANT_COMPONENT)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(rules),
            egress: None,
        }),
    }
}
