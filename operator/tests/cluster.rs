//! The controllers against a real cluster, when `KUBECONFIG` is set (skipped otherwise, with
//! a note): CRDs are applied, a throwaway namespace is created and deleted afterwards.
//! Pods need not start: the assertions are on the objects and the status the operator writes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::sync::Arc;
use std::time::Duration;

use hearth_crds::conditions::{READY, STALLED, find_condition};
use hearth_crds::{ConditionStatus, Model, Resource as StackResource, parse_stack};
use hearth_operator::builders::BuildContext;
use hearth_operator::controller::{self, Context, MANAGER};
use hearth_operator::metrics::Metrics;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

async fn poll<T, F, Fut>(what: &str, seconds: u64, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    support::eventually(what, seconds, Duration::from_millis(500), check).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_on_a_real_cluster() {
    if std::env::var_os("KUBECONFIG").is_none() {
        eprintln!("skipping: set KUBECONFIG to run the controllers against a real cluster");
        return;
    }
    let client = Client::try_default().await.expect("KUBECONFIG is set but no cluster answers");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in hearth_crds::crds() {
        crds.patch(&crd.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&crd))
            .await
            .expect("apply CRD");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ns = format!("hearth-e2e-{:08x}", rand::random::<u32>());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace { metadata: ObjectMeta { name: Some(ns.clone()), ..Default::default() }, ..Default::default() },
        )
        .await
        .expect("create the test namespace");
    let ctx = Arc::new(Context::new(client.clone(), BuildContext::new(), Arc::new(Metrics::default())));
    let operator = tokio::spawn(controller::run(ctx, Some(ns.clone()), std::future::pending()));

    let stack = parse_stack(include_str!("../../manifests/examples/quickstart.yaml"), "quickstart").unwrap();
    let mut gemma = stack
        .into_iter()
        .find_map(|r| match r {
            StackResource::Model(m) if m.name_any() == "gemma3-270m" => Some(*m),
            _ => None,
        })
        .unwrap();
    gemma.metadata.namespace = Some(ns.clone());
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    models.create(&PostParams::default(), &gemma).await.expect("create Model");
    poll("the server Deployment", 60, || async {
        Api::<Deployment>::namespaced(client.clone(), &ns).get_opt("gemma3-270m-server").await.ok().flatten()
    })
    .await;
    assert!(Api::<Service>::namespaced(client.clone(), &ns).get_opt("gemma3-270m").await.unwrap().is_some());
    poll("a status with Ready", 60, || async {
        let m = models.get("gemma3-270m").await.ok()?;
        let status = m.status?;
        (status.observed_generation == m.metadata.generation)
            .then(|| find_condition(&status.conditions, READY).cloned())?
    })
    .await;

    let mut big = gemma.clone();
    big.metadata.name = Some("too-big".into());
    big.metadata.resource_version = None;
    let sizing = big.spec.sizing.get_or_insert_with(Default::default);
    sizing.parameters = Some("405B".into());
    models.create(&PostParams::default(), &big).await.expect("create the oversized Model");
    let stalled = poll("Stalled", 60, || async {
        let m = models.get("too-big").await.ok()?;
        find_condition(&m.status?.conditions, STALLED).filter(|c| c.status == ConditionStatus::True).cloned()
    })
    .await;
    assert_eq!(stalled.reason, "FitsNowhere");
    assert!(Api::<Deployment>::namespaced(client.clone(), &ns).get_opt("too-big-server").await.unwrap().is_none());

    operator.abort();
    namespaces.delete(&ns, &DeleteParams::default()).await.expect("delete the test namespace");
}
