//! The Model controller: weights cache, inference-server Deployment, Service, autoscaler,
//! disruption budget and network policy, and a status that says what is really running.

use std::sync::Arc;
use std::time::Duration;

use hearth_crds::conditions::{READY, RECONCILING, STALLED, find_condition};
use hearth_crds::model::{Footprint as StatusFootprint, Model, ModelPhase, ModelStatus};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use kube::runtime::{Controller, watcher};

use super::{Context, Error, MANAGER, apply, apply_or_delete, condition, publish};
use super::{Scope, drain, error_policy};
use crate::builders::{ModelObjects, desired_model_objects, model_endpoint, scaled_object_resource};
use crate::sizing::memory_quantity;

/// The condition saying whether the weights were fetched and verified.
pub const DOWNLOADED: &str = "Downloaded";

/// The controller's name in metrics and logs.
pub const NAME: &str = "model";

/// Runs the Model controller until shutdown: a Model reconciles when it or one of the objects
/// it owns changes.
pub(crate) async fn run(ctx: Arc<Context>, scope: &Scope) {
    let owned = Scope::owned();
    let controller = Controller::new(scope.api::<Model>(), watcher::Config::default())
        .owns(scope.api::<Deployment>(), owned.clone())
        .owns(scope.api::<Service>(), owned.clone())
        .owns(scope.api::<ConfigMap>(), owned.clone())
        .owns(scope.api::<HorizontalPodAutoscaler>(), owned)
        .graceful_shutdown_on(scope.stopped())
        .run(reconcile, |m, e, ctx| error_policy(m.as_ref(), e, &ctx, NAME), ctx);
    drain(NAME, controller).await;
}

/// Reconciles one Model.
pub async fn reconcile(model: Arc<Model>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started(NAME);
    let namespace = model.namespace().ok_or_else(|| Error::NoNamespace(model.name_any()))?;
    // Sizing comes from the spec; the fetch step does not report measured sizes yet.
    let objects = desired_model_objects(&model, &ctx.build, None)?;
    let deployment = apply_objects(&ctx, &namespace, &objects).await?;
    let fetch = match deployment.as_ref() {
        Some(d) if d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0) == 0 => {
            fetch_failure(&server_pods(&ctx, &namespace, d).await?)
        }
        _ => None,
    };
    let status = desired_status(&model, &objects, deployment.as_ref(), fetch, &ctx);
    let previous = model.status.clone().unwrap_or_default();
    if status != previous {
        let api: Api<Model> = Api::namespaced(ctx.client.clone(), &namespace);
        api.patch_status(&model.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
            .await?;
        announce(&ctx, &model, &previous, &status).await;
    }
    let settling =
        find_condition(&status.conditions, RECONCILING).is_some_and(|c| c.status == hearth_crds::ConditionStatus::True);
    Ok(if settling { Action::requeue(Duration::from_secs(30)) } else { Action::requeue(Duration::from_secs(300)) })
}

/// Applies every wanted object and deletes the optional ones the spec no longer wants.
/// Returns the Deployment as the API server holds it (with status), when one is wanted.
async fn apply_objects(ctx: &Context, ns: &str, objects: &ModelObjects) -> Result<Option<Deployment>, Error> {
    let client = &ctx.client;
    apply(&Api::<ConfigMap>::namespaced(client.clone(), ns), &objects.config_map).await?;
    // A claim's spec is mostly immutable once bound: create it once, never re-apply.
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns);
    if pvcs.get_opt(&objects.pvc.name_any()).await?.is_none() {
        match pvcs
            .create(&PostParams { field_manager: Some(MANAGER.into()), ..PostParams::default() }, &objects.pvc)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    apply(&Api::<Service>::namespaced(client.clone(), ns), &objects.service).await?;
    apply(&Api::<NetworkPolicy>::namespaced(client.clone(), ns), &objects.network_policy).await?;

    let server_name = format!("{}-server", objects.service.name_any());
    let hpas = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), ns);
    apply_or_delete(&hpas, &server_name, objects.hpa.as_ref()).await?;
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), ns);
    apply_or_delete(&pdbs, &server_name, objects.pdb.as_ref()).await?;
    if ctx.build.keda_available {
        let scaled = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &scaled_object_resource());
        apply_or_delete(&scaled, &server_name, objects.scaled_object.as_ref()).await?;
    }
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    Ok(apply_or_delete(&deployments, &server_name, objects.deployment.as_ref()).await?)
}

/// The Deployment's pods.
async fn server_pods(ctx: &Context, ns: &str, deployment: &Deployment) -> Result<Vec<Pod>, Error> {
    let labels = deployment
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|l| l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    if labels.is_empty() {
        return Ok(Vec::new());
    }
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), ns);
    Ok(pods.list(&ListParams::default().labels(&labels)).await?.items)
}

/// Why a server pod's fetch step failed, if one did: the condition reason (`ChecksumMismatch`
/// when the weights' SHA-256 differs from `spec.source.sha256`, else `FetchFailed`) and a
/// message with the step's own last words (its termination message, or its log tail).
pub fn fetch_failure(pods: &[Pod]) -> Option<(&'static str, String)> {
    const MOST: usize = 600;
    for pod in pods {
        let statuses = pod.status.iter().flat_map(|s| s.init_container_statuses.iter().flatten());
        for status in statuses.filter(|s| s.name == "fetch") {
            let failed = |state: Option<&k8s_openapi::api::core::v1::ContainerState>| {
                state.and_then(|s| s.terminated.as_ref()).filter(|t| t.exit_code != 0).cloned()
            };
            let Some(terminated) = failed(status.state.as_ref()).or_else(|| failed(status.last_state.as_ref())) else {
                continue;
            };
            let said = terminated.message.unwrap_or_default();
            let said = said.trim();
            let tail = match said.char_indices().rev().nth(MOST) {
                Some((at, _)) => &said[at..],
                None => said,
            };
            let reason = if said.contains("SHA-256 mismatch") { "ChecksumMismatch" } else { "FetchFailed" };
            let message = format!(
                "pod {}: the fetch step exited with {}: {tail}",
                pod.metadata.name.as_deref().unwrap_or("?"),
                terminated.exit_code
            );
            return Some((reason, message));
        }
    }
    None
}

/// The status the Model should have, from what was built, what the Deployment reports and
/// why its fetch step failed, if it did ([`fetch_failure`]).
pub fn desired_status(
    model: &Model,
    objects: &ModelObjects,
    deployment: Option<&Deployment>,
    fetch: Option<(&'static str, String)>,
    ctx: &Context,
) -> ModelStatus {
    let generation = model.meta().generation;
    let mut status = model.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    status.endpoint = Some(model_endpoint(model, &ctx.build));
    status.footprint = objects.footprint.as_ref().map(|f| StatusFootprint {
        weights_bytes: f.weights_bytes,
        kv_bytes_per_token: f.kv_bytes_per_token,
        memory_request: memory_quantity(f.memory_bytes),
        fits: true,
        profile: Some(f.profile.name.clone()),
        estimated_decode_tokens_per_second: Some((f.estimated_decode_tokens_per_second * 10.0).round() / 10.0),
    });
    let conditions = &mut status.conditions;
    if let Some(blocked) = &objects.blocked {
        if blocked.reason == crate::builders::NoteReason::FitsNowhere {
            status.footprint = Some(StatusFootprint { fits: false, ..status.footprint.clone().unwrap_or_default() });
        }
        condition(conditions, READY, false, blocked.reason.as_str(), blocked.message.clone(), generation);
        condition(conditions, STALLED, true, blocked.reason.as_str(), blocked.message.clone(), generation);
        condition(
            conditions,
            RECONCILING,
            false,
            blocked.reason.as_str(),
            "waiting for a change to the spec",
            generation,
        );
        status.phase = ModelPhase::Failed;
        status.replicas = 0;
        status.ready_replicas = 0;
        return status;
    }
    let ready_replicas = deployment.and_then(|d| d.status.as_ref()).and_then(|s| s.ready_replicas).unwrap_or(0);
    match (&fetch, ready_replicas) {
        (Some((reason, message)), 0) => {
            // Weights that fail their checksum are never served: no replica starts.
            condition(conditions, READY, false, reason, message.clone(), generation);
            condition(conditions, STALLED, true, reason, message.clone(), generation);
            condition(conditions, DOWNLOADED, false, reason, message.clone(), generation);
        }
        _ => condition(conditions, STALLED, false, "Progressing", "", generation),
    }
    for note in &objects.notes {
        condition(conditions, "Scaled", false, note.reason.as_str(), note.message.clone(), generation);
    }
    if objects.notes.is_empty() {
        condition(conditions, "Scaled", true, "AutoscalerConfigured", "replicas follow the spec", generation);
    }
    let dep_status = deployment.and_then(|d| d.status.clone()).unwrap_or_default();
    let wanted = deployment.and_then(|d| d.spec.as_ref()).and_then(|s| s.replicas).unwrap_or(1);
    let observed = dep_status.observed_generation >= deployment.and_then(|d| d.metadata.generation);
    status.replicas = dep_status.replicas.unwrap_or(0);
    status.ready_replicas = dep_status.ready_replicas.unwrap_or(0);
    let updated = dep_status.updated_replicas.unwrap_or(0);
    let available = dep_status.available_replicas.unwrap_or(0);
    let rolled_out = observed && updated >= wanted && status.replicas == updated && available >= wanted;
    let ready = status.ready_replicas >= 1 || (wanted == 0 && rolled_out);
    if fetch.is_some() && !ready {
        status.phase = ModelPhase::Failed;
        return status;
    }
    if status.ready_replicas >= 1 {
        let (reason, message) = match &model.spec.source.sha256 {
            Some(_) => {
                ("WeightsVerified", "a replica fetched the weights and their SHA-256 matched spec.source.sha256")
            }
            None => ("WeightsFetched", "a replica fetched the weights (no spec.source.sha256 to check them against)"),
        };
        condition(conditions, DOWNLOADED, true, reason, message, generation);
    }
    if ready {
        condition(
            conditions,
            READY,
            true,
            "Available",
            format!("{} of {} replicas ready", status.ready_replicas, status.replicas),
            generation,
        );
        status.phase = ModelPhase::Serving;
    } else {
        condition(
            conditions,
            READY,
            false,
            "ReplicasNotReady",
            "waiting for a server replica to load the model",
            generation,
        );
        status.phase = ModelPhase::Starting;
    }
    if rolled_out {
        condition(conditions, RECONCILING, false, "RolledOut", "every replica runs the current spec", generation);
    } else {
        condition(
            conditions,
            RECONCILING,
            true,
            "RollingOut",
            format!("{updated} of {wanted} replicas updated, {available} available"),
            generation,
        );
    }
    condition(
        conditions,
        "Available",
        ready,
        if ready { "MinimumReplicasAvailable" } else { "NoReplicaReady" },
        "",
        generation,
    );
    status
}

async fn announce(ctx: &Context, model: &Model, before: &ModelStatus, after: &ModelStatus) {
    let was = |s: &ModelStatus, t: &str| find_condition(&s.conditions, t).map(|c| (c.status, c.reason.clone()));
    if was(before, READY) != was(after, READY)
        && let Some(ready) = find_condition(&after.conditions, READY)
    {
        let ok = ready.status == hearth_crds::ConditionStatus::True;
        let warning = !ok
            && find_condition(&after.conditions, STALLED)
                .is_some_and(|c| c.status == hearth_crds::ConditionStatus::True);
        publish(ctx, model, warning, &ready.reason, ready.message.clone()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, fetch_status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"initContainerStatuses": [
                {"name": "fetch", "image": "x", "imageID": "", "ready": false, "restartCount": 2, "started": false,
                 "state": fetch_status["state"], "lastState": fetch_status["lastState"]}
            ]}
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_checksum_mismatch_in_a_crash_looping_fetch_is_named() {
        let crash_looping = pod(
            "gemma-server-abc",
            json!({
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "message":
                    "Error: /cache/gemma.gguf.partial: SHA-256 mismatch: expected 00ff, found 1234; the file was removed\n"}}
            }),
        );
        let (reason, message) = fetch_failure(&[crash_looping]).expect("a failure");
        assert_eq!(reason, "ChecksumMismatch");
        assert!(message.starts_with("pod gemma-server-abc: the fetch step exited with 1: Error:"), "{message}");
        assert!(message.contains("expected 00ff, found 1234"), "{message}");
    }

    #[test]
    fn other_failures_are_fetch_failures_and_success_or_running_is_none() {
        let failed = pod("p", json!({"state": {"terminated": {"exitCode": 2, "message": "404 Not Found"}}}));
        assert_eq!(fetch_failure(&[failed]).map(|f| f.0), Some("FetchFailed"));
        let done = pod("p", json!({"state": {"terminated": {"exitCode": 0}}}));
        let running = pod("p", json!({"state": {"running": {}}}));
        assert_eq!(fetch_failure(&[done, running]), None);
        assert_eq!(fetch_failure(&[]), None);
    }

    #[test]
    fn a_long_log_is_cut_to_its_tail() {
        let log = format!("{}SHA-256 mismatch at the end", "x".repeat(5000));
        let failed = pod("p", json!({"state": {"terminated": {"exitCode": 1, "message": log}}}));
        let (_, message) = fetch_failure(&[failed]).expect("a failure");
        assert!(message.len() < 700 && message.ends_with("SHA-256 mismatch at the end"), "{}", message.len());
    }
}
