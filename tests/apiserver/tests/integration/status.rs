use hearth_test_apiserver::FakeApiServer;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

fn deployment(replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}},
        "status": {"replicas": 7}
    }))
    .expect("a valid Deployment")
}

fn status_replicas(d: &Deployment) -> Option<i32> {
    d.status.as_ref().and_then(|s| s.replicas)
}

#[tokio::test]
async fn status_subresource_and_generation() {
    let server = FakeApiServer::start().await;
    let api: Api<Deployment> = Api::namespaced(server.client(), "default");
    let created = api.create(&PostParams::default(), &deployment(1)).await.unwrap();
    assert_eq!((created.metadata.generation, status_replicas(&created)), (Some(1), None), "create drops status");

    // The main resource ignores .status; a spec change bumps the generation.
    let mut change = created.clone();
    change.spec.as_mut().unwrap().replicas = Some(2);
    change.status = Some(DeploymentStatus { replicas: Some(5), ..DeploymentStatus::default() });
    let updated = api.replace("web", &PostParams::default(), &change).await.unwrap();
    assert_eq!((updated.metadata.generation, status_replicas(&updated)), (Some(2), None));

    // /status writes only .status and leaves the generation alone.
    let status = Patch::Merge(json!({"status": {"replicas": 2}, "spec": {"replicas": 9}}));
    let patched = api.patch_status("web", &PatchParams::default(), &status).await.unwrap();
    assert_eq!(patched.metadata.generation, Some(2));
    assert_eq!((patched.spec.as_ref().unwrap().replicas, status_replicas(&patched)), (Some(2), Some(2)));

    let mut replaced = patched.clone();
    replaced.status.as_mut().unwrap().ready_replicas = Some(1);
    let replaced = api.replace_status("web", &PostParams::default(), &replaced).await.unwrap();
    assert_eq!(replaced.status.unwrap().ready_replicas, Some(1));

    // A metadata-only change keeps the generation.
    let labels = Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}}));
    let labelled = api.patch("web", &PatchParams::default(), &labels).await.unwrap();
    assert_eq!(labelled.metadata.generation, Some(2));

    // Server-side apply to /status by the controller, spec applied by someone else.
    let apply_status = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "status": {"availableReplicas": 2}});
    let applied = api.patch_status("web", &PatchParams::apply("ctl"), &Patch::Apply(apply_status)).await.unwrap();
    assert_eq!(applied.status.unwrap().available_replicas, Some(2));
    assert_eq!(applied.metadata.generation, Some(2));
}
