//! A Cascade's desired objects: the router's configuration (the Cascade plus each stage's
//! resolved endpoint), the router Deployment, its Service, autoscaler and network policy.

use std::collections::BTreeMap;

use hearth_crds::model::TokenCost;
use hearth_crds::router::{RouterConfig, RouterStage};
use hearth_crds::{API_VERSION, Cascade};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, PodTemplateSpec, ResourceRequirements, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;

use super::autoscaling::desired_scaling;
use super::metadata::{HTTP_PORT, Owner, client_label, service_endpoint};
use super::network_policy::desired_network_policy;
use super::security::{container_security_context, pod_security_context};
use super::server::{
    CONFIG_DIR, PRE_STOP_SECONDS, config_volume, desired_service, drain_lifecycle, http_port, http_probe, mount,
    pod_annotations, quantity, rolling_update, tmp_volume,
};
use super::{BuildContext, BuildError, BuildNote, sha256_hex, to_yaml};

const COMPONENT: &str = "router";
/// The router's configuration file, in the ConfigMap and under `/etc/hearth`.
const ROUTER_FILE: &str = "router.yaml";
/// The Cascade document as applied, for reference and for `hearth-server up`-style readers.
const CASCADE_FILE: &str = "cascade.yaml";

/// What the controller found out about one stage's Model.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedStage {
    /// The Model's name.
    pub model: String,
    /// The Model's `status.endpoint`, once it has one.
    pub endpoint: Option<String>,
    /// Whether the Model is Ready. Reported in the Cascade's status, never written to the
    /// router's configuration: a stage going unready must not restart the router.
    pub ready: bool,
    /// The Model's `spec.cost`.
    pub cost: Option<TokenCost>,
}

/// Everything a Cascade owns; `None` fields must not exist.
#[derive(Clone, Debug)]
pub struct CascadeObjects {
    /// `<cascade>-router`: `router.yaml` (what the router reads) and `cascade.yaml`.
    pub config_map: ConfigMap,
    /// `<cascade>-router`: the router.
    pub deployment: Deployment,
    /// `<cascade>-router`: the cascade's OpenAI-compatible endpoint (see [`super::cascade_endpoint`]).
    pub service: Service,
    /// `<cascade>-router`, when `spec.autoscaling` is set.
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// `<cascade>-router`: ingress only from the cascade's clients and monitoring.
    pub network_policy: NetworkPolicy,
    /// What was done differently from the spec (ScaleToZeroUnavailable).
    pub notes: Vec<BuildNote>,
}

/// The router configuration for a Cascade. A stage whose Model has no endpoint yet (or is
/// missing from `resolved`) gets the Model's predictable in-cluster URL, so the configuration
/// does not change, and the router does not restart, when the Model comes up.
pub fn router_config(
    cascade: &Cascade,
    resolved: &[ResolvedStage],
    ctx: &BuildContext,
) -> Result<RouterConfig, BuildError> {
    let owner = Owner::cascade(cascade)?;
    Ok(router_config_for(&owner, cascade, resolved, ctx))
}

fn router_config_for(owner: &Owner, cascade: &Cascade, resolved: &[ResolvedStage], ctx: &BuildContext) -> RouterConfig {
    let spec = &cascade.spec;
    let stages = spec
        .stages
        .iter()
        .map(|stage| {
            let found = resolved.iter().find(|r| r.model == stage.model);
            let endpoint = found
                .and_then(|r| r.endpoint.clone())
                .unwrap_or_else(|| service_endpoint(&stage.model, &owner.namespace, &ctx.cluster_domain));
            RouterStage {
                model: stage.model.clone(),
                endpoint,
                min_confidence: stage.min_confidence,
                timeout_seconds: stage.timeout_seconds,
                cost: found.and_then(|r| r.cost.clone()),
            }
        })
        .collect();
    RouterConfig {
        name: owner.name.clone(),
        namespace: owner.namespace.clone(),
        confidence: spec.confidence,
        max_escalation_ratio: spec.max_escalation_ratio,
        escalation_window: spec.escalation_window,
        stages,
    }
}

/// The objects a Cascade should own, given what the controller resolved about its stages.
/// Fails only when the Cascade's metadata cannot name its objects.
pub fn desired_cascade_objects(
    cascade: &Cascade,
    resolved: &[ResolvedStage],
    ctx: &BuildContext,
) -> Result<CascadeObjects, BuildError> {
    let owner = Owner::cascade(cascade)?;
    let spec = &cascade.spec;
    let router = format!("{}-router", owner.name);

    let router_text = to_yaml("the router configuration", &router_config_for(&owner, cascade, resolved, ctx))?;
    let spec_value = serde_json::to_value(spec)
        .map_err(|e| BuildError::Serialize { what: "the Cascade spec", message: e.to_string() })?;
    let cascade_text = to_yaml(
        "the Cascade document",
        &json!({
            "apiVersion": API_VERSION,
            "kind": "Cascade",
            "metadata": {"name": owner.name, "namespace": owner.namespace},
            "spec": spec_value,
        }),
    )?;
    // Only what the router reads rolls it; replicas and autoscaling are not in router.yaml.
    let config_hash = sha256_hex(&router_text);
    let config_map = ConfigMap {
        metadata: owner.meta(router.clone(), COMPONENT),
        data: Some(BTreeMap::from([(ROUTER_FILE.to_owned(), router_text), (CASCADE_FILE.to_owned(), cascade_text)])),
        ..ConfigMap::default()
    };

    let scaling = desired_scaling(
        &owner,
        &router,
        COMPONENT,
        spec.replicas,
        spec.autoscaling.as_ref(),
        Some("a Cascade's router does not scale to zero (requests must reach it to wake its Models)"),
        ctx,
    );

    let (tmp, tmp_mount) = tmp_volume();
    let args = [
        "cascade",
        "--config",
        &format!("{CONFIG_DIR}/{ROUTER_FILE}"),
        "--host",
        "0.0.0.0",
        "--port",
        &HTTP_PORT.to_string(),
    ];
    let container = Container {
        name: COMPONENT.into(),
        image: Some(ctx.server_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["hearth-server".into()]),
        args: Some(args.iter().map(|a| (*a).to_owned()).collect()),
        ports: Some(vec![http_port()]),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        lifecycle: Some(drain_lifecycle()),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), quantity("100m")),
                ("memory".to_owned(), quantity("128Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".to_owned(), quantity("256Mi"))])),
            claims: None,
        }),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![mount("config", CONFIG_DIR, true), tmp_mount]),
        ..Container::default()
    };
    // A request may pass through every stage before it is answered.
    let longest_request: i64 = spec.stages.iter().map(|s| i64::from(s.timeout_seconds)).sum();
    let mut pod_labels = owner.labels(COMPONENT);
    for stage in &spec.stages {
        pod_labels.insert(client_label(&stage.model), "true".to_owned());
    }
    let deployment = Deployment {
        metadata: owner.meta(router.clone(), COMPONENT),
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
                    volumes: Some(vec![config_volume(&router), tmp]),
                    security_context: Some(pod_security_context()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(PRE_STOP_SECONDS + longest_request + 15),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    };

    Ok(CascadeObjects {
        config_map,
        deployment,
        service: desired_service(&owner, router.clone(), COMPONENT),
        hpa: scaling.hpa,
        network_policy: desired_network_policy(&owner, router, COMPONENT, ctx),
        notes: scaling.note.into_iter().collect(),
    })
}
