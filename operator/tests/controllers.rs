//! The real Model and Cascade controllers against the in-memory API server: objects appear,
//! status tells the truth, spec changes roll, faults are survived, nothing is duplicated.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth_crds::conditions::{ESCALATION_BUDGET_EXCEEDED, READY, STALLED, find_condition};
use hearth_crds::router::RouterReport;
use hearth_crds::{Cascade, ConditionStatus, Model, Resource as StackResource, parse_stack};
use hearth_operator::builders::BuildContext;
use hearth_operator::controller::{self, Context};
use hearth_operator::metrics::Metrics;
use hearth_test_apiserver::{FakeApiServer, Fault, Verb};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, ResourceExt};
use serde_json::json;

const NS: &str = "ai";

fn quickstart() -> Vec<StackResource> {
    let text = include_str!("../../manifests/examples/quickstart.yaml");
    parse_stack(text, "quickstart.yaml").unwrap()
}

fn model(name: &str) -> Model {
    quickstart()
        .into_iter()
        .find_map(|r| match r {
            StackResource::Model(m) if m.name_any() == name => Some(*m),
            _ => None,
        })
        .unwrap()
}

fn cascade() -> Cascade {
    quickstart()
        .into_iter()
        .find_map(|r| match r {
            StackResource::Cascade(c) => Some(*c),
            _ => None,
        })
        .unwrap()
}

struct Harness {
    server: FakeApiServer,
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
        let server = builder.start().await;
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
            let ctx = Arc::new(Context::new(task_client, BuildContext::new(), task_metrics).with_router_probe(probe));
            controller::run(ctx, None, async {
                let _ = stopped.await;
            })
            .await;
        });
        Self { server, metrics, client, stop: Some(stop), task, reports }
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
        let deployments = self.api::<Deployment>();
        let d = deployments.get(name).await.unwrap();
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = json!({"status": {
            "observedGeneration": d.metadata.generation,
            "replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas,
        }});
        deployments.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
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
