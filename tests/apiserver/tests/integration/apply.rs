use crate::config_map;
use hearth_test_apiserver::{FakeApiServer, PatchType};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

fn desired(data: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": data})
}

#[tokio::test]
async fn reapply_drops_fields_the_manager_no_longer_sends() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let op = PatchParams::apply("operator");
    api.patch("a", &op, &Patch::Apply(desired(json!({"x": "1", "y": "2"})))).await.unwrap();
    // Another manager's field survives the operator's re-apply.
    let kubectl = PatchParams { field_manager: Some("kubectl".into()), ..PatchParams::default() };
    api.patch("a", &kubectl, &Patch::Merge(json!({"data": {"z": "3"}}))).await.unwrap();

    let cm = api.patch("a", &op, &Patch::Apply(desired(json!({"x": "1"})))).await.unwrap();
    let data = cm.data.clone().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["x", "z"]);
    let managers: Vec<_> = cm.metadata.managed_fields.unwrap().into_iter().map(|m| (m.manager, m.operation)).collect();
    assert_eq!(
        managers,
        [(Some("kubectl".into()), Some("Update".into())), (Some("operator".into()), Some("Apply".into()))]
    );
}

#[tokio::test]
async fn conflicting_managers_need_force() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    api.patch("a", &PatchParams::apply("operator"), &Patch::Apply(desired(json!({"x": "1"})))).await.unwrap();

    // The same value is shared ownership, not a conflict.
    api.patch("a", &PatchParams::apply("hpa"), &Patch::Apply(desired(json!({"x": "1"})))).await.unwrap();
    let err = api.patch("a", &PatchParams::apply("other"), &Patch::Apply(desired(json!({"x": "2"})))).await;
    match err {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 409);
            assert!(status.message.contains(r#"conflict with "operator": .data.x"#), "{}", status.message);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let forced = PatchParams::apply("other").force();
    let cm = api.patch("a", &forced, &Patch::Apply(desired(json!({"x": "2"})))).await.unwrap();
    assert_eq!(cm.data.unwrap()["x"], "2");
    // Now "other" owns it: the operator's stale value conflicts.
    let back = api.patch("a", &PatchParams::apply("operator"), &Patch::Apply(desired(json!({"x": "1"})))).await;
    assert_eq!(crate::code(back), 409);
}

#[tokio::test]
async fn unchanged_apply_is_a_no_op_write() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let op = PatchParams::apply("operator").force();
    let first = api.patch("a", &op, &Patch::Apply(desired(json!({"x": "1"})))).await.unwrap();
    let second = api.patch("a", &op, &Patch::Apply(desired(json!({"x": "1"})))).await.unwrap();
    assert_eq!(first.metadata.resource_version, second.metadata.resource_version);
    let writes = server.writes();
    assert_eq!(writes.len(), 2);
    assert!(writes.iter().all(|w| w.patch == Some(PatchType::Apply) && w.field_manager.as_deref() == Some("operator")));
    assert_eq!(writes.iter().map(|w| w.changed).collect::<Vec<_>>(), [true, false]);
}

#[tokio::test]
async fn apply_conflicts_with_fields_set_by_create() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let pp = PostParams { field_manager: Some("creator".into()), ..PostParams::default() };
    api.create(&pp, &config_map("a", &[], &[("x", "1")])).await.unwrap();
    let apply = api.patch("a", &PatchParams::apply("operator"), &Patch::Apply(desired(json!({"x": "9"})))).await;
    assert_eq!(crate::code(apply), 409);
}
