//! The KnowledgeBase controller: the Qdrant collection (created, tuned in place, deleted by a
//! finalizer unless `deletionPolicy: Retain`), the managed Qdrant when no external one is
//! named, the ingestion Job and re-index CronJob, and a status read from the last finished
//! ingestion's termination message.
//!
//! Ready means the embedding Model is Ready, the collection exists as asked and at least one
//! ingestion succeeded. A later failed run sets Indexed=False but keeps Ready: the chunks of
//! the last good run are still served.
//!
//! The operator does not read Secrets. On a Qdrant that needs an API key, the ingestion Job
//! (which gets the key from `apiKeySecretRef`) creates the collection; the operator then can
//! neither tune it in place nor delete it, and says so in status and Events.

use std::sync::Arc;
use std::time::Duration;

use hearth_crds::ConditionStatus;
use hearth_crds::conditions::{READY, RECONCILING, STALLED, find_condition, is_true};
use hearth_crds::knowledge_base::{DeletionPolicy, KnowledgeBase, KnowledgeBaseStatus};
use hearth_crds::model::{Model, ModelTask};
use hearth_crds::runtime::IngestSummary;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};

use super::{Context, Error, MANAGER, apply, condition, publish};
use super::{Scope, drain, error_policy};
use crate::builders::{
    CollectionTarget, INGEST_COMPONENT, KNOWLEDGE_BASE_LABEL, KnowledgeBaseObjects, desired_knowledge_base_objects,
};
use crate::qdrant::{Collection, CollectionShape, CollectionTuning};

/// The controller's name in metrics and logs.
pub const NAME: &str = "knowledgebase";
/// The finalizer that deletes the collection before the KnowledgeBase goes.
pub const FINALIZER: &str = "hearth.dev/collection";
/// Condition: the collection exists with the parameters the spec asks for.
pub const COLLECTION_READY: &str = "CollectionReady";
/// Condition: the last ingestion succeeded.
pub const INDEXED: &str = "Indexed";
/// Where a Model's status may report its embedding dimension (not yet in the Model CRD:
/// read when present, so a collection can be created and checked before the first ingestion).
const EMBEDDING_DIMENSION_POINTER: &str = "/status/embeddingDimension";

/// Runs the KnowledgeBase controller until shutdown: a KnowledgeBase reconciles when it, an
/// object it owns, one of its ingestion Jobs (the CronJob's too: they carry its label, not its
/// owner reference) or its embedding Model (whose readiness and dimension gate the collection
/// and ingestion) changes.
pub(crate) async fn run(ctx: Arc<Context>, scope: &Scope) {
    let owned = Scope::owned();
    let controller = Controller::new(scope.api::<KnowledgeBase>(), watcher::Config::default());
    let knowledge_bases = controller.store();
    let controller = controller
        .owns(scope.api::<ConfigMap>(), owned.clone())
        .owns(scope.api::<StatefulSet>(), owned.clone())
        .watches(scope.api::<Job>(), owned, |job: Job| {
            let name = job.labels().get(crate::builders::KNOWLEDGE_BASE_LABEL).cloned();
            let ns = job.namespace();
            name.map(|name| match ns {
                Some(ns) => ObjectRef::<KnowledgeBase>::new(&name).within(&ns),
                None => ObjectRef::new(&name),
            })
        })
        .watches(scope.api::<Model>(), watcher::Config::default(), move |model: Model| {
            let ns = model.namespace();
            let name = model.name_any();
            knowledge_bases
                .state()
                .into_iter()
                .filter(|kb| kb.namespace() == ns && kb.spec.embedding.model == name)
                .map(|kb| ObjectRef::from_obj(kb.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(scope.stopped())
        .run(reconcile, |kb, e, ctx| error_policy(kb.as_ref(), e, &ctx, NAME), ctx);
    drain(NAME, controller).await;
}

/// Reconciles one KnowledgeBase (through its finalizer).
pub async fn reconcile(knowledge_base: Arc<KnowledgeBase>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started(NAME);
    let ns = knowledge_base.namespace().ok_or_else(|| Error::NoNamespace(knowledge_base.name_any()))?;
    let api: Api<KnowledgeBase> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, knowledge_base, |event| async {
        match event {
            FinalizerEvent::Apply(kb) => apply_knowledge_base(&kb, &ctx, &ns).await,
            FinalizerEvent::Cleanup(kb) => cleanup(&kb, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// The embedding Model as stored, with the dimension its status reports, if any.
struct Embedding {
    model: Model,
    dimension: Option<u64>,
}

impl Embedding {
    fn ready(&self) -> bool {
        self.model.status.as_ref().is_some_and(|s| is_true(&s.conditions, READY))
    }
}

async fn read_embedding(ctx: &Context, ns: &str, name: &str) -> Result<Option<Embedding>, Error> {
    let api = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), ns, &ApiResource::erase::<Model>(&()));
    let Some(object) = api.get_opt(name).await? else { return Ok(None) };
    let dimension = object.data.pointer(EMBEDDING_DIMENSION_POINTER).and_then(Value::as_u64).filter(|d| *d > 0);
    let model = object.try_parse::<Model>().map_err(|e| Error::Decode(format!("Model {name}: {e}")))?;
    Ok(Some(Embedding { model, dimension }))
}

/// What became of the collection in this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum CollectionState {
    /// It exists as the spec asks.
    Ready(String),
    /// The first ingestion creates it (the dimension is unknown, or an API key is needed).
    Deferred(String),
    /// Not yet: Qdrant is starting or unreachable (reason, message).
    Waiting(&'static str, String),
    /// It cannot be used without a change from the user (reason, message).
    Stalled(&'static str, String),
    /// Not looked at: the spec is blocked.
    Skipped,
}

impl CollectionState {
    fn allows_ingestion(&self) -> bool {
        matches!(self, Self::Ready(_) | Self::Deferred(_))
    }
}

/// Records in status that the collection is the KnowledgeBase's before anything creates it, so
/// that a deletion after a crash between the creation and the status write still deletes it.
async fn record_collection(ctx: &Context, kb: &KnowledgeBase, ns: &str, name: &str) -> Result<(), Error> {
    if kb.status.as_ref().and_then(|s| s.collection.as_deref()) == Some(name) {
        return Ok(());
    }
    let api: Api<KnowledgeBase> = Api::namespaced(ctx.client.clone(), ns);
    let status = json!({"status": {"collection": name}});
    api.patch_status(&kb.name_any(), &PatchParams::default(), &Patch::Merge(status)).await?;
    Ok(())
}

async fn ensure_collection(
    ctx: &Context,
    kb: &KnowledgeBase,
    ns: &str,
    target: &CollectionTarget,
    model: &str,
    dimension: Option<u64>,
    qdrant_ready: Option<bool>,
) -> Result<CollectionState, Error> {
    let (url, name) = (target.url.as_str(), target.name.as_str());
    if target.needs_api_key {
        return Ok(CollectionState::Deferred(format!(
            "Qdrant at {url} needs an API key and the operator does not read Secrets: ingestion creates collection {name}; HNSW and quantization changes are not applied in place and the collection is not deleted with the KnowledgeBase"
        )));
    }
    if qdrant_ready == Some(false) {
        return Ok(CollectionState::Waiting("QdrantStarting", "waiting for the managed Qdrant to become ready".into()));
    }
    let wanted = CollectionTuning {
        hnsw_m: target.hnsw_m,
        ef_construct: target.ef_construct,
        int8_quantization: target.int8_quantization,
    };
    let unreachable = |e: crate::qdrant::QdrantAdminError| CollectionState::Waiting("QdrantUnreachable", e.to_string());
    Ok(match ctx.qdrant.describe(url, name).await {
        Err(e) => unreachable(e),
        Ok(Collection::Foreign(why)) => CollectionState::Stalled(
            "ForeignCollection",
            format!(
                "collection {name} on {url} cannot be used: {why}; delete it or name another collection in spec.store.qdrant.collection"
            ),
        ),
        Ok(Collection::Missing) => match dimension {
            Some(dimension) => {
                record_collection(ctx, kb, ns, name).await?;
                match ctx.qdrant.create(url, name, CollectionShape { dimension, tuning: wanted }).await {
                    Ok(()) => {
                        CollectionState::Ready(format!("created collection {name} ({dimension} dimensions) on {url}"))
                    }
                    Err(e) => unreachable(e),
                }
            }
            None => CollectionState::Deferred(format!(
                "Model {model} reports no embedding dimension, so the first ingestion creates collection {name} on {url}"
            )),
        },
        Ok(Collection::Hearth(shape)) => {
            if let Some(dimension) = dimension.filter(|d| *d != shape.dimension) {
                return Ok(CollectionState::Stalled(
                    "DimensionMismatch",
                    format!(
                        "collection {name} on {url} holds {}-dimensional vectors but Model {model} makes {dimension}-dimensional ones; the operator never re-creates a collection: delete it (it is re-ingested) or name another collection in spec.store.qdrant.collection",
                        shape.dimension
                    ),
                ));
            }
            if shape.tuning == wanted {
                return Ok(CollectionState::Ready(format!(
                    "collection {name} ({} dimensions) on {url}",
                    shape.dimension
                )));
            }
            match ctx.qdrant.tune(url, name, wanted).await {
                Ok(()) => CollectionState::Ready(format!(
                    "updated collection {name} in place: hnsw m {} -> {}, ef_construct {} -> {}, int8 quantization {} -> {}",
                    shape.tuning.hnsw_m,
                    wanted.hnsw_m,
                    shape.tuning.ef_construct,
                    wanted.ef_construct,
                    shape.tuning.int8_quantization,
                    wanted.int8_quantization
                )),
                Err(e) => unreachable(e),
            }
        }
    })
}

/// Deletes `name` if it exists and `uid` owns it: the operator never deletes what it did
/// not create.
async fn delete_owned<K>(api: &Api<K>, name: &str, uid: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let Some(object) = api.get_opt(name).await? else { return Ok(()) };
    if object.meta().owner_references.iter().flatten().any(|r| r.uid == uid) {
        super::delete_if_present(api, name).await?;
    }
    Ok(())
}

/// Applies the managed Qdrant, or removes it when an external one is named. Some(ready) for a
/// managed Qdrant, None for an external one.
async fn apply_managed_qdrant(
    ctx: &Context,
    ns: &str,
    uid: &str,
    objects: &KnowledgeBaseObjects,
    name: &str,
) -> Result<Option<bool>, Error> {
    let client = &ctx.client;
    let services = Api::<Service>::namespaced(client.clone(), ns);
    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), ns);
    let sets = Api::<StatefulSet>::namespaced(client.clone(), ns);
    match &objects.qdrant {
        Some(qdrant) => {
            apply(&services, &qdrant.service).await?;
            apply(&policies, &qdrant.network_policy).await?;
            let set = apply(&sets, &qdrant.stateful_set).await?;
            Ok(Some(set.status.and_then(|s| s.ready_replicas).unwrap_or(0) >= 1))
        }
        None => {
            let service = format!("{name}-qdrant");
            delete_owned(&services, &service, uid).await?;
            delete_owned(&policies, &service, uid).await?;
            delete_owned(&sets, &crate::builders::qdrant_stateful_set_name(name), uid).await?;
            Ok(None)
        }
    }
}

/// How one ingestion Job ended, or that it has not.
#[derive(Clone, Debug, PartialEq)]
pub enum JobOutcome {
    /// Still running (or not started).
    Running,
    /// Succeeded, at this time.
    Succeeded(Time),
    /// Failed, at this time, for this reason.
    Failed(Time, String),
}

/// How a Job ended, from its status.
pub fn job_outcome(job: &Job) -> JobOutcome {
    let status = job.status.clone().unwrap_or_default();
    let created = job.metadata.creation_timestamp.clone().unwrap_or(Time(k8s_openapi::jiff::Timestamp::now()));
    let condition =
        |type_: &str| status.conditions.iter().flatten().find(|c| c.type_ == type_ && c.status == "True").cloned();
    if let Some(failed) = condition("Failed") {
        let message = failed.message.or(failed.reason).unwrap_or_else(|| "the Job failed".into());
        return JobOutcome::Failed(failed.last_transition_time.unwrap_or(created), message);
    }
    if condition("Complete").is_some() || status.succeeded.unwrap_or(0) >= 1 {
        return JobOutcome::Succeeded(status.completion_time.unwrap_or(created));
    }
    JobOutcome::Running
}

/// What a finished ingestion left in its termination message.
#[derive(Clone, Debug, PartialEq)]
pub enum IngestReport {
    /// The summary `hearth-server ingest` wrote.
    Summary(IngestSummary),
    /// A message that is not a summary (the last log lines of a crash).
    Unreadable(String),
}

/// The report of `knowledge_base` in a termination message (JSON lines of [`IngestSummary`]).
pub fn parse_report(message: &str, knowledge_base: &str) -> IngestReport {
    let summaries: Vec<IngestSummary> =
        message.lines().filter_map(|line| serde_json::from_str::<IngestSummary>(line.trim()).ok()).collect();
    let mine = summaries.iter().find(|s| s.knowledge_base == knowledge_base).or(summaries.last());
    match mine {
        Some(summary) => IngestReport::Summary(summary.clone()),
        None => IngestReport::Unreadable(message.trim().chars().take(1024).collect()),
    }
}

/// The termination message of the Job's last finished `ingest` container, if any.
async fn job_report(ctx: &Context, ns: &str, job: &str, knowledge_base: &str) -> Result<Option<IngestReport>, Error> {
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), ns);
    let listed = pods.list(&ListParams::default().labels(&format!("job-name={job}"))).await?;
    let mut finished: Vec<(Time, String)> = listed
        .items
        .iter()
        .filter_map(|pod| pod.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .filter(|c| c.name == INGEST_COMPONENT)
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
        .filter_map(|t| Some((t.finished_at.clone()?, t.message.clone()?)))
        .collect();
    finished.sort_by_key(|a| a.0.0);
    Ok(finished.pop().map(|(_, message)| parse_report(&message, knowledge_base)))
}

/// The last finished ingestion: the Job, how it ended and its report.
#[derive(Clone, Debug)]
pub struct FinishedIngestion {
    /// The Job's name.
    pub job: String,
    /// How it ended.
    pub outcome: JobOutcome,
    /// Its termination message, when one was found.
    pub report: Option<IngestReport>,
}

/// Everything the status is computed from.
#[derive(Clone, Debug)]
pub struct Observed {
    /// Whether the embedding Model exists, is an embedding model, and is Ready.
    pub embedding: EmbeddingState,
    /// The collection.
    pub collection: CollectionState,
    /// The collection's name.
    pub collection_name: String,
    /// Why the spec cannot be ingested (reason, message), if it cannot.
    pub blocked: Option<(String, String)>,
    /// The ingestion Job running now, if any.
    pub running: Option<String>,
    /// The last finished ingestion, if any.
    pub finished: Option<FinishedIngestion>,
}

/// The embedding Model as the KnowledgeBase sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EmbeddingState {
    /// No such Model.
    Missing(String),
    /// It exists, not Ready yet.
    NotReady(String),
    /// It is Ready.
    Ready(String),
}

/// The status a KnowledgeBase should have.
pub fn desired_status(knowledge_base: &KnowledgeBase, observed: &Observed) -> KnowledgeBaseStatus {
    let generation = knowledge_base.meta().generation;
    let mut status = knowledge_base.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    let conditions = &mut status.conditions;

    match &observed.collection {
        CollectionState::Ready(message) => {
            condition(conditions, COLLECTION_READY, true, "Ensured", message.clone(), generation);
        }
        CollectionState::Deferred(message) => {
            condition(conditions, COLLECTION_READY, true, "CreatedByIngestion", message.clone(), generation);
        }
        CollectionState::Waiting(reason, message) | CollectionState::Stalled(reason, message) => {
            condition(conditions, COLLECTION_READY, false, reason, message.clone(), generation);
        }
        CollectionState::Skipped => {}
    }
    if matches!(observed.collection, CollectionState::Ready(_) | CollectionState::Deferred(_)) {
        status.collection = Some(observed.collection_name.clone());
    }

    if let Some(finished) = &observed.finished {
        let summary = match &finished.report {
            Some(IngestReport::Summary(summary)) => Some(summary),
            _ => None,
        };
        let failure = match (&finished.outcome, summary.and_then(|s| s.error.clone())) {
            (_, Some(error)) => Some(error),
            (JobOutcome::Failed(_, why), None) => Some(match &finished.report {
                Some(IngestReport::Unreadable(text)) if !text.is_empty() => format!("{why}: {text}"),
                _ => why.clone(),
            }),
            _ => None,
        };
        match (failure, summary, &finished.outcome) {
            (Some(error), _, _) => condition(
                &mut status.conditions,
                INDEXED,
                false,
                "IngestFailed",
                format!("Job {}: {error}", finished.job),
                generation,
            ),
            (None, Some(summary), JobOutcome::Succeeded(time)) => {
                status.documents = summary.documents;
                status.chunks = summary.chunks;
                status.skipped_documents = summary.skipped;
                status.last_indexed_time = Some(time.clone());
                status.last_index_duration_seconds = Some((summary.seconds * 10.0).round() / 10.0);
                condition(
                    &mut status.conditions,
                    INDEXED,
                    true,
                    "Indexed",
                    format!(
                        "{} documents, {} chunks ({} added, {} removed, {} sources skipped) by Job {}",
                        summary.documents,
                        summary.chunks,
                        summary.added,
                        summary.removed,
                        summary.skipped,
                        finished.job
                    ),
                    generation,
                );
            }
            (None, _, JobOutcome::Succeeded(_)) => condition(
                &mut status.conditions,
                INDEXED,
                false,
                "NoReport",
                format!("Job {} succeeded but left no ingestion summary in its termination message", finished.job),
                generation,
            ),
            (None, _, _) => {}
        }
    } else if find_condition(&status.conditions, INDEXED).is_none() {
        condition(&mut status.conditions, INDEXED, false, "NotIndexed", "no ingestion has finished yet", generation);
    }

    let conditions = &mut status.conditions;
    let stalled = observed.blocked.clone().or(match &observed.collection {
        CollectionState::Stalled(reason, message) => Some(((*reason).to_owned(), message.clone())),
        _ => None,
    });
    if let Some((reason, message)) = stalled {
        condition(conditions, STALLED, true, &reason, message.clone(), generation);
        condition(conditions, READY, false, &reason, message, generation);
        condition(conditions, RECONCILING, false, &reason, "waiting for a change to the spec", generation);
        return status;
    }
    condition(conditions, STALLED, false, "Progressing", "", generation);
    let waiting = match (&observed.embedding, &observed.collection) {
        (EmbeddingState::Missing(model), _) => {
            Some(("ModelNotReady", format!("Model {model} does not exist (spec.embedding.model)")))
        }
        (EmbeddingState::NotReady(model), _) => Some(("ModelNotReady", format!("Model {model} not Ready"))),
        (_, CollectionState::Waiting(reason, message)) => Some((*reason, message.clone())),
        _ if status.last_indexed_time.is_none() => Some((
            "NotIndexed",
            match &observed.running {
                Some(job) => format!("ingesting: Job {job} is running"),
                None => "no ingestion has succeeded yet".to_owned(),
            },
        )),
        _ => None,
    };
    match waiting {
        Some((reason, message)) => {
            condition(conditions, READY, false, reason, message.clone(), generation);
            condition(conditions, RECONCILING, true, reason, message, generation);
        }
        None => {
            let message = format!(
                "{} documents, {} chunks in collection {}",
                status.documents, status.chunks, observed.collection_name
            );
            condition(conditions, READY, true, "Indexed", message, generation);
            match &observed.running {
                Some(job) => condition(
                    conditions,
                    RECONCILING,
                    true,
                    "Ingesting",
                    format!("re-indexing: Job {job} is running"),
                    generation,
                ),
                None => condition(conditions, RECONCILING, false, "Indexed", "", generation),
            }
        }
    }
    status
}

async fn apply_knowledge_base(kb: &KnowledgeBase, ctx: &Context, ns: &str) -> Result<Action, Error> {
    let name = kb.name_any();
    let uid = kb.uid().unwrap_or_default();
    let model_name = kb.spec.embedding.model.clone();
    let embedding = read_embedding(ctx, ns, &model_name).await?;
    let objects = desired_knowledge_base_objects(kb, embedding.as_ref().map(|e| &e.model), &ctx.build)?;
    let client = &ctx.client;
    apply(&Api::<ConfigMap>::namespaced(client.clone(), ns), &objects.config_map).await?;
    let qdrant_ready = apply_managed_qdrant(ctx, ns, &uid, &objects, &name).await?;

    let embedding_state = match &embedding {
        None => EmbeddingState::Missing(model_name.clone()),
        Some(e) if e.ready() => EmbeddingState::Ready(model_name.clone()),
        Some(_) => EmbeddingState::NotReady(model_name.clone()),
    };
    let collection = if objects.blocked.is_some() {
        CollectionState::Skipped
    } else {
        let dimension =
            embedding.as_ref().filter(|e| e.model.spec.task == ModelTask::Embedding).and_then(|e| e.dimension);
        ensure_collection(ctx, kb, ns, &objects.collection, &model_name, dimension, qdrant_ready).await?
    };

    let may_ingest = objects.blocked.is_none()
        && matches!(embedding_state, EmbeddingState::Ready(_))
        && collection.allows_ingestion();
    let jobs = Api::<Job>::namespaced(client.clone(), ns);
    if let Some(job) = objects.ingest_job.as_ref().filter(|_| may_ingest) {
        // A Job's template cannot change: create it once; its name carries what it ingests.
        if jobs.get_opt(&job.name_any()).await?.is_none() {
            if matches!(collection, CollectionState::Deferred(_)) {
                // The Job creates the collection: record it first, as before creating it here.
                record_collection(ctx, kb, ns, &objects.collection.name).await?;
            }
            match jobs.create(&PostParams { field_manager: Some(MANAGER.into()), ..PostParams::default() }, job).await {
                Ok(_) => {
                    publish(ctx, kb, false, "Ingesting", format!("started ingestion Job {}", job.name_any())).await
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let cron_jobs = Api::<CronJob>::namespaced(client.clone(), ns);
    let reindex = crate::builders::reindex_cron_job_name(&name);
    match (&objects.cron_job, may_ingest) {
        (Some(cron_job), true) => {
            apply(&cron_jobs, cron_job).await?;
        }
        (Some(_), false) if objects.blocked.is_none() => {}
        _ => delete_owned(&cron_jobs, &reindex, &uid).await?,
    }

    let current = objects.ingest_job.as_ref().map(|j| j.name_any());
    let listed = jobs.list(&ListParams::default().labels(&format!("{KNOWLEDGE_BASE_LABEL}={name}"))).await?;
    let mut finished: Vec<(Time, Job)> = Vec::new();
    let mut running = None;
    for job in listed.items {
        let owned = job.owner_references().iter().any(|r| r.uid == uid);
        if owned && current.as_deref() != Some(job.name_any().as_str()) {
            // Ingests what the spec no longer asks for.
            super::delete_if_present(&jobs, &job.name_any()).await?;
            continue;
        }
        match job_outcome(&job) {
            JobOutcome::Running => running = Some(job.name_any()),
            JobOutcome::Succeeded(time) | JobOutcome::Failed(time, _) => finished.push((time, job)),
        }
    }
    finished.sort_by_key(|a| a.0.0);
    let finished = match finished.pop() {
        Some((_, job)) => {
            let report = job_report(ctx, ns, &job.name_any(), &name).await?;
            Some(FinishedIngestion { job: job.name_any(), outcome: job_outcome(&job), report })
        }
        None => None,
    };
    let observed = Observed {
        embedding: embedding_state,
        collection,
        collection_name: objects.collection.name.clone(),
        blocked: objects.blocked.as_ref().map(|b| (b.reason.as_str().to_owned(), b.message.clone())),
        running,
        finished,
    };
    let status = desired_status(kb, &observed);
    let previous = kb.status.clone().unwrap_or_default();
    if status != previous {
        let api: Api<KnowledgeBase> = Api::namespaced(client.clone(), ns);
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await?;
        announce(ctx, kb, &previous, &status).await;
    }
    let settling = find_condition(&status.conditions, RECONCILING).is_some_and(|c| c.status == ConditionStatus::True);
    Ok(Action::requeue(if settling { Duration::from_secs(30) } else { Duration::from_secs(300) }))
}

async fn announce(ctx: &Context, kb: &KnowledgeBase, before: &KnowledgeBaseStatus, after: &KnowledgeBaseStatus) {
    for type_ in [READY, INDEXED] {
        let was = find_condition(&before.conditions, type_).map(|c| (c.status, c.reason.clone()));
        let now = find_condition(&after.conditions, type_);
        if let Some(now) = now.filter(|now| was != Some((now.status, now.reason.clone()))) {
            let warning = now.status != ConditionStatus::True
                && (now.reason == "IngestFailed" || is_true(&after.conditions, STALLED));
            publish(ctx, kb, warning, &now.reason, now.message.clone()).await;
        }
    }
}

/// Runs before the KnowledgeBase goes: deletes its collection unless `deletionPolicy: Retain`.
async fn cleanup(kb: &KnowledgeBase, ctx: &Context) -> Result<Action, Error> {
    let objects = desired_knowledge_base_objects(kb, None, &ctx.build)?;
    let target = &objects.collection;
    if kb.spec.deletion_policy == DeletionPolicy::Retain {
        publish(
            ctx,
            kb,
            false,
            "CollectionRetained",
            format!("kept collection {} (deletionPolicy: Retain)", target.name),
        )
        .await;
        return Ok(Action::await_change());
    }
    // Never ensured: nothing of ours to delete (and an unreachable Qdrant must not block).
    if kb.status.as_ref().and_then(|s| s.collection.as_ref()).is_none() {
        return Ok(Action::await_change());
    }
    if target.needs_api_key {
        let note = format!(
            "collection {} on {} was not deleted: it needs an API key and the operator does not read Secrets; delete it yourself",
            target.name, target.url
        );
        publish(ctx, kb, true, "CollectionNotDeleted", note).await;
        return Ok(Action::await_change());
    }
    match ctx.qdrant.delete(&target.url, &target.name).await {
        Ok(_) => {
            publish(ctx, kb, false, "CollectionDeleted", format!("deleted collection {}", target.name)).await;
            Ok(Action::await_change())
        }
        // The managed Qdrant's storage goes with it (its claim follows deletionPolicy).
        Err(_) if target.managed => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}
