//! Weights whose SHA-256 differs from `spec.source.sha256` are never served, and the Model
//! says so: the real Model controller against the in-memory API server, with the fetch step's
//! failure played the way the kubelet reports it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::sync::Arc;
use std::time::Duration;

use hearth_crds::conditions::{READY, STALLED, find_condition};
use hearth_crds::model::ModelPhase;
use hearth_crds::{ConditionStatus, Model, Resource as StackResource, parse_stack};
use hearth_operator::builders::BuildContext;
use hearth_operator::controller::model::DOWNLOADED;
use hearth_operator::controller::{self, Context};
use hearth_operator::metrics::Metrics;
use hearth_test_apiserver::{FakeApiServer, ResourceInfo};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, ResourceExt};
use serde_json::json;

const NS: &str = "ai";

fn gemma() -> Model {
    let text = include_str!("../../manifests/examples/quickstart.yaml");
    parse_stack(text, "quickstart.yaml")
        .unwrap()
        .into_iter()
        .find_map(|r| match r {
            StackResource::Model(m) if m.name_any() == "gemma3-270m" => Some(*m),
            _ => None,
        })
        .unwrap()
}

async fn condition(models: &Api<Model>, type_: &str) -> Option<(ConditionStatus, String, String)> {
    let m = models.get_opt("gemma3-270m").await.ok()??;
    let c = find_condition(&m.status?.conditions, type_)?.clone();
    Some((c.status, c.reason, c.message))
}

/// A server pod whose fetch init container ended as `fetch` says.
async fn server_pod(client: &Client, deployment: &Deployment, name: &str, fetch: serde_json::Value) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let labels = deployment.spec.as_ref().unwrap().selector.match_labels.clone();
    let pod = Pod {
        metadata: ObjectMeta { name: Some(name.into()), labels, ..ObjectMeta::default() },
        spec: deployment.spec.as_ref().unwrap().template.spec.clone(),
        status: None,
    };
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let status = json!({"status": {"phase": "Pending", "initContainerStatuses": [
        {"name": "fetch", "image": "hearth-server", "imageID": "", "ready": false, "restartCount": 3, "started": false,
         "state": fetch["state"], "lastState": fetch["lastState"]}
    ]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
}

/// Makes the controller look again now (it does not watch pods).
async fn touch(models: &Api<Model>, n: u32) {
    let patch = json!({"metadata": {"annotations": {"test/touch": n.to_string()}}});
    models.patch("gemma3-270m", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_mismatch_keeps_the_model_not_ready_and_says_why() {
    let pods = ResourceInfo::namespaced(ApiResource::erase::<Pod>(&())).with_status();
    let server = FakeApiServer::builder().operator_kinds().resource(pods).start().await;
    let client = server.client();
    let namespace =
        Namespace { metadata: ObjectMeta { name: Some(NS.into()), ..Default::default() }, ..Default::default() };
    let _ = Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await;
    let ctx = Arc::new(Context::new(client.clone(), BuildContext::new(), Arc::new(Metrics::default())));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(controller::run(ctx, None, async {
        let _ = stopped.await;
    }));

    let models: Api<Model> = Api::namespaced(client.clone(), NS);
    let mut model = gemma();
    model.spec.source.sha256 = Some("2b07".repeat(16));
    model.metadata.namespace = Some(NS.into());
    models.create(&PostParams::default(), &model).await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let deployment = support::eventually("the Deployment", 20, Duration::from_millis(50), || async {
        deployments.get_opt("gemma3-270m-server").await.ok().flatten()
    })
    .await;

    // The fetch step found other bytes than the pinned SHA-256 and crash-loops.
    let mismatch = "Error: fetching hf://…/gemma-3-270m-it-Q4_K_M.gguf\n\nCaused by:\n    /cache/gemma-3-270m-it-Q4_K_M.gguf.partial: SHA-256 mismatch: expected 2b07, found 9f1c; the file was removed";
    server_pod(
        &client,
        &deployment,
        "gemma3-270m-server-1",
        json!({"state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 1, "message": mismatch}}}),
    )
    .await;
    touch(&models, 1).await;
    let (status, reason, message) =
        support::eventually("Ready=False ChecksumMismatch", 20, Duration::from_millis(50), || async {
            condition(&models, READY).await.filter(|c| c.1 == "ChecksumMismatch")
        })
        .await;
    assert_eq!(status, ConditionStatus::False);
    assert!(message.contains("SHA-256 mismatch: expected 2b07, found 9f1c"), "{message}");
    assert!(message.contains("gemma3-270m-server-1"), "{message}");
    let (downloaded, reason_d, _) = condition(&models, DOWNLOADED).await.unwrap();
    assert_eq!((downloaded, reason_d.as_str()), (ConditionStatus::False, "ChecksumMismatch"));
    assert_eq!(condition(&models, STALLED).await.unwrap().0, ConditionStatus::True);
    assert_eq!(models.get("gemma3-270m").await.unwrap().status.unwrap().phase, ModelPhase::Failed);
    assert_eq!(reason, "ChecksumMismatch");

    // The source is fixed: a pod whose fetch succeeded and a ready replica make it Ready,
    // with the weights verified.
    Api::<Pod>::namespaced(client.clone(), NS).delete("gemma3-270m-server-1", &Default::default()).await.unwrap();
    server_pod(&client, &deployment, "gemma3-270m-server-2", json!({"state": {"terminated": {"exitCode": 0}}})).await;
    let d = deployments.get("gemma3-270m-server").await.unwrap();
    let ready = json!({"status": {"observedGeneration": d.metadata.generation, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1}});
    deployments.patch_status("gemma3-270m-server", &PatchParams::default(), &Patch::Merge(ready)).await.unwrap();
    touch(&models, 2).await;
    support::eventually("Ready=True", 20, Duration::from_millis(50), || async {
        condition(&models, READY).await.filter(|c| c.0 == ConditionStatus::True)
    })
    .await;
    let (downloaded, reason, _) = condition(&models, DOWNLOADED).await.unwrap();
    assert_eq!((downloaded, reason.as_str()), (ConditionStatus::True, "WeightsVerified"));
    assert_eq!(condition(&models, STALLED).await.unwrap().0, ConditionStatus::False);

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), operator).await;
}
