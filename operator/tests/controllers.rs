//! The real controllers against the in-memory API server (and a fake Qdrant admin): objects
//! appear, status tells the truth, spec changes roll, faults are survived, nothing is
//! duplicated.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use support::qdrant::FakeQdrant;
use support::stack::{cascade, knowledge_base, model};
use support::workloads;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth_crds::agent::Agent;
use hearth_crds::conditions::{ESCALATION_BUDGET_EXCEEDED, READY, STALLED, find_condition};
use hearth_crds::knowledge_base::{DeletionPolicy, KnowledgeBase, QdrantStore};
use hearth_crds::router::RouterReport;
use hearth_crds::runtime::{AgentRuntimeConfig, IngestSummary};
use hearth_crds::{Cascade, ConditionStatus, Model};
use hearth_operator::builders::BuildContext;
use hearth_operator::builders::restricted_profile_violations;
use hearth_operator::controller::knowledge_base::{COLLECTION_READY, INDEXED};
use hearth_operator::controller::{self, Context};
use hearth_operator::metrics::Metrics;
use hearth_operator::qdrant::{CollectionShape, CollectionTuning, QdrantAdmin};
use hearth_test_apiserver::{FakeApiServer, Fault, ResourceInfo, Verb};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, ResourceExt};
use serde_json::json;

const NS: &str = "ai";

struct Harness {
    server: FakeApiServer,
    /// The Qdrant the KnowledgeBase controller manages collections on.
    qdrant: Arc<FakeQdrant>,
    metrics: Arc<Metrics>,
    client: Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    /// What the Cascade routers report when the operator reads them.
    reports: Arc<Mutex<Vec<RouterReport>>>,
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(FakeApiServer::builder().operator_kinds()).await
    }

    async fn start_with(builder: hearth_test_apiserver::Builder) -> Self {
        // Pods, for the termination messages of ingestion Jobs.
        let pods = ResourceInfo::namespaced(ApiResource::erase::<Pod>(&())).with_status();
        let server = builder.resource(pods).start().await;
        let qdrant = Arc::new(FakeQdrant::default());
        let task_qdrant: Arc<dyn QdrantAdmin> = qdrant.clone();
        let client = server.client();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let _ = namespaces
            .create(
                &PostParams::default(),
                &Namespace {
                    metadata: ObjectMeta { name: Some(NS.into()), ..Default::default() },
                    ..Default::default()
                },
            )
            .await;
        let task_client = client.clone();
        let reports: Arc<Mutex<Vec<RouterReport>>> = Arc::default();
        let metrics = Arc::new(Metrics::default());
        let task_metrics = metrics.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let probe_reports = reports.clone();
        let task = tokio::spawn(async move {
            let probe: controller::RouterProbe = Arc::new(move |url: String| {
                let reports = probe_reports.clone();
                Box::pin(async move {
                    assert!(url.ends_with(".svc.cluster.local:8080/cascades"), "probed {url}");
                    let reports = reports.lock().unwrap().clone();
                    (!reports.is_empty()).then_some(reports)
                })
            });
            let ctx = Arc::new(
                Context::new(task_client, BuildContext::new(), task_metrics)
                    .with_router_probe(probe)
                    .with_qdrant_admin(task_qdrant),
            );
            controller::run(ctx, None, async {
                let _ = stopped.await;
            })
            .await;
        });
        Self { server, qdrant, metrics, client, stop: Some(stop), task, reports }
    }

    /// Stops the operator (as a crash would: no cleanup) and waits for it to end.
    async fn crash(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), NS)
    }

    /// Polls until `check` returns Some, or fails after `seconds`.
    async fn eventually<T, F, Fut>(&self, what: &str, seconds: u64, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        support::eventually(what, seconds, Duration::from_millis(50), check).await
    }

    async fn model_condition(&self, name: &str, type_: &str) -> Option<(ConditionStatus, String, String)> {
        let m = self.api::<Model>().get_opt(name).await.ok()??;
        let c = find_condition(&m.status?.conditions, type_)?.clone();
        Some((c.status, c.reason, c.message))
    }

    /// Marks a Deployment rolled out and ready, as the Deployment controller would.
    async fn make_ready(&self, name: &str) {
        workloads::make_ready(&self.api(), name).await.unwrap();
    }
}

async fn count<K>(api: &Api<K>) -> usize
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&Default::default()).await.map(|l| l.items.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_gets_its_objects_and_a_truthful_status() {
    let h = Harness::start().await;
    let models = h.api::<Model>();
    models.create(&PostParams::default(), &model("gemma3-270m")).await.unwrap();

    let deployment = h
        .eventually("the server Deployment", 20, || async {
            h.api::<Deployment>().get_opt("gemma3-270m-server").await.ok().flatten()
        })
        .await;
    let owner = &deployment.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("Model", "gemma3-270m", Some(true)));
    assert!(h.api::<Service>().get_opt("gemma3-270m").await.unwrap().is_some());
    assert!(h.api::<PersistentVolumeClaim>().get_opt("gemma3-270m-cache").await.unwrap().is_some());
    assert!(h.api::<HorizontalPodAutoscaler>().get_opt("gemma3-270m-server").await.unwrap().is_some());
    assert!(h.api::<NetworkPolicy>().get_opt("gemma3-270m-server").await.unwrap().is_some());
    assert_eq!(count(&h.api::<ConfigMap>()).await, 1);

    // No replica is ready yet: Ready=False from the first reconcile, with the footprint.
    let (status, reason, _) = h.eventually("Ready=False", 20, || h.model_condition("gemma3-270m", READY)).await;
    assert_eq!((status, reason.as_str()), (ConditionStatus::False, "ReplicasNotReady"));
    let m = models.get("gemma3-270m").await.unwrap();
    let s = m.status.unwrap();
    assert_eq!(s.observed_generation, m.metadata.generation);
    assert!(s.endpoint.unwrap().starts_with("http://gemma3-270m.ai.svc.cluster.local:8080"));
    let footprint = s.footprint.unwrap();
    assert!(footprint.fits && footprint.weights_bytes > 100_000_000);

    h.make_ready("gemma3-270m-server").await;
    h.eventually("Ready=True", 20, || async {
        h.model_condition("gemma3-270m", READY).await.filter(|c| c.0 == ConditionStatus::True)
    })
    .await;
    let m = models.get("gemma3-270m").await.unwrap();
    assert_eq!(m.status.unwrap().ready_replicas, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_rolls_the_deployment_and_a_second_reconcile_changes_nothing() {
    let h = Harness::start().await;
    let models = h.api::<Model>();
    models.create(&PostParams::default(), &model("qwen-coder-1-5b")).await.unwrap();
    let hash = |d: &Deployment| {
        d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.clone().unwrap_or_default()
    };
    let before = h
        .eventually("the Deployment", 20, || async {
            h.api::<Deployment>().get_opt("qwen-coder-1-5b-server").await.ok().flatten()
        })
        .await;
    h.eventually("a status", 20, || h.model_condition("qwen-coder-1-5b", READY)).await;

    // Idempotency: once settled, another reconcile leaves every owned object as it is.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let snapshot = |h: &Harness| {
        let deps = h.server.objects(&ApiResource::erase::<Deployment>(&()), NS);
        let cms = h.server.objects(&ApiResource::erase::<ConfigMap>(&()), NS);
        (deps, cms)
    };
    let settled = snapshot(&h);
    models
        .patch(
            "qwen-coder-1-5b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touch": "1"}}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(snapshot(&h), settled, "a reconcile without a spec change must change nothing");

    models
        .patch(
            "qwen-coder-1-5b",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"serving": {"maxTokens": 512}}})),
        )
        .await
        .unwrap();
    let after = h
        .eventually("the rolled Deployment", 20, || async {
            let d = h.api::<Deployment>().get("qwen-coder-1-5b-server").await.ok()?;
            (hash(&d) != hash(&before)).then_some(d)
        })
        .await;
    assert_eq!(count(&h.api::<Deployment>()).await, 1);
    let m = models.get("qwen-coder-1-5b").await.unwrap();
    h.eventually("observedGeneration to follow", 20, || async {
        let m2 = models.get("qwen-coder-1-5b").await.ok()?;
        (m2.status?.observed_generation == m.metadata.generation).then_some(())
    })
    .await;
    assert!(after.metadata.generation > before.metadata.generation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_fits_nowhere_is_stalled_with_no_deployment() {
    let h = Harness::start().await;
    let mut big = model("qwen-coder-1-5b");
    big.metadata.name = Some("llama-70b".into());
    big.spec.sizing.as_mut().unwrap().parameters = Some("70B".into());
    big.spec.sizing.as_mut().unwrap().layers = Some(80);
    big.spec.sizing.as_mut().unwrap().kv_heads = Some(8);
    big.spec.hardware.accelerator = hearth_crds::model::Accelerator::Apple;
    big.spec.hardware.profile = Some("mac-mini-m4-pro-64gb".into());
    h.api::<Model>().create(&PostParams::default(), &big).await.unwrap();
    let (status, reason, message) = h
        .eventually("Stalled", 20, || async {
            h.model_condition("llama-70b", STALLED).await.filter(|c| c.0 == ConditionStatus::True)
        })
        .await;
    assert_eq!((status, reason.as_str()), (ConditionStatus::True, "FitsNowhere"));
    assert!(message.contains("mac-mini-m4-pro-64gb"), "{message}");
    let (ready, _, _) = h.model_condition("llama-70b", READY).await.unwrap();
    assert_eq!(ready, ConditionStatus::False);
    assert!(h.api::<Deployment>().get_opt("llama-70b-server").await.unwrap().is_none());
    let m = h.api::<Model>().get("llama-70b").await.unwrap();
    assert!(!m.status.unwrap().footprint.unwrap().fits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_and_a_crash_still_converge_without_duplicates() {
    let mut h = Harness::start().await;
    // Server errors, conflicts and throttling on the first writes and reads, then a
    // reproducible trickle of further server errors.
    h.server.faults().seed(7);
    h.server.faults().inject(Fault::status(500).on(Verb::Patch).times(3));
    h.server.faults().inject(Fault::status(409).on(Verb::Patch).times(2));
    h.server.faults().inject(Fault::status(429).on(Verb::Get).times(2));
    h.server.faults().inject(Fault::status(500).on(Verb::Patch).probability(0.05));
    h.api::<Model>().create(&PostParams::default(), &model("gemma3-270m")).await.unwrap();
    h.eventually("the Deployment despite faults", 30, || async {
        h.api::<Deployment>().get_opt("gemma3-270m-server").await.ok().flatten()
    })
    .await;
    h.crash().await;
    let errors = h.metrics.encode();
    assert!(
        errors.contains("hearth_operator_reconcile_errors_total{controller=\"model\",reason=\"server\"}"),
        "the injected faults must have hit the reconciler:\n{errors}"
    );
    h.server.faults().clear();
    // A new operator picks up where the old one stopped.
    let restarted = Harness::start_with_existing(&h).await;
    h.make_ready("gemma3-270m-server").await;
    h.eventually("Ready after restart", 30, || async {
        h.model_condition("gemma3-270m", READY).await.filter(|c| c.0 == ConditionStatus::True)
    })
    .await;
    for (kind, n) in [
        ("deployments", count(&h.api::<Deployment>()).await),
        ("services", count(&h.api::<Service>()).await),
        ("configmaps", count(&h.api::<ConfigMap>()).await),
        ("pvcs", count(&h.api::<PersistentVolumeClaim>()).await),
        ("hpas", count(&h.api::<HorizontalPodAutoscaler>()).await),
    ] {
        assert_eq!(n, 1, "exactly one of {kind}");
    }
    drop(restarted);
}

impl Harness {
    /// Starts a second operator against the same API server (after a crash).
    async fn start_with_existing(h: &Harness) -> tokio::task::JoinHandle<()> {
        let client = h.client.clone();
        tokio::spawn(async move {
            let ctx = Arc::new(Context::new(client, BuildContext::new(), Arc::new(Metrics::default())));
            controller::run(ctx, None, std::future::pending()).await;
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_model_deletes_what_it_owns() {
    let h = Harness::start().await;
    h.api::<Model>().create(&PostParams::default(), &model("gemma3-270m")).await.unwrap();
    h.eventually("the Deployment", 20, || async {
        h.api::<Deployment>().get_opt("gemma3-270m-server").await.ok().flatten()
    })
    .await;
    h.api::<Model>().delete("gemma3-270m", &DeleteParams::default()).await.unwrap();
    h.eventually("garbage collection", 20, || async {
        (count(&h.api::<Deployment>()).await == 0
            && count(&h.api::<Service>()).await == 0
            && count(&h.api::<ConfigMap>()).await == 0)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascade_waits_for_its_models_and_follows_their_readiness() {
    let h = Harness::start().await;
    h.api::<Cascade>().create(&PostParams::default(), &cascade()).await.unwrap();
    let cascade_ready = || async {
        let c = h.api::<Cascade>().get_opt("support").await.ok()??;
        let cond = find_condition(&c.status?.conditions, READY)?.clone();
        Some((cond.status, cond.reason, cond.message))
    };
    let (status, reason, message) = h.eventually("waiting on models", 20, cascade_ready).await;
    assert_eq!((status, reason.as_str()), (ConditionStatus::False, "ModelNotReady"));
    assert!(message.contains("gemma3-270m"), "{message}");
    assert!(h.api::<Deployment>().get_opt("support-router").await.unwrap().is_some());

    for name in ["gemma3-270m", "qwen-coder-1-5b"] {
        h.api::<Model>().create(&PostParams::default(), &model(name)).await.unwrap();
        h.eventually("the model server", 20, || async {
            h.api::<Deployment>().get_opt(&format!("{name}-server")).await.ok().flatten()
        })
        .await;
        h.make_ready(&format!("{name}-server")).await;
    }
    // The router reports 70% of its last 200 requests escalated, over the 50% budget.
    *h.reports.lock().unwrap() = vec![RouterReport {
        name: "support".into(),
        stages: vec!["gemma3-270m".into(), "qwen-coder-1-5b".into()],
        escalation_ratio: 0.7,
        window_requests: 200,
        escalation_window: 1000,
        max_escalation_ratio: Some(0.5),
        budget_exceeded: true,
    }];
    h.make_ready("support-router").await;
    let (status, _, message) = h
        .eventually("Cascade Ready", 30, || async { cascade_ready().await.filter(|c| c.0 == ConditionStatus::True) })
        .await;
    assert_eq!(status, ConditionStatus::True);
    assert!(message.contains("gemma3-270m → qwen-coder-1-5b"), "{message}");
    let c = h.api::<Cascade>().get("support").await.unwrap();
    let status = c.status.unwrap();
    assert!(status.stages.iter().all(|s| s.ready && s.endpoint.is_some()));
    assert_eq!(status.observed_escalation_ratio, Some(0.7));
    let budget = find_condition(&status.conditions, ESCALATION_BUDGET_EXCEEDED).expect("the budget condition");
    assert_eq!(budget.status, ConditionStatus::True);
    assert_eq!(budget.message, "70.0% of the last 200 requests escalated past the first stage; the budget is 50.0%");
}

// ---------------------------------------------------------------- knowledge bases

/// The quickstart's handbook on an external Qdrant without an API key.
fn external_knowledge_base(name: &str, policy: DeletionPolicy) -> KnowledgeBase {
    let mut kb = knowledge_base("handbook");
    kb.metadata.name = Some(name.into());
    kb.spec.store.qdrant =
        Some(QdrantStore { url: EXTERNAL_QDRANT.into(), api_key_secret_ref: None, collection: None });
    kb.spec.deletion_policy = policy;
    kb
}

const EXTERNAL_QDRANT: &str = "http://qdrant.db:6334";
const MINILM: CollectionShape = CollectionShape {
    dimension: 384,
    tuning: CollectionTuning { hnsw_m: 16, ef_construct: 100, int8_quantization: false },
};

impl Harness {
    async fn kb_condition(&self, name: &str, type_: &str) -> Option<(ConditionStatus, String, String)> {
        let kb = self.api::<KnowledgeBase>().get_opt(name).await.ok()??;
        let c = find_condition(&kb.status?.conditions, type_)?.clone();
        Some((c.status, c.reason, c.message))
    }

    /// The embedding model, its server ready and its status reporting 384 dimensions.
    async fn ready_minilm(&self) {
        self.api::<Model>().create(&PostParams::default(), &model("minilm")).await.unwrap();
        let dimension = json!({"status": {"embeddingDimension": 384}});
        self.api::<Model>().patch_status("minilm", &PatchParams::default(), &Patch::Merge(dimension)).await.unwrap();
        self.eventually("the minilm server", 20, || async {
            self.api::<Deployment>().get_opt("minilm-server").await.ok().flatten()
        })
        .await;
        self.make_ready("minilm-server").await;
        self.eventually("minilm Ready", 20, || async {
            self.model_condition("minilm", READY).await.filter(|c| c.0 == ConditionStatus::True)
        })
        .await;
    }

    async fn ingest_jobs(&self, kb: &str) -> Vec<Job> {
        let selector = format!("hearth.dev/knowledge-base={kb}");
        self.api::<Job>().list(&ListParams::default().labels(&selector)).await.map(|l| l.items).unwrap_or_default()
    }

    /// Finishes an ingestion Job as the Job controller and kubelet would: a pod whose `ingest`
    /// container left `message` as its termination message, then the Job's status.
    async fn finish_job(&self, job: &str, succeeded: bool, message: &str, at: &str) {
        workloads::finish_job(&self.api(), &self.api(), job, succeeded, message, at).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_knowledge_base_gets_a_managed_qdrant_a_collection_and_an_ingestion_it_reports() {
    let h = Harness::start().await;
    h.ready_minilm().await;
    h.api::<KnowledgeBase>().create(&PostParams::default(), &knowledge_base("handbook")).await.unwrap();

    // No external Qdrant: a managed one, restricted, behind its own Service and policy.
    let set = h
        .eventually("the managed Qdrant", 20, || async {
            h.api::<StatefulSet>().get_opt("handbook-qdrant").await.ok().flatten()
        })
        .await;
    let pod = set.spec.as_ref().and_then(|s| s.template.spec.as_ref()).unwrap();
    assert_eq!(restricted_profile_violations(pod), Vec::<String>::new());
    assert!(h.api::<Service>().get_opt("handbook-qdrant").await.unwrap().is_some());
    assert!(h.api::<NetworkPolicy>().get_opt("handbook-qdrant").await.unwrap().is_some());
    let (_, reason, _) = h
        .eventually("waiting for Qdrant", 20, || async {
            h.kb_condition("handbook", COLLECTION_READY).await.filter(|c| c.0 == ConditionStatus::False)
        })
        .await;
    assert_eq!(reason, "QdrantStarting");
    assert!(h.ingest_jobs("handbook").await.is_empty(), "no ingestion before the collection");

    let ready = json!({"status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1}});
    h.api::<StatefulSet>()
        .patch_status("handbook-qdrant", &PatchParams::default(), &Patch::Merge(ready))
        .await
        .unwrap();
    let url = "http://handbook-qdrant.ai.svc.cluster.local:6334";
    let created = h.eventually("the collection", 20, || async { h.qdrant.shape(url, "ai-handbook") }).await;
    assert_eq!(created, MINILM);

    let job =
        h.eventually("the ingestion Job", 20, || async { h.ingest_jobs("handbook").await.into_iter().next() }).await;
    let job_name = job.name_any();
    assert!(job_name.starts_with("handbook-ingest-"), "{job_name}");
    assert!(h.api::<CronJob>().get_opt("handbook-reindex").await.unwrap().is_some(), "the schedule's CronJob");
    let (status, reason, _) = h.kb_condition("handbook", READY).await.unwrap();
    assert_eq!((status, reason.as_str()), (ConditionStatus::False, "NotIndexed"));

    let summary = IngestSummary {
        knowledge_base: "handbook".into(),
        documents: 3,
        chunks: 12,
        added: 12,
        removed: 0,
        skipped: 1,
        seconds: 4.23,
        error: None,
    };
    let message = format!("{}\n", serde_json::to_string(&summary).unwrap());
    h.finish_job(&job_name, true, &message, "2025-06-01T03:00:00Z").await;
    h.eventually("Ready", 20, || async {
        h.kb_condition("handbook", READY).await.filter(|c| c.0 == ConditionStatus::True)
    })
    .await;
    let status = h.api::<KnowledgeBase>().get("handbook").await.unwrap().status.unwrap();
    assert_eq!((status.documents, status.chunks, status.skipped_documents), (3, 12, 1));
    assert_eq!(status.last_index_duration_seconds, Some(4.2));
    assert_eq!(status.last_indexed_time.map(|t| t.0.to_string()), Some("2025-06-01T03:00:00Z".to_owned()));
    assert_eq!(status.collection.as_deref(), Some("ai-handbook"));
    let indexed = find_condition(&status.conditions, INDEXED).unwrap();
    assert_eq!(indexed.status, ConditionStatus::True);
    assert!(indexed.message.contains(&job_name), "{}", indexed.message);
    assert!(!find_condition(&status.conditions, STALLED).is_some_and(|c| c.status == ConditionStatus::True));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_ingestion_says_why_and_never_makes_the_knowledge_base_ready() {
    let h = Harness::start().await;
    h.ready_minilm().await;
    h.api::<KnowledgeBase>()
        .create(&PostParams::default(), &external_knowledge_base("handbook", DeletionPolicy::Delete))
        .await
        .unwrap();
    let job =
        h.eventually("the ingestion Job", 20, || async { h.ingest_jobs("handbook").await.into_iter().next() }).await;
    let failure = IngestSummary {
        knowledge_base: "handbook".into(),
        error: Some("ConfigMap handbook: no such directory /configmaps/handbook".into()),
        ..IngestSummary::default()
    };
    h.finish_job(&job.name_any(), false, &serde_json::to_string(&failure).unwrap(), "2025-06-01T03:00:00Z").await;
    let (_, reason, message) = h
        .eventually("Indexed=False", 20, || async {
            h.kb_condition("handbook", INDEXED).await.filter(|c| c.1 == "IngestFailed")
        })
        .await;
    assert_eq!(reason, "IngestFailed");
    assert!(message.contains("no such directory /configmaps/handbook"), "{message}");
    let (ready, _, _) = h.kb_condition("handbook", READY).await.unwrap();
    assert_eq!(ready, ConditionStatus::False);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dimension_mismatch_stalls_and_never_recreates_the_collection() {
    let h = Harness::start().await;
    let mpnet = CollectionShape { dimension: 768, ..MINILM };
    h.qdrant.put(EXTERNAL_QDRANT, "ai-handbook", mpnet);
    h.ready_minilm().await;
    h.api::<KnowledgeBase>()
        .create(&PostParams::default(), &external_knowledge_base("handbook", DeletionPolicy::Delete))
        .await
        .unwrap();
    let (_, reason, message) = h
        .eventually("Stalled", 20, || async {
            h.kb_condition("handbook", STALLED).await.filter(|c| c.0 == ConditionStatus::True)
        })
        .await;
    assert_eq!(reason, "DimensionMismatch");
    for part in ["ai-handbook", "768", "384", "minilm"] {
        assert!(message.contains(part), "{part} in {message}");
    }
    let (ready, _, _) = h.kb_condition("handbook", READY).await.unwrap();
    assert_eq!(ready, ConditionStatus::False);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(h.ingest_jobs("handbook").await.is_empty(), "nothing is ingested into the wrong collection");
    assert_eq!(h.qdrant.shape(EXTERNAL_QDRANT, "ai-handbook"), Some(mpnet));
    assert!(h.qdrant.logged().is_empty(), "{:?}", h.qdrant.logged());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_are_tuned_in_place_and_deleted_with_the_knowledge_base_unless_retained() {
    let h = Harness::start().await;
    h.ready_minilm().await;
    let kbs = h.api::<KnowledgeBase>();
    kbs.create(&PostParams::default(), &external_knowledge_base("handbook", DeletionPolicy::Delete)).await.unwrap();
    kbs.create(&PostParams::default(), &external_knowledge_base("kept", DeletionPolicy::Retain)).await.unwrap();
    for collection in ["ai-handbook", "ai-kept"] {
        h.eventually("the collections", 20, || async { h.qdrant.shape(EXTERNAL_QDRANT, collection) }).await;
    }
    let kb = kbs.get("handbook").await.unwrap();
    assert_eq!(kb.metadata.finalizers.as_deref(), Some(&["hearth.dev/collection".to_owned()][..]));
    h.eventually("status.collection", 20, || async {
        kbs.get("handbook").await.ok()?.status?.collection.filter(|c| c == "ai-handbook")
    })
    .await;

    kbs.patch("handbook", &PatchParams::default(), &Patch::Merge(json!({"spec": {"store": {"hnsw": {"m": 32}}}})))
        .await
        .unwrap();
    h.eventually("tuned in place", 20, || async {
        h.qdrant.shape(EXTERNAL_QDRANT, "ai-handbook").filter(|s| s.tuning.hnsw_m == 32)
    })
    .await;
    assert_eq!(h.qdrant.shape(EXTERNAL_QDRANT, "ai-handbook").unwrap().dimension, 384);

    for name in ["handbook", "kept"] {
        kbs.delete(name, &DeleteParams::default()).await.unwrap();
    }
    h.eventually("both gone", 20, || async {
        (kbs.get_opt("handbook").await.ok()?.is_none() && kbs.get_opt("kept").await.ok()?.is_none()).then_some(())
    })
    .await;
    assert_eq!(h.qdrant.shape(EXTERNAL_QDRANT, "ai-handbook"), None, "deleted");
    assert_eq!(h.qdrant.shape(EXTERNAL_QDRANT, "ai-kept"), Some(MINILM), "deletionPolicy: Retain");
    assert!(!h.qdrant.logged().contains(&"delete ai-kept".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_source_is_stalled_naming_the_field() {
    let h = Harness::start().await;
    let mut kb = external_knowledge_base("handbook", DeletionPolicy::Delete);
    kb.spec.sources = vec![serde_json::from_value(json!({"directory": {"path": "./handbook"}})).unwrap()];
    h.api::<KnowledgeBase>().create(&PostParams::default(), &kb).await.unwrap();
    let (_, reason, message) = h
        .eventually("Stalled", 20, || async {
            h.kb_condition("handbook", STALLED).await.filter(|c| c.0 == ConditionStatus::True)
        })
        .await;
    assert_eq!(reason, "DirectorySource");
    assert!(message.starts_with("spec.sources[0].directory"), "{message}");
    assert!(h.ingest_jobs("handbook").await.is_empty());
}

// ---------------------------------------------------------------- agents

fn assistant() -> Agent {
    let agent = json!({
        "apiVersion": "hearth.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": "assistant"},
        "spec": {
            "model": {"model": "gemma3-270m"},
            "tools": [{"calculator": {}}],
            "guardrails": {"egress": ["api.example.com:443"]},
        },
    });
    serde_json::from_value(agent).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_is_ready_only_once_its_model_is_and_calls_it_at_its_endpoint() {
    let h = Harness::start().await;
    let agents = h.api::<Agent>();
    agents.create(&PostParams::default(), &assistant()).await.unwrap();
    let agent_ready = || async {
        let a = agents.get_opt("assistant").await.ok()??;
        let c = find_condition(&a.status?.conditions, READY)?.clone();
        Some((c.status, c.reason, c.message))
    };
    let (_, reason, message) = h.eventually("waiting for the model", 20, agent_ready).await;
    assert_eq!(reason, "DependenciesNotReady");
    assert_eq!(message, "Model gemma3-270m does not exist");
    assert!(h.api::<Deployment>().get_opt("assistant-agent").await.unwrap().is_some());

    h.api::<Model>().create(&PostParams::default(), &model("gemma3-270m")).await.unwrap();
    h.eventually("Model gemma3-270m not Ready", 20, || async {
        agent_ready().await.filter(|c| c.2 == "Model gemma3-270m not Ready")
    })
    .await;
    h.make_ready("gemma3-270m-server").await;
    let (status, _, _) = h
        .eventually("the runtime is next", 20, || async { agent_ready().await.filter(|c| c.1 == "RuntimeNotReady") })
        .await;
    assert_eq!(status, ConditionStatus::False);

    let endpoint = h.api::<Model>().get("gemma3-270m").await.unwrap().status.unwrap().endpoint.unwrap();
    let config_map = h.api::<ConfigMap>().get("assistant-agent").await.unwrap();
    let config: AgentRuntimeConfig = serde_yaml::from_str(&config_map.data.unwrap()["agent.yaml"]).unwrap();
    assert_eq!(config.model.name, "gemma3-270m");
    assert_eq!(config.model.endpoint, endpoint);
    assert_eq!(config.spec, assistant().spec);

    let policy = h.api::<NetworkPolicy>().get("assistant-agent").await.unwrap();
    let egress = serde_json::to_value(policy.spec.unwrap().egress.unwrap()).unwrap();
    assert_eq!(
        egress,
        json!([
            {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
            {"to": [{"podSelector": {"matchLabels": {"hearth.dev/model": "gemma3-270m", "app.kubernetes.io/component": "server"}}}],
             "ports": [{"port": 8080, "protocol": "TCP"}]},
            {"ports": [{"port": 443, "protocol": "TCP"}]},
        ])
    );

    h.make_ready("assistant-agent").await;
    h.eventually("Ready", 20, || async { agent_ready().await.filter(|c| c.0 == ConditionStatus::True) }).await;
    let status = agents.get("assistant").await.unwrap().status.unwrap();
    assert_eq!(status.endpoint.as_deref(), Some("http://assistant-agent.ai.svc.cluster.local:8080/v1"));
    assert_eq!(status.tool_count, 1);
}
