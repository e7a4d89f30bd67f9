use crate::{code, config_map};
use futures_util::{StreamExt, TryStreamExt};
use hearth_test_apiserver::{FakeApiServer, Verb};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

#[tokio::test]
async fn delete_waits_for_finalizers() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let mut cm = config_map("a", &[], &[]);
    cm.metadata.finalizers = Some(vec!["test/one".into(), "test/two".into()]);
    let created = api.create(&PostParams::default(), &cm).await.unwrap();
    let rv = created.metadata.resource_version.unwrap();
    let mut events = api.watch(&WatchParams::default().disable_bookmarks(), &rv).await.unwrap().boxed();

    let marked = api.delete("a", &DeleteParams::default()).await.unwrap().left().expect("the object, not a Status");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.metadata.generation, Some(2));
    assert!(matches!(events.try_next().await.unwrap(), Some(WatchEvent::Modified(_))));
    // A second delete changes nothing.
    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(api.get("a").await.unwrap().metadata.deletion_timestamp.is_some());

    let remove_first: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "test/one"},
        {"op": "remove", "path": "/metadata/finalizers/0"}
    ]))
    .unwrap();
    api.patch("a", &PatchParams::default(), &Patch::Json::<()>(remove_first)).await.unwrap();
    assert!(matches!(events.try_next().await.unwrap(), Some(WatchEvent::Modified(_))));
    assert!(api.get("a").await.is_ok(), "one finalizer is still pending");

    let clear = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    api.patch("a", &PatchParams::default(), &clear).await.unwrap();
    assert!(matches!(events.try_next().await.unwrap(), Some(WatchEvent::Deleted(_))));
    assert_eq!(code(api.get("a").await), 404);
}

fn owned_by(name: &str, owner: &ConfigMap) -> ConfigMap {
    let mut cm = config_map(name, &[], &[]);
    cm.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: owner.metadata.name.clone().expect("a stored object has a name"),
        uid: owner.metadata.uid.clone().expect("a stored object has a uid"),
        ..OwnerReference::default()
    }]);
    cm
}

#[tokio::test]
async fn deleting_an_owner_collects_its_dependents() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let pp = PostParams::default();
    let owner = api.create(&pp, &config_map("owner", &[], &[])).await.unwrap();
    let child = api.create(&pp, &owned_by("child", &owner)).await.unwrap();
    api.create(&pp, &owned_by("grandchild", &child)).await.unwrap();
    let mut guarded = owned_by("guarded", &owner);
    guarded.metadata.finalizers = Some(vec!["test/keep".into()]);
    api.create(&pp, &guarded).await.unwrap();
    api.create(&pp, &config_map("bystander", &[], &[])).await.unwrap();

    api.delete("owner", &DeleteParams::background()).await.unwrap();
    let left: Vec<String> =
        api.list(&Default::default()).await.unwrap().items.into_iter().map(|c| c.metadata.name.unwrap()).collect();
    assert_eq!(left, ["bystander", "guarded"]);
    assert!(api.get("guarded").await.unwrap().metadata.deletion_timestamp.is_some());
    let collected = server.writes().into_iter().filter(|w| w.field_manager.as_deref() == Some("garbage-collector"));
    assert_eq!(collected.filter(|w| w.verb == Verb::Delete).count(), 3);
}

#[tokio::test]
async fn a_dependent_written_after_its_owner_is_gone_is_collected() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let pp = PostParams::default();
    let owner = api.create(&pp, &config_map("owner", &[], &[])).await.unwrap();
    let other = api.create(&pp, &config_map("other", &[], &[])).await.unwrap();
    api.delete("owner", &DeleteParams::background()).await.unwrap();

    // A late child of the deleted owner goes; one that also has a live owner only loses the
    // dangling reference.
    api.create(&pp, &owned_by("late", &owner)).await.unwrap();
    assert_eq!(code(api.get("late").await), 404);
    let mut shared = owned_by("shared", &owner);
    shared.metadata.owner_references.as_mut().unwrap().extend(owned_by("x", &other).metadata.owner_references.unwrap());
    api.create(&pp, &shared).await.unwrap();
    let owners = api.get("shared").await.unwrap().metadata.owner_references.unwrap();
    assert_eq!(owners.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["other"]);
    // A child of a live owner stays.
    api.create(&pp, &owned_by("kept", &other)).await.unwrap();
    assert!(api.get("kept").await.is_ok());
}

#[tokio::test]
async fn orphan_propagation_keeps_dependents() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let owner = api.create(&PostParams::default(), &config_map("owner", &[], &[])).await.unwrap();
    api.create(&PostParams::default(), &owned_by("child", &owner)).await.unwrap();
    api.delete("owner", &DeleteParams::orphan()).await.unwrap();
    let child = api.get("child").await.unwrap();
    assert!(child.metadata.owner_references.is_none());
}
