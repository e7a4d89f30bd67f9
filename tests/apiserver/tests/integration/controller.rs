//! A tiny controller (Widget → owned ConfigMap) run by kube-runtime's Controller unmodified.

use crate::eventually;
use futures_util::StreamExt;
use hearth_test_apiserver::{FakeApiServer, Fault, PatchType, Verb};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, ResourceExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::watcher;
use kube::{Client, CustomResource, CustomResourceExt, Resource};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(group = "test.hearth.dev", version = "v1", kind = "Widget", namespaced, status = "WidgetStatus")]
struct WidgetSpec {
    message: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
struct WidgetStatus {
    #[serde(rename = "observedGeneration")]
    observed_generation: Option<i64>,
}

const MANAGER: &str = "widget-controller";

async fn reconcile(widget: Arc<Widget>, client: Arc<Client>) -> Result<Action, finalizer::Error<kube::Error>> {
    let ns = widget.namespace().unwrap_or_default();
    let widgets: Api<Widget> = Api::namespaced((*client).clone(), &ns);
    finalizer(&widgets, "test.hearth.dev/cleanup", widget, |event| async {
        match event {
            finalizer::Event::Apply(widget) => {
                let name = format!("{}-out", widget.name_any());
                let desired = json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "ownerReferences": [widget.controller_owner_ref(&())]},
                    "data": {"message": widget.spec.message},
                });
                let config_maps: Api<ConfigMap> = Api::namespaced((*client).clone(), &ns);
                config_maps.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(desired)).await?;
                let status = json!({"status": {"observedGeneration": widget.metadata.generation}});
                widgets.patch_status(&widget.name_any(), &PatchParams::default(), &Patch::Merge(status)).await?;
                Ok(Action::await_change())
            }
            finalizer::Event::Cleanup(_) => Ok(Action::await_change()),
        }
    })
    .await
}

#[tokio::test]
async fn controller_reconciles_later_changes_and_cleans_up() {
    let server = FakeApiServer::builder().operator_kinds().crd(&Widget::crd()).start().await;
    let client = server.client();
    // The first write of the owned ConfigMap fails: the error policy requeues and it succeeds.
    server.faults().inject(Fault::status(500).on(Verb::Patch).on_resource("configmaps").times(1));
    let controller = Controller::new(Api::<Widget>::all(client.clone()), watcher::Config::default())
        .owns(Api::<ConfigMap>::all(client.clone()), watcher::Config::default())
        .run(reconcile, |_, _, _| Action::requeue(Duration::from_millis(50)), Arc::new(client.clone()))
        .for_each(|_| async {});
    let controller = tokio::spawn(controller);

    let widgets: Api<Widget> = Api::namespaced(client.clone(), "default");
    let message = |server: &FakeApiServer| {
        server.get::<ConfigMap>("default", "w-out").and_then(|cm| cm.data).map(|data| data["message"].clone())
    };
    let observed = || async {
        let widget = widgets.get("w").await.unwrap();
        widget.status.and_then(|s| s.observed_generation) == widget.metadata.generation
    };

    widgets.create(&PostParams::default(), &Widget::new("w", WidgetSpec { message: "one".into() })).await.unwrap();
    eventually("the first message", || async { message(&server) == Some("one".to_string()) }).await;
    eventually("status for generation 1", observed).await;

    let change = Patch::Merge(json!({"spec": {"message": "two"}}));
    let changed = widgets.patch("w", &PatchParams::default(), &change).await.unwrap();
    assert_eq!(changed.metadata.generation, Some(2));
    eventually("the changed message", || async { message(&server) == Some("two".to_string()) }).await;
    eventually("status for generation 2", observed).await;

    // Drift in the owned object brings the controller back (it owns ConfigMaps).
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let tamper = Patch::Merge(json!({"data": {"message": "tampered"}}));
    config_maps.patch("w-out", &PatchParams::default(), &tamper).await.unwrap();
    eventually("the repaired message", || async { message(&server) == Some("two".to_string()) }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let applied: Vec<_> = server
        .writes()
        .into_iter()
        .filter(|w| w.resource == "configmaps" && w.patch == Some(PatchType::Apply) && w.changed)
        .collect();
    assert_eq!(applied.len(), 3, "one real write per change, none duplicated: {applied:#?}");

    widgets.delete("w", &DeleteParams::default()).await.unwrap();
    eventually("the widget to go", || async { widgets.get_opt("w").await.unwrap().is_none() }).await;
    assert!(message(&server).is_none(), "the owned ConfigMap is garbage-collected");
    controller.abort();
    server.stop().await;
}
