//! The Cascade controller: resolves each stage's Model, runs the router with their
//! endpoints, and is Ready only when every stage is.

use std::sync::Arc;
use std::time::Duration;

use hearth_crds::cascade::{Cascade, CascadeStatus, StageStatus};
use hearth_crds::conditions::{ESCALATION_BUDGET_EXCEEDED, READY, RECONCILING, STALLED, is_true};
use hearth_crds::model::Model;
use hearth_crds::router::RouterReport;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};

use super::{Context, Error, apply, apply_or_delete, condition, publish};
use super::{Scope, drain, error_policy};
use crate::builders::{ResolvedStage, cascade_endpoint, desired_cascade_objects};

/// The controller's name in metrics and logs.
pub const NAME: &str = "cascade";

/// Runs the Cascade controller until shutdown: a Cascade reconciles when it, an object it owns,
/// or the readiness or endpoint of a Model it uses changes.
pub(crate) async fn run(ctx: Arc<Context>, scope: &Scope) {
    let owned = Scope::owned();
    let controller = Controller::new(scope.api::<Cascade>(), watcher::Config::default());
    let cascades = controller.store();
    let controller = controller
        .owns(scope.api::<Deployment>(), owned.clone())
        .owns(scope.api::<ConfigMap>(), owned)
        .watches(scope.api::<Model>(), watcher::Config::default(), move |model: Model| {
            let ns = model.namespace();
            let name = model.name_any();
            cascades
                .state()
                .into_iter()
                .filter(|c| c.namespace() == ns && c.spec.stages.iter().any(|s| s.model == name))
                .map(|c| ObjectRef::from_obj(c.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(scope.stopped())
        .run(reconcile, |c, e, ctx| error_policy(c.as_ref(), e, &ctx, NAME), ctx);
    drain(NAME, controller).await;
}

/// Reconciles one Cascade.
pub async fn reconcile(cascade: Arc<Cascade>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started(NAME);
    let ns = cascade.namespace().ok_or_else(|| Error::NoNamespace(cascade.name_any()))?;
    let models: Api<Model> = Api::namespaced(ctx.client.clone(), &ns);
    let mut resolved = Vec::with_capacity(cascade.spec.stages.len());
    for stage in &cascade.spec.stages {
        let model = models.get_opt(&stage.model).await?;
        resolved.push(ResolvedStage {
            model: stage.model.clone(),
            endpoint: model.as_ref().and_then(|m| m.status.as_ref()).and_then(|s| s.endpoint.clone()),
            ready: model.as_ref().and_then(|m| m.status.as_ref()).is_some_and(|s| is_true(&s.conditions, READY)),
            cost: model.as_ref().and_then(|m| m.spec.cost.clone()),
        });
    }
    let objects = desired_cascade_objects(&cascade, &resolved, &ctx.build)?;
    let client = &ctx.client;
    apply(&Api::<ConfigMap>::namespaced(client.clone(), &ns), &objects.config_map).await?;
    apply(&Api::<Service>::namespaced(client.clone(), &ns), &objects.service).await?;
    apply(&Api::<NetworkPolicy>::namespaced(client.clone(), &ns), &objects.network_policy).await?;
    let hpas = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &ns);
    apply_or_delete(&hpas, &objects.deployment.name_any(), objects.hpa.as_ref()).await?;
    let deployment = apply(&Api::<Deployment>::namespaced(client.clone(), &ns), &objects.deployment).await?;

    let router_ready = deployment.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0) >= 1;
    let report = if router_ready {
        let url = router_report_url(&cascade_endpoint(&cascade, &ctx.build));
        (ctx.router_probe)(url).await.and_then(|reports| reports.into_iter().find(|r| r.name == cascade.name_any()))
    } else {
        None
    };
    let status = desired_status(&cascade, &resolved, &deployment, report.as_ref(), &ctx);
    let previous = cascade.status.clone().unwrap_or_default();
    if status != previous {
        let api: Api<Cascade> = Api::namespaced(client.clone(), &ns);
        api.patch_status(&cascade.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
            .await?;
        if is_true(&status.conditions, READY) != is_true(&previous.conditions, READY)
            && let Some(ready) = status.conditions.iter().find(|c| c.type_ == READY)
        {
            publish(&ctx, cascade.as_ref(), false, &ready.reason, ready.message.clone()).await;
        }
    }
    let waiting = resolved.iter().any(|s| !s.ready);
    // A serving router is read again every minute, so the escalation ratio stays fresh.
    Ok(Action::requeue(if waiting {
        Duration::from_secs(30)
    } else if router_ready {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(300)
    }))
}

/// Where a router serves its escalation reports, from its OpenAI base URL.
pub fn router_report_url(endpoint: &str) -> String {
    format!("{}/cascades", endpoint.trim_end_matches('/').trim_end_matches("/v1"))
}

/// The status a Cascade should have.
pub fn desired_status(
    cascade: &Cascade,
    resolved: &[ResolvedStage],
    deployment: &Deployment,
    report: Option<&RouterReport>,
    ctx: &Context,
) -> CascadeStatus {
    let generation = cascade.meta().generation;
    let mut status = cascade.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    status.endpoint = Some(cascade_endpoint(cascade, &ctx.build));
    status.stages = resolved
        .iter()
        .map(|s| StageStatus { model: s.model.clone(), endpoint: s.endpoint.clone(), ready: s.ready })
        .collect();
    let conditions = &mut status.conditions;
    condition(conditions, STALLED, false, "Progressing", "", generation);
    let router_ready = deployment.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0) >= 1;
    match resolved.iter().find(|s| !s.ready) {
        Some(stage) => {
            let message = if stage.endpoint.is_none() {
                format!("waiting for Model \"{}\": it does not exist or has no endpoint yet", stage.model)
            } else {
                format!("waiting for Model \"{}\" to become Ready", stage.model)
            };
            condition(conditions, READY, false, "ModelNotReady", message.clone(), generation);
            condition(conditions, RECONCILING, true, "ModelNotReady", message, generation);
        }
        None if !router_ready => {
            condition(conditions, READY, false, "RouterNotReady", "waiting for a router replica", generation);
            condition(conditions, RECONCILING, true, "RouterNotReady", "waiting for a router replica", generation);
        }
        None => {
            let stages = resolved.iter().map(|s| s.model.as_str()).collect::<Vec<_>>().join(" → ");
            condition(conditions, READY, true, "Available", format!("routing {stages}"), generation);
            condition(conditions, RECONCILING, false, "Available", "", generation);
        }
    }
    if let Some(report) = report {
        status.observed_escalation_ratio = Some((report.escalation_ratio * 1e4).round() / 1e4);
        let budget = cascade.spec.max_escalation_ratio;
        let message = format!(
            "{:.1}% of the last {} requests escalated past the first stage{}",
            report.escalation_ratio * 100.0,
            report.window_requests,
            budget.map(|b| format!("; the budget is {:.1}%", b * 100.0)).unwrap_or_default()
        );
        let reason = if report.budget_exceeded { "OverBudget" } else { "WithinBudget" };
        condition(
            &mut status.conditions,
            ESCALATION_BUDGET_EXCEEDED,
            report.budget_exceeded,
            reason,
            message,
            generation,
        );
    }
    status
}
