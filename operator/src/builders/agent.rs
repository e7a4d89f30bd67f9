//! An Agent's desired objects: the runtime's configuration (`agent.yaml`: the Agent plus the
//! endpoints it resolved to), the `hearth-server agent` Deployment, its Service, autoscaler
//! and a NetworkPolicy limiting its egress to what it uses.
//!
//! Memory: short-term and episodic memory live in the runtime's data directory, an emptyDir
//! per pod, so they are per replica and lost when the pod goes; only long-term memory in a
//! KnowledgeBase is shared and durable.

use std::collections::{BTreeMap, BTreeSet};

use hearth_crds::runtime::{AGENT_CONFIG_PATH, AgentRuntimeConfig, ChatEndpoint, KnowledgeBaseBinding, OPENAPI_DIR};
use hearth_crds::{Agent, KnowledgeBase};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, PodSpec, PodTemplateSpec,
    ResourceRequirements, SecretKeySelector, Service, Volume,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::autoscaling::desired_scaling;
use super::knowledge_base::resolved_knowledge_base_spec;
use super::metadata::{
    AGENT_LABEL, CASCADE_LABEL, HTTP_PORT, KNOWLEDGE_BASE_LABEL, MODEL_LABEL, Owner, client_label, service_endpoint,
};
use super::network_policy::{EgressTarget, desired_agent_network_policy};
use super::qdrant::{QDRANT_COMPONENT, QDRANT_GRPC_PORT};
use super::security::{container_security_context, pod_security_context};
use super::server::{
    PRE_STOP_SECONDS, desired_service, drain_lifecycle, http_port, http_probe, mount, pod_annotations, quantity,
    rolling_update, tmp_volume,
};
use super::{BuildContext, BuildError, BuildNote, sha256_hex, to_yaml};

const COMPONENT: &str = "agent";
/// The runtime's data directory: episodic memory and run records (per pod).
pub const AGENT_DATA_DIR: &str = "/var/lib/hearth";

/// What the controller found out about a Model, Cascade or Agent the agent uses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dependency {
    /// Its name.
    pub name: String,
    /// Its `status.endpoint`, once it has one.
    pub endpoint: Option<String>,
    /// Whether it exists.
    pub exists: bool,
    /// Whether it is Ready.
    pub ready: bool,
}

/// What the controller found out about a KnowledgeBase the agent uses.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedKnowledgeBase {
    /// Its name.
    pub name: String,
    /// The KnowledgeBase, when it exists.
    pub knowledge_base: Option<KnowledgeBase>,
    /// Its embedding Model (which embeds the agent's queries).
    pub embedding: Dependency,
    /// Whether the KnowledgeBase is Ready.
    pub ready: bool,
}

/// Everything an Agent depends on, as resolved by the controller.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedAgent {
    /// The Model or Cascade it reasons with.
    pub model: Dependency,
    /// The KnowledgeBases its retrieval tools and long-term memory name, in order of first use.
    pub knowledge_bases: Vec<ResolvedKnowledgeBase>,
    /// The Agents it delegates to, in the order its tools name them.
    pub agents: Vec<Dependency>,
}

/// Everything an Agent owns; `None` fields must not exist.
#[derive(Clone, Debug)]
pub struct AgentObjects {
    /// `<agent>-agent`: `agent.yaml`, the runtime's configuration.
    pub config_map: ConfigMap,
    /// `<agent>-agent`: the runtime.
    pub deployment: Deployment,
    /// `<agent>-agent`: the agent's OpenAI-compatible endpoint.
    pub service: Service,
    /// `<agent>-agent`, when `spec.autoscaling` is set.
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// `<agent>-agent`: ingress from the agent's clients and monitoring, egress only to what
    /// it uses (see [`super::network_policy`]).
    pub network_policy: NetworkPolicy,
    /// What was done differently from the spec (ScaleToZeroUnavailable).
    pub notes: Vec<BuildNote>,
}

/// The KnowledgeBases an Agent names (retrieval tools, then long-term memory), each once.
pub fn agent_knowledge_bases(agent: &Agent) -> Vec<String> {
    let spec = &agent.spec;
    let named = spec
        .tools
        .iter()
        .filter_map(|t| t.retrieval.as_ref().map(|r| r.knowledge_base.clone()))
        .chain(spec.memory.long_term.as_ref().map(|l| l.knowledge_base.clone()));
    let mut seen = BTreeSet::new();
    named.filter(|name| seen.insert(name.clone())).collect()
}

/// The Agents an Agent delegates to, each once.
pub fn delegated_agents(agent: &Agent) -> Vec<String> {
    let mut seen = BTreeSet::new();
    agent
        .spec
        .tools
        .iter()
        .filter_map(|t| t.agent.as_ref().map(|a| a.name.clone()))
        .filter(|name| seen.insert(name.clone()))
        .collect()
}

/// The runtime configuration of an Agent. A dependency without an endpoint yet gets its
/// predictable in-cluster URL, so the configuration (and the pods) do not change when it comes
/// up. A KnowledgeBase that does not exist is left out: its store is not known.
pub fn agent_config(
    agent: &Agent,
    resolved: &ResolvedAgent,
    ctx: &BuildContext,
) -> Result<AgentRuntimeConfig, BuildError> {
    let owner = Owner::agent(agent)?;
    Ok(agent_config_for(&owner, agent, resolved, ctx))
}

fn agent_config_for(owner: &Owner, agent: &Agent, resolved: &ResolvedAgent, ctx: &BuildContext) -> AgentRuntimeConfig {
    let endpoint = |dependency: &Dependency, service: String| {
        dependency.endpoint.clone().unwrap_or_else(|| service_endpoint(&service, &owner.namespace, &ctx.cluster_domain))
    };
    let model_service = match &agent.spec.model.cascade {
        Some(cascade) => format!("{cascade}-router"),
        None => resolved.model.name.clone(),
    };
    let knowledge_bases = resolved
        .knowledge_bases
        .iter()
        .filter_map(|kb| {
            let knowledge_base = kb.knowledge_base.as_ref()?;
            Some(KnowledgeBaseBinding {
                name: kb.name.clone(),
                spec: resolved_knowledge_base_spec(knowledge_base, ctx),
                embedding: ChatEndpoint {
                    name: kb.embedding.name.clone(),
                    endpoint: endpoint(&kb.embedding, kb.embedding.name.clone()),
                },
            })
        })
        .collect();
    let agents = resolved
        .agents
        .iter()
        .map(|a| ChatEndpoint { name: a.name.clone(), endpoint: endpoint(a, format!("{}-agent", a.name)) })
        .collect();
    AgentRuntimeConfig {
        name: owner.name.clone(),
        namespace: owner.namespace.clone(),
        spec: agent.spec.clone(),
        model: ChatEndpoint { name: resolved.model.name.clone(), endpoint: endpoint(&resolved.model, model_service) },
        knowledge_bases,
        agents,
        openapi_dir: Some(OPENAPI_DIR.to_owned()),
    }
}

/// The host and port of an `http(s)://host[:port]/…` URL (the scheme's port when none is given).
fn host_and_port(url: &str) -> Option<(String, i32)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let default = if scheme == "https" { 443 } else { 80 };
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_ascii_lowercase(), port.parse().ok()?)),
        None => Some((authority.to_ascii_lowercase(), default)),
    }
    .filter(|(host, _)| !host.is_empty())
}

/// Where the agent's pods may connect: its Model or Cascade, each KnowledgeBase's embedding
/// Model and Qdrant, the Agents it delegates to, and `guardrails.egress`.
fn egress_targets(agent: &Agent, resolved: &ResolvedAgent) -> Vec<EgressTarget> {
    let pods = |label: &str, name: &str, component: &str, port: i32| EgressTarget::Pods {
        labels: BTreeMap::from([
            (label.to_owned(), name.to_owned()),
            ("app.kubernetes.io/component".to_owned(), component.to_owned()),
        ]),
        port,
    };
    let mut targets = vec![match &agent.spec.model.cascade {
        Some(cascade) => pods(CASCADE_LABEL, cascade, "router", HTTP_PORT),
        None => pods(MODEL_LABEL, &resolved.model.name, "server", HTTP_PORT),
    }];
    // A KnowledgeBase that does not exist yet has no store to reach.
    for kb in &resolved.knowledge_bases {
        let Some(knowledge_base) = &kb.knowledge_base else { continue };
        targets.push(pods(MODEL_LABEL, &knowledge_base.spec.embedding.model, "server", HTTP_PORT));
        match &knowledge_base.spec.store.qdrant {
            Some(external) => {
                if let Some((host, port)) = host_and_port(&external.url) {
                    targets.push(EgressTarget::Host { host, ports: vec![port] });
                }
            }
            None => targets.push(pods(KNOWLEDGE_BASE_LABEL, &kb.name, QDRANT_COMPONENT, QDRANT_GRPC_PORT)),
        }
    }
    for delegate in &resolved.agents {
        targets.push(pods(AGENT_LABEL, &delegate.name, COMPONENT, HTTP_PORT));
    }
    // Ports the tools reach each host on, for entries that name no port.
    let mut tool_ports: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for tool in &agent.spec.tools {
        let url = tool.http.as_ref().map(|h| h.base_url.as_str()).or(tool.mcp.as_ref().map(|m| m.url.as_str()));
        if let Some((host, port)) = url.and_then(host_and_port) {
            tool_ports.entry(host).or_default().insert(port);
        }
    }
    for entry in &agent.spec.guardrails.egress {
        let (host, port) = match entry.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), port.parse::<i32>().ok()),
            None => (entry.clone(), None),
        };
        let ports = match port {
            Some(port) => vec![port],
            None => tool_ports.get(&host).map(|p| p.iter().copied().collect()).unwrap_or_default(),
        };
        targets.push(EgressTarget::Host { host, ports });
    }
    targets
}

/// The labels the agent's pods carry so that what they use admits them: the Model or
/// Cascade, each KnowledgeBase (its managed Qdrant) and its embedding Model, each delegate.
fn client_labels(agent: &Agent, resolved: &ResolvedAgent) -> BTreeMap<String, String> {
    let mut names = vec![agent.spec.model.cascade.clone().unwrap_or_else(|| resolved.model.name.clone())];
    for kb in resolved.knowledge_bases.iter().filter(|kb| kb.knowledge_base.is_some()) {
        names.push(kb.name.clone());
        names.push(kb.embedding.name.clone());
    }
    names.extend(resolved.agents.iter().map(|a| a.name.clone()));
    names.into_iter().filter(|n| !n.is_empty()).map(|n| (client_label(&n), "true".to_owned())).collect()
}

/// The objects an Agent should own, given what the controller resolved about what it uses.
/// Fails only when the Agent's metadata cannot name its objects.
pub fn desired_agent_objects(
    agent: &Agent,
    resolved: &ResolvedAgent,
    ctx: &BuildContext,
) -> Result<AgentObjects, BuildError> {
    let owner = Owner::agent(agent)?;
    let spec = &agent.spec;
    let name = format!("{}-agent", owner.name);
    let (config_dir, config_file) = AGENT_CONFIG_PATH.rsplit_once('/').unwrap_or(("/etc/hearth/agent", "agent.yaml"));

    let config_text = to_yaml("the agent configuration", &agent_config_for(&owner, agent, resolved, ctx))?;
    let config_hash = sha256_hex(&config_text);
    let config_map = ConfigMap {
        metadata: owner.meta(name.clone(), COMPONENT),
        data: Some(BTreeMap::from([(config_file.to_owned(), config_text)])),
        ..ConfigMap::default()
    };
    let scaling = desired_scaling(
        &owner,
        &name,
        COMPONENT,
        spec.replicas,
        spec.autoscaling.as_ref(),
        Some("an Agent's runtime does not scale to zero (requests must reach it, and its memory is per pod)"),
        ctx,
    );

    let (tmp, tmp_mount) = tmp_volume();
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource { name: name.clone(), ..ConfigMapVolumeSource::default() }),
            ..Volume::default()
        },
        Volume {
            name: "data".into(),
            empty_dir: Some(EmptyDirVolumeSource { size_limit: Some(quantity("1Gi")), medium: None }),
            ..Volume::default()
        },
        tmp,
    ];
    let mut mounts = vec![mount("config", config_dir, true), mount("data", AGENT_DATA_DIR, false), tmp_mount];
    let openapi: BTreeSet<&str> =
        spec.tools.iter().filter_map(|t| t.http.as_ref().map(|h| h.openapi.config_map_ref.name.as_str())).collect();
    for (i, config_map_name) in openapi.into_iter().enumerate() {
        let volume = format!("openapi-{}", i + 1);
        volumes.push(Volume {
            name: volume.clone(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name.to_owned(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(mount(&volume, &format!("{OPENAPI_DIR}/{config_map_name}"), true));
    }
    // One key for every KnowledgeBase: the runtime reads QDRANT_API_KEY, as ingestion does.
    let api_key = resolved
        .knowledge_bases
        .iter()
        .filter_map(|kb| kb.knowledge_base.as_ref()?.spec.store.qdrant.as_ref()?.api_key_secret_ref.clone())
        .next();
    let env = api_key.map(|secret| {
        vec![EnvVar {
            name: "QDRANT_API_KEY".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector { name: secret.name, key: secret.key, optional: Some(false) }),
                ..EnvVarSource::default()
            }),
        }]
    });
    let args = [
        "agent",
        "--config",
        AGENT_CONFIG_PATH,
        "--data-dir",
        AGENT_DATA_DIR,
        "--host",
        "0.0.0.0",
        "--port",
        &HTTP_PORT.to_string(),
        // A run in flight may finish after SIGTERM.
        "--drain-seconds",
        &spec.guardrails.max_run_seconds.to_string(),
    ];
    let container = Container {
        name: COMPONENT.into(),
        image: Some(ctx.server_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["hearth-server".into()]),
        args: Some(args.iter().map(|a| (*a).to_owned()).collect()),
        env,
        ports: Some(vec![http_port()]),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        lifecycle: Some(drain_lifecycle()),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), quantity("100m")),
                ("memory".to_owned(), quantity("128Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".to_owned(), quantity("512Mi"))])),
            claims: None,
        }),
        security_context: Some(container_security_context()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let mut pod_labels = owner.labels(COMPONENT);
    pod_labels.extend(client_labels(agent, resolved));
    let deployment = Deployment {
        metadata: owner.meta(name.clone(), COMPONENT),
        spec: Some(DeploymentSpec {
            replicas: scaling.replicas,
            selector: owner.pod_selector(COMPONENT),
            strategy: Some(rolling_update()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations(config_hash)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    security_context: Some(pod_security_context()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(
                        PRE_STOP_SECONDS + i64::from(spec.guardrails.max_run_seconds) + 15,
                    ),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    };
    let network_policy =
        desired_agent_network_policy(&owner, name.clone(), COMPONENT, &egress_targets(agent, resolved), ctx);
    Ok(AgentObjects {
        config_map,
        deployment,
        service: desired_service(&owner, name, COMPONENT),
        hpa: scaling.hpa,
        network_policy,
        notes: scaling.note.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_their_host_and_port() {
        assert_eq!(host_and_port("http://orders.shop.svc:8080/api"), Some(("orders.shop.svc".into(), 8080)));
        assert_eq!(host_and_port("https://api.example.com/v1?x=1"), Some(("api.example.com".into(), 443)));
        assert_eq!(host_and_port("http://tools.shop.svc/mcp"), Some(("tools.shop.svc".into(), 80)));
        assert_eq!(host_and_port("http://qdrant.db:6334"), Some(("qdrant.db".into(), 6334)));
        assert_eq!(host_and_port("nonsense"), None);
    }
}
