//! The Agent controller: resolves the Model or Cascade the agent reasons with, its
//! KnowledgeBases (retrieval tools and long-term memory) and the Agents it delegates to, runs
//! `hearth-server agent` with their endpoints, and is Ready only when all of them are.

use std::sync::Arc;
use std::time::Duration;

use hearth_crds::agent::{Agent, AgentStatus};
use hearth_crds::conditions::{Condition, READY, RECONCILING, STALLED, is_true};
use hearth_crds::{Cascade, KnowledgeBase, Model};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};

use super::{Context, Error, apply, apply_or_delete, condition, publish};
use super::{Scope, drain, error_policy};
use crate::builders::{
    AgentObjects, Dependency, ResolvedAgent, ResolvedKnowledgeBase, agent_endpoint, agent_knowledge_bases,
    delegated_agents, desired_agent_objects,
};

/// The controller's name in metrics and logs.
pub const NAME: &str = "agent";

/// Reads a dependency's endpoint and readiness (`status.endpoint`, the Ready condition).
async fn dependency<K>(
    api: &Api<K>,
    name: &str,
    read: impl Fn(&K) -> (Option<String>, &[Condition]),
) -> Result<(Dependency, Option<K>), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let found = api.get_opt(name).await?;
    let dependency = match &found {
        Some(object) => {
            let (endpoint, conditions) = read(object);
            Dependency { name: name.to_owned(), endpoint, exists: true, ready: is_true(conditions, READY) }
        }
        None => Dependency { name: name.to_owned(), ..Dependency::default() },
    };
    Ok((dependency, found))
}

fn model_view(model: &Model) -> (Option<String>, &[Condition]) {
    match &model.status {
        Some(s) => (s.endpoint.clone(), &s.conditions),
        None => (None, &[]),
    }
}

/// Resolves everything the Agent uses.
async fn resolve(agent: &Agent, ctx: &Context, ns: &str) -> Result<ResolvedAgent, Error> {
    let client = &ctx.client;
    let models: Api<Model> = Api::namespaced(client.clone(), ns);
    let model = match (&agent.spec.model.model, &agent.spec.model.cascade) {
        (_, Some(cascade)) => {
            let cascades: Api<Cascade> = Api::namespaced(client.clone(), ns);
            dependency(&cascades, cascade, |c: &Cascade| match &c.status {
                Some(s) => (s.endpoint.clone(), &s.conditions),
                None => (None, &[]),
            })
            .await?
            .0
        }
        (Some(model), None) => dependency(&models, model, model_view).await?.0,
        (None, None) => Dependency::default(),
    };
    let knowledge_base_api: Api<KnowledgeBase> = Api::namespaced(client.clone(), ns);
    let mut knowledge_bases = Vec::new();
    for name in agent_knowledge_bases(agent) {
        let (kb, found) = dependency(&knowledge_base_api, &name, |k: &KnowledgeBase| match &k.status {
            Some(s) => (None, &s.conditions),
            None => (None, &[]),
        })
        .await?;
        let embedding = match &found {
            Some(found) => dependency(&models, &found.spec.embedding.model, model_view).await?.0,
            None => Dependency::default(),
        };
        knowledge_bases.push(ResolvedKnowledgeBase { name, knowledge_base: found, embedding, ready: kb.ready });
    }
    let agents_api: Api<Agent> = Api::namespaced(client.clone(), ns);
    let mut agents = Vec::new();
    for name in delegated_agents(agent) {
        let (delegate, _) = dependency(&agents_api, &name, |a: &Agent| match &a.status {
            Some(s) => (s.endpoint.clone(), &s.conditions),
            None => (None, &[]),
        })
        .await?;
        agents.push(delegate);
    }
    Ok(ResolvedAgent { model, knowledge_bases, agents })
}

/// What keeps the Agent from being Ready, one phrase each: `Model gemma not Ready`,
/// `KnowledgeBase handbook does not exist`.
pub fn missing_dependencies(agent: &Agent, resolved: &ResolvedAgent) -> Vec<String> {
    let phrase = |kind: &str, d: &Dependency| match (d.exists, d.ready) {
        (false, _) => Some(format!("{kind} {} does not exist", d.name)),
        (true, false) => Some(format!("{kind} {} not Ready", d.name)),
        (true, true) => None,
    };
    let model_kind = if agent.spec.model.cascade.is_some() { "Cascade" } else { "Model" };
    let mut missing: Vec<String> = phrase(model_kind, &resolved.model).into_iter().collect();
    for kb in &resolved.knowledge_bases {
        let found =
            Dependency { name: kb.name.clone(), endpoint: None, exists: kb.knowledge_base.is_some(), ready: kb.ready };
        missing.extend(phrase("KnowledgeBase", &found));
    }
    missing.extend(resolved.agents.iter().filter_map(|a| phrase("Agent", a)));
    missing
}

/// The status an Agent should have.
pub fn desired_status(
    agent: &Agent,
    resolved: &ResolvedAgent,
    objects: &AgentObjects,
    deployment: &Deployment,
    ctx: &Context,
) -> AgentStatus {
    let generation = agent.meta().generation;
    let mut status = agent.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    status.endpoint = Some(agent_endpoint(agent, &ctx.build));
    status.tool_count = u32::try_from(agent.spec.tools.len()).unwrap_or(u32::MAX);
    let conditions = &mut status.conditions;
    condition(conditions, STALLED, false, "Progressing", "", generation);
    match objects.notes.first() {
        Some(note) => condition(conditions, "Scaled", false, note.reason.as_str(), note.message.clone(), generation),
        None => condition(conditions, "Scaled", true, "AsSpecified", "replicas follow the spec", generation),
    }
    let missing = missing_dependencies(agent, resolved);
    let runtime_ready = deployment.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0) >= 1;
    if !missing.is_empty() {
        let message = missing.join("; ");
        condition(conditions, READY, false, "DependenciesNotReady", message.clone(), generation);
        condition(conditions, RECONCILING, true, "DependenciesNotReady", message, generation);
    } else if !runtime_ready {
        let message = "waiting for an agent runtime replica";
        condition(conditions, READY, false, "RuntimeNotReady", message, generation);
        condition(conditions, RECONCILING, true, "RuntimeNotReady", message, generation);
    } else {
        let message = format!("serving with {} tools", status.tool_count);
        condition(conditions, READY, true, "Available", message, generation);
        condition(conditions, RECONCILING, false, "Available", "", generation);
    }
    status
}

/// Runs the Agent controller until shutdown: an Agent reconciles when it, an object it owns, or
/// a Model, Cascade, KnowledgeBase or Agent it uses changes.
pub(crate) async fn run(ctx: Arc<Context>, scope: &Scope) {
    let owned = Scope::owned();
    let controller = Controller::new(scope.api::<Agent>(), watcher::Config::default());
    let agents = controller.store();
    // The Agents that use a Model, Cascade, KnowledgeBase or Agent of this name and namespace.
    let users = move |kind: &'static str| {
        let agents = agents.clone();
        move |ns: Option<String>, name: String| {
            agents
                .state()
                .into_iter()
                .filter(|a| a.namespace() == ns && agent_uses(a, kind, &name))
                .map(|a| ObjectRef::from_obj(a.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let (by_model, by_cascade, by_kb, by_agent) =
        (users("Model"), users("Cascade"), users("KnowledgeBase"), users("Agent"));
    let controller = controller
        .owns(scope.api::<Deployment>(), owned.clone())
        .owns(scope.api::<ConfigMap>(), owned)
        .watches(scope.api::<Model>(), watcher::Config::default(), move |m: Model| {
            by_model(m.namespace(), m.name_any())
        })
        .watches(scope.api::<Cascade>(), watcher::Config::default(), move |c: Cascade| {
            by_cascade(c.namespace(), c.name_any())
        })
        .watches(scope.api::<KnowledgeBase>(), watcher::Config::default(), move |k: KnowledgeBase| {
            by_kb(k.namespace(), k.name_any())
        })
        .watches(scope.api::<Agent>(), watcher::Config::default(), move |a: Agent| {
            by_agent(a.namespace(), a.name_any())
        })
        .graceful_shutdown_on(scope.stopped())
        .run(reconcile, |a, e, ctx| error_policy(a.as_ref(), e, &ctx, NAME), ctx);
    drain(NAME, controller).await;
}

/// Whether `agent` uses the `kind` (Model, Cascade, KnowledgeBase or Agent) named `name`.
/// A KnowledgeBase's embedding Model counts only through the KnowledgeBase, which turns Ready
/// after its Model does.
fn agent_uses(agent: &Agent, kind: &str, name: &str) -> bool {
    let spec = &agent.spec;
    match kind {
        "Model" => spec.model.model.as_deref() == Some(name),
        "Cascade" => spec.model.cascade.as_deref() == Some(name),
        "KnowledgeBase" => crate::builders::agent_knowledge_bases(agent).iter().any(|kb| kb == name),
        "Agent" => crate::builders::delegated_agents(agent).iter().any(|a| a == name),
        _ => false,
    }
}

/// Reconciles one Agent.
pub async fn reconcile(agent: Arc<Agent>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started(NAME);
    let ns = agent.namespace().ok_or_else(|| Error::NoNamespace(agent.name_any()))?;
    let resolved = resolve(&agent, &ctx, &ns).await?;
    let objects = desired_agent_objects(&agent, &resolved, &ctx.build)?;
    let client = &ctx.client;
    apply(&Api::<ConfigMap>::namespaced(client.clone(), &ns), &objects.config_map).await?;
    apply(&Api::<Service>::namespaced(client.clone(), &ns), &objects.service).await?;
    apply(&Api::<NetworkPolicy>::namespaced(client.clone(), &ns), &objects.network_policy).await?;
    let hpas = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &ns);
    apply_or_delete(&hpas, &objects.deployment.name_any(), objects.hpa.as_ref()).await?;
    let deployment = apply(&Api::<Deployment>::namespaced(client.clone(), &ns), &objects.deployment).await?;

    let status = desired_status(&agent, &resolved, &objects, &deployment, &ctx);
    let previous = agent.status.clone().unwrap_or_default();
    if status != previous {
        let api: Api<Agent> = Api::namespaced(client.clone(), &ns);
        api.patch_status(&agent.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
            .await?;
        if is_true(&status.conditions, READY) != is_true(&previous.conditions, READY)
            && let Some(ready) = status.conditions.iter().find(|c| c.type_ == READY)
        {
            publish(&ctx, agent.as_ref(), false, &ready.reason, ready.message.clone()).await;
        }
    }
    let ready = is_true(&status.conditions, READY);
    Ok(Action::requeue(if ready { Duration::from_secs(300) } else { Duration::from_secs(30) }))
}
