use crate::{code, config_map};
use hearth_test_apiserver::FakeApiServer;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::discovery::Discovery;
use serde_json::json;

#[tokio::test]
async fn creates_gets_lists_and_deletes() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let created = api.create(&PostParams::default(), &config_map("a", &[("app", "web")], &[("k", "v")])).await.unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some() && meta.resource_version.is_some());
    api.create(&PostParams::default(), &config_map("b", &[("app", "api")], &[])).await.unwrap();
    Api::<ConfigMap>::namespaced(server.client(), "other")
        .create(&PostParams::default(), &config_map("c", &[("app", "web")], &[]))
        .await
        .unwrap();

    assert_eq!(api.get("a").await.unwrap().data.unwrap()["k"], "v");
    let names = |list: kube::core::ObjectList<ConfigMap>| {
        list.items.into_iter().map(|c| c.metadata.name.unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(names(api.list(&ListParams::default()).await.unwrap()), ["a", "b"]);
    assert_eq!(names(api.list(&ListParams::default().labels("app=web")).await.unwrap()), ["a"]);
    assert_eq!(names(api.list(&ListParams::default().labels("app in (web,api)")).await.unwrap()), ["a", "b"]);
    assert_eq!(names(api.list(&ListParams::default().fields("metadata.name=b")).await.unwrap()), ["b"]);
    let all: Api<ConfigMap> = Api::all(server.client());
    assert_eq!(names(all.list(&ListParams::default().labels("app=web")).await.unwrap()), ["a", "c"]);

    let first = all.list(&ListParams::default().limit(2)).await.unwrap();
    let token = first.metadata.continue_.clone().expect("a continue token");
    assert_eq!(names(first), ["a", "b"]);
    assert_eq!(names(all.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap()), ["c"]);

    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(code(api.get("a").await), 404);
    assert_eq!(server.objects(&ApiResource::erase::<ConfigMap>(&()), "default").len(), 1);
    assert_eq!(server.list::<ConfigMap>(None).len(), 2);
    assert!(server.get::<ConfigMap>("other", "c").is_some());
}

#[tokio::test]
async fn create_twice_and_stale_update_conflict() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let cm = api.create(&PostParams::default(), &config_map("a", &[], &[("k", "1")])).await.unwrap();
    match api.create(&PostParams::default(), &cm).await {
        Err(kube::Error::Api(status)) => assert_eq!((status.code, status.reason.as_str()), (409, "AlreadyExists")),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }

    let mut fresh = cm.clone();
    fresh.data = Some([("k".to_string(), "2".to_string())].into());
    let updated = api.replace("a", &PostParams::default(), &fresh).await.unwrap();
    assert_ne!(updated.metadata.resource_version, cm.metadata.resource_version);
    // `fresh` still carries the old resourceVersion.
    assert_eq!(code(api.replace("a", &PostParams::default(), &fresh).await), 409);
    assert_eq!(code(api.replace("missing", &PostParams::default(), &config_map("missing", &[], &[])).await), 404);
}

#[tokio::test]
async fn merge_and_json_patches() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    api.create(&PostParams::default(), &config_map("a", &[], &[("k", "1"), ("drop", "x")])).await.unwrap();
    let merge = Patch::Merge(json!({"data": {"k": "2", "drop": null}}));
    let patched = api.patch("a", &PatchParams::default(), &merge).await.unwrap();
    assert_eq!(patched.data.unwrap(), [("k".to_string(), "2".to_string())].into());

    let ops: json_patch::Patch =
        serde_json::from_value(json!([{"op": "add", "path": "/data/new", "value": "n"}])).unwrap();
    let patched = api.patch("a", &PatchParams::default(), &Patch::Json::<()>(ops)).await.unwrap();
    assert_eq!(patched.data.unwrap()["new"], "n");

    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/data/k", "value": "nope"}])).unwrap();
    assert_eq!(code(api.patch("a", &PatchParams::default(), &Patch::Json::<()>(failing)).await), 422);
    assert_eq!(code(api.patch("missing", &PatchParams::default(), &merge).await), 404);
}

#[tokio::test]
async fn cluster_scoped_kinds_and_discovery() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in hearth_crds::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    assert_eq!(crds.list(&ListParams::default()).await.unwrap().items.len(), 4);
    assert_eq!(crds.get("models.hearth.dev").await.unwrap().spec.names.plural, "models");

    assert_eq!(client.apiserver_version().await.unwrap().minor, "33");
    let discovery = Discovery::new(client).run().await.unwrap();
    let (model, caps) =
        discovery.groups().flat_map(|g| g.recommended_resources()).find(|(r, _)| r.kind == "Model").unwrap();
    assert_eq!((model.plural.as_str(), caps.scope), ("models", kube::discovery::Scope::Namespaced));
    assert!(discovery.has_group("apps") && discovery.has_group("autoscaling"));
}

#[tokio::test]
async fn event_recorder_creates_then_patches_a_series() {
    use k8s_openapi::api::events::v1::Event;
    use kube::Resource;
    use kube::runtime::events::{Event as Report, EventType, Recorder, Reporter};

    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let cm = api.create(&PostParams::default(), &config_map("a", &[], &[])).await.unwrap();
    let recorder = Recorder::new(server.client(), Reporter { controller: "test".into(), instance: None });
    let report = Report {
        type_: EventType::Normal,
        reason: "Synced".into(),
        note: None,
        action: "Reconcile".into(),
        secondary: None,
    };
    for _ in 0..2 {
        recorder.publish(&report, &cm.object_ref(&())).await.unwrap();
    }
    let events = server.list::<Event>("default");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].series.as_ref().map(|s| s.count), Some(2));
}
