//! A KnowledgeBase's desired objects: the stack file its ingestion reads (the KnowledgeBase,
//! store resolved, plus its embedding Model), the ingestion Job, the CronJob that re-indexes
//! on `spec.schedule`, and the managed Qdrant when the spec names no external one.
//!
//! Ingestion runs `hearth-server ingest` in a Job. The Job loads the embedding Model itself
//! (on CPU) from the Model's weights cache, the `<model>-cache` claim its server replicas
//! fill: mounted read-only at the same path, so nothing is downloaded twice. With a
//! ReadWriteOnce cache the Job's pod must run beside a server replica, so it asks for pod
//! affinity to them. The Job leaves an [`hearth_crds::runtime::IngestSummary`] in its
//! termination message, which the controller reads into the status.

use std::collections::{BTreeMap, BTreeSet};

use hearth_crds::knowledge_base::{KnowledgeBaseSpec, QdrantStore};
use hearth_crds::model::ModelTask;
use hearth_crds::{API_VERSION, KnowledgeBase, Model};
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMap, ConfigMapVolumeSource, Container, EnvVar, EnvVarSource, PersistentVolumeClaimVolumeSource,
    PodAffinity, PodAffinityTerm, PodSpec, PodTemplateSpec, ResourceRequirements, SecretKeySelector, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::Resource;
use serde_json::json;

use super::cache::{CACHE_DIR, PVC_SOURCE_DIR, source_claim};
use super::metadata::{MODEL_LABEL, Owner, bounded_name, client_label};
use super::qdrant::{ManagedQdrant, desired_managed_qdrant, managed_qdrant_url};
use super::security::{container_security_context, pod_security_context};
use super::server::{CONFIG_DIR, config_volume, mount, quantity, tmp_volume};
use super::{BuildContext, BuildError, BuildNote, NoteReason, sha256_hex, to_yaml};

/// The component label of ingestion Jobs and their pods.
pub const INGEST_COMPONENT: &str = "ingest";
/// Job annotation holding the hash of what the Job ingests (sources, chunking, embedding Model).
pub const INGEST_HASH_ANNOTATION: &str = "hearth.dev/ingest-sha256";
/// The stack file in the `<kb>-ingest` ConfigMap and under `/etc/hearth`.
const STACK_FILE: &str = "stack.yaml";
/// Where a ConfigMap source is mounted: `/configmaps/<name>`, as `hearth-server ingest` expects.
const CONFIG_MAP_SOURCE_DIR: &str = "/configmaps";
/// Job names become the `job-name` label of their pods: at most 63 characters.
const MAX_JOB_NAME: usize = 63;
/// A CronJob's name plus the 11 characters its Jobs add must fit a Job name.
const MAX_CRON_JOB_NAME: usize = 52;
/// Ingestion attempts after the first before the Job counts as failed.
const INGEST_RETRIES: i32 = 2;

/// Everything a KnowledgeBase owns; `None` fields must not exist.
#[derive(Clone, Debug)]
pub struct KnowledgeBaseObjects {
    /// `<kb>-ingest`: `stack.yaml`, the KnowledgeBase (store resolved) and its embedding Model.
    pub config_map: ConfigMap,
    /// `<kb>-ingest-<hash>`: ingests what the spec names now. `None` without a usable embedding
    /// Model or when [`KnowledgeBaseObjects::blocked`].
    pub ingest_job: Option<Job>,
    /// `<kb>-reindex`, when `spec.schedule` is set (and a Job can be built).
    pub cron_job: Option<CronJob>,
    /// The managed Qdrant, when `spec.store.qdrant` is not set.
    pub qdrant: Option<ManagedQdrant>,
    /// The collection: where it is and what it should look like.
    pub collection: CollectionTarget,
    /// Hash of the sources, chunking and embedding Model (in the Job's name).
    pub ingest_hash: String,
    /// Why nothing can be ingested as specified (a directory source, a chat Model): report it
    /// as Stalled.
    pub blocked: Option<BuildNote>,
}

/// The collection a KnowledgeBase uses and the parameters it asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct CollectionTarget {
    /// gRPC URL of the Qdrant server.
    pub url: String,
    /// Collection name.
    pub name: String,
    /// Whether the server is the operator's managed Qdrant.
    pub managed: bool,
    /// Whether the server needs an API key (the operator does not read Secrets).
    pub needs_api_key: bool,
    /// HNSW `m`.
    pub hnsw_m: u64,
    /// HNSW `ef_construct`.
    pub ef_construct: u64,
    /// int8 scalar quantization of the dense vectors.
    pub int8_quantization: bool,
}

/// The collection name: `spec.store.qdrant.collection`, else `<namespace>-<name>`.
pub fn collection_name(knowledge_base: &KnowledgeBase) -> String {
    let meta = knowledge_base.meta();
    let explicit = knowledge_base.spec.store.qdrant.as_ref().and_then(|q| q.collection.clone());
    explicit.unwrap_or_else(|| {
        format!("{}-{}", meta.namespace.as_deref().unwrap_or("default"), meta.name.as_deref().unwrap_or_default())
    })
}

/// A KnowledgeBase's spec with `store.qdrant` filled in: the external server or the managed
/// one, and the collection name, so every reader (ingestion, agents) uses the same collection.
pub fn resolved_knowledge_base_spec(knowledge_base: &KnowledgeBase, ctx: &BuildContext) -> KnowledgeBaseSpec {
    let mut spec = knowledge_base.spec.clone();
    let collection = collection_name(knowledge_base);
    let store = match spec.store.qdrant.take() {
        Some(external) => QdrantStore { collection: Some(collection), ..external },
        None => {
            let meta = knowledge_base.meta();
            QdrantStore {
                url: managed_qdrant_url(
                    meta.name.as_deref().unwrap_or_default(),
                    meta.namespace.as_deref().unwrap_or("default"),
                    ctx,
                ),
                api_key_secret_ref: None,
                collection: Some(collection),
            }
        }
    };
    spec.store.qdrant = Some(store);
    spec
}

/// The name of the CronJob that re-indexes a KnowledgeBase on its schedule.
pub fn reindex_cron_job_name(knowledge_base: &str) -> String {
    bounded_name(knowledge_base, "-reindex", MAX_CRON_JOB_NAME)
}

/// Hash of what an ingestion reads and how: the sources, the chunking and the embedding
/// Model. A change to any of them runs a new ingestion Job.
pub fn ingest_hash(spec: &KnowledgeBaseSpec) -> String {
    let basis = json!({"sources": spec.sources, "chunking": spec.chunking, "embedding": spec.embedding});
    sha256_hex(&basis.to_string())
}

/// Why a KnowledgeBase cannot be ingested as specified, if it cannot.
fn blocked(spec: &KnowledgeBaseSpec, embedding: Option<&Model>) -> Option<BuildNote> {
    if let Some(i) = spec.sources.iter().position(|s| s.directory.is_some()) {
        return Some(BuildNote::new(
            NoteReason::DirectorySource,
            format!(
                "spec.sources[{i}].directory: a directory on the local machine is read only by `hearth-server up`; in a cluster use a configMap, pvc or url source"
            ),
        ));
    }
    match embedding {
        Some(model) if model.spec.task != ModelTask::Embedding => Some(BuildNote::new(
            NoteReason::NotAnEmbeddingModel,
            format!(
                "spec.embedding.model: Model \"{}\" has task chat; a KnowledgeBase needs a Model with task: embedding",
                spec.embedding.model
            ),
        )),
        _ => None,
    }
}

/// The objects a KnowledgeBase should own. `embedding` is its embedding Model when it exists
/// (the ingestion Job loads it from its cache); without it no Job or CronJob is built.
pub fn desired_knowledge_base_objects(
    knowledge_base: &KnowledgeBase,
    embedding: Option<&Model>,
    ctx: &BuildContext,
) -> Result<KnowledgeBaseObjects, BuildError> {
    let owner = Owner::knowledge_base(knowledge_base)?;
    let spec = &knowledge_base.spec;
    let resolved = resolved_knowledge_base_spec(knowledge_base, ctx);
    let qdrant_store = resolved.store.qdrant.clone().unwrap_or_else(|| QdrantStore {
        url: managed_qdrant_url(&owner.name, &owner.namespace, ctx),
        api_key_secret_ref: None,
        collection: None,
    });
    let collection = CollectionTarget {
        url: qdrant_store.url.clone(),
        name: collection_name(knowledge_base),
        managed: spec.store.qdrant.is_none(),
        needs_api_key: qdrant_store.api_key_secret_ref.is_some(),
        hnsw_m: u64::from(spec.store.hnsw.m),
        ef_construct: u64::from(spec.store.hnsw.ef_construct),
        int8_quantization: spec.store.quantization == hearth_crds::knowledge_base::VectorQuantization::Int8,
    };
    let hash = ingest_hash(spec);
    let config_map = desired_stack_config_map(&owner, &resolved, embedding)?;
    let blocked = blocked(spec, embedding);
    let qdrant = spec.store.qdrant.is_none().then(|| desired_managed_qdrant(&owner, spec, ctx));

    let (ingest_job, cron_job) = match embedding.filter(|_| blocked.is_none()) {
        Some(model) => {
            let job_spec = ingest_job_spec(&owner, knowledge_base, &qdrant_store, model, ctx);
            let job_name = bounded_name(&owner.name, &format!("-ingest-{}", &hash[..8]), MAX_JOB_NAME);
            let mut meta = owner.meta(job_name, INGEST_COMPONENT);
            meta.annotations = Some(BTreeMap::from([(INGEST_HASH_ANNOTATION.to_owned(), hash.clone())]));
            let job = Job { metadata: meta, spec: Some(job_spec.clone()), status: None };
            let cron_job = spec.schedule.as_ref().map(|schedule| CronJob {
                metadata: owner.meta(reindex_cron_job_name(&owner.name), INGEST_COMPONENT),
                spec: Some(CronJobSpec {
                    schedule: schedule.clone(),
                    concurrency_policy: Some("Forbid".into()),
                    successful_jobs_history_limit: Some(1),
                    failed_jobs_history_limit: Some(1),
                    // A run missed by more than an hour (operator or cluster down) is skipped.
                    starting_deadline_seconds: Some(3600),
                    job_template: JobTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: Some(owner.labels(INGEST_COMPONENT)),
                            ..ObjectMeta::default()
                        }),
                        spec: Some(job_spec),
                    },
                    ..CronJobSpec::default()
                }),
                status: None,
            });
            (Some(job), cron_job)
        }
        None => (None, None),
    };
    Ok(KnowledgeBaseObjects { config_map, ingest_job, cron_job, qdrant, collection, ingest_hash: hash, blocked })
}

/// `<kb>-ingest`: a stack file with the embedding Model (when known) and the KnowledgeBase,
/// its store resolved, as `hearth-server ingest -f` reads it.
fn desired_stack_config_map(
    owner: &Owner,
    resolved: &KnowledgeBaseSpec,
    embedding: Option<&Model>,
) -> Result<ConfigMap, BuildError> {
    let mut documents = Vec::new();
    if let Some(model) = embedding {
        documents.push(json!({
            "apiVersion": API_VERSION,
            "kind": "Model",
            "metadata": {"name": model.meta().name, "namespace": owner.namespace},
            "spec": to_value("the embedding Model spec", &model.spec)?,
        }));
    }
    documents.push(json!({
        "apiVersion": API_VERSION,
        "kind": "KnowledgeBase",
        "metadata": {"name": owner.name, "namespace": owner.namespace},
        "spec": to_value("the KnowledgeBase spec", resolved)?,
    }));
    let mut text = String::new();
    for document in &documents {
        text.push_str("---\n");
        text.push_str(&to_yaml("the ingestion stack", document)?);
    }
    Ok(ConfigMap {
        metadata: owner.meta(format!("{}-ingest", owner.name), INGEST_COMPONENT),
        data: Some(BTreeMap::from([(STACK_FILE.to_owned(), text)])),
        ..ConfigMap::default()
    })
}

fn to_value(what: &'static str, value: &impl serde::Serialize) -> Result<serde_json::Value, BuildError> {
    serde_json::to_value(value).map_err(|e| BuildError::Serialize { what, message: e.to_string() })
}

/// The Job (and CronJob job template) that runs one ingestion.
fn ingest_job_spec(
    owner: &Owner,
    knowledge_base: &KnowledgeBase,
    store: &QdrantStore,
    model: &Model,
    ctx: &BuildContext,
) -> JobSpec {
    let model_name = model.meta().name.clone().unwrap_or_default();
    let (tmp, tmp_mount) = tmp_volume();
    let mut volumes = vec![
        config_volume(&format!("{}-ingest", owner.name)),
        Volume {
            name: "cache".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: format!("{model_name}-cache"),
                read_only: Some(true),
            }),
            ..Volume::default()
        },
        tmp,
    ];
    let mut mounts = vec![mount("config", CONFIG_DIR, true), mount("cache", CACHE_DIR, true), tmp_mount];
    let mut claims: BTreeSet<String> = BTreeSet::new();
    let mut claim_volume = |claim: &str, volumes: &mut Vec<Volume>, mounts: &mut Vec<_>| {
        if claims.insert(claim.to_owned()) {
            let name = format!("pvc-{}", claims.len());
            volumes.push(Volume {
                name: name.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.to_owned(),
                    read_only: Some(true),
                }),
                ..Volume::default()
            });
            mounts.push(mount(&name, &format!("{PVC_SOURCE_DIR}/{claim}"), true));
        }
    };
    if let Some(claim) = source_claim(&model.spec) {
        claim_volume(claim, &mut volumes, &mut mounts);
    }
    let mut config_maps: BTreeSet<&str> = BTreeSet::new();
    for source in &knowledge_base.spec.sources {
        if let Some(pvc) = &source.pvc {
            claim_volume(&pvc.claim_name, &mut volumes, &mut mounts);
        }
        if let Some(config_map) = &source.config_map
            && config_maps.insert(&config_map.name)
        {
            let name = format!("configmap-{}", config_maps.len());
            volumes.push(Volume {
                name: name.clone(),
                config_map: Some(ConfigMapVolumeSource {
                    name: config_map.name.clone(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            });
            mounts.push(mount(&name, &format!("{CONFIG_MAP_SOURCE_DIR}/{}", config_map.name), true));
        }
    }
    let env = store.api_key_secret_ref.as_ref().map(|secret| {
        vec![EnvVar {
            name: "QDRANT_API_KEY".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: secret.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        }]
    });
    // Sized like a server replica of the Model when the operator sized one.
    let memory = model
        .status
        .as_ref()
        .and_then(|s| s.footprint.as_ref())
        .map(|f| f.memory_request.clone())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "1Gi".to_owned());
    let args = [
        "ingest",
        "-f",
        &format!("{CONFIG_DIR}/{STACK_FILE}"),
        "--knowledge-base",
        &owner.name,
        "--models-dir",
        CACHE_DIR,
        "--report-file",
        "/dev/termination-log",
    ];
    let container = Container {
        name: INGEST_COMPONENT.into(),
        image: Some(ctx.server_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["hearth-server".into()]),
        args: Some(args.iter().map(|a| (*a).to_owned()).collect()),
        env,
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), quantity(&ctx.cpu_request)),
                ("memory".to_owned(), quantity(&memory)),
            ])),
            limits: Some(BTreeMap::from([("memory".to_owned(), quantity(&memory))])),
            claims: None,
        }),
        security_context: Some(container_security_context()),
        volume_mounts: Some(mounts),
        termination_message_path: Some("/dev/termination-log".into()),
        // A crash before the summary is written still leaves the last log lines.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    let affinity = (ctx.cache_access_mode == "ReadWriteOnce").then(|| Affinity {
        pod_affinity: Some(PodAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                label_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([
                        (MODEL_LABEL.to_owned(), model_name.clone()),
                        ("app.kubernetes.io/component".to_owned(), "server".to_owned()),
                    ])),
                    ..LabelSelector::default()
                }),
                topology_key: "kubernetes.io/hostname".into(),
                ..PodAffinityTerm::default()
            }]),
            ..PodAffinity::default()
        }),
        ..Affinity::default()
    });
    let mut labels = owner.labels(INGEST_COMPONENT);
    // Admitted by the managed Qdrant's NetworkPolicy.
    labels.insert(client_label(&owner.name), "true".to_owned());
    JobSpec {
        backoff_limit: Some(INGEST_RETRIES),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
            spec: Some(PodSpec {
                containers: vec![container],
                volumes: Some(volumes),
                restart_policy: Some("Never".into()),
                security_context: Some(pod_security_context()),
                automount_service_account_token: Some(false),
                enable_service_links: Some(false),
                affinity,
                node_selector: (!model.spec.hardware.node_selector.is_empty())
                    .then(|| model.spec.hardware.node_selector.clone()),
                tolerations: (!model.spec.hardware.tolerations.is_empty())
                    .then(|| model.spec.hardware.tolerations.clone()),
                ..PodSpec::default()
            }),
        },
        ..JobSpec::default()
    }
}
