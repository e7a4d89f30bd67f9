//! A Model's desired objects: its spec as a ConfigMap, the weights cache, the inference
//! server Deployment, its Service, autoscaler, disruption budget and network policy.

use std::collections::BTreeMap;

use hearth_crds::model::{Accelerator, ModelSpec};
use hearth_crds::{API_VERSION, Model};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, PodSpec,
    PodTemplateSpec, ProjectedVolumeSource, ResourceRequirements, SecretProjection, Service, Toleration, Volume,
    VolumeProjection,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::DynamicObject;
use serde_json::json;

use super::autoscaling::{desired_pdb, desired_scaling};
use super::cache::{
    CACHE_DIR, PVC_SOURCE_DIR, UNKNOWN_WEIGHTS_CACHE_GIB, cache_gib, desired_cache_claim, served_path, source_claim,
};
use super::metadata::{HTTP_PORT, Owner};
use super::network_policy::desired_network_policy;
use super::security::{container_security_context, pod_security_context};
use super::server::{
    CONFIG_DIR, PRE_STOP_SECONDS, config_volume, desired_service, drain_lifecycle, http_port, http_probe, mount,
    pod_annotations, quantity, rolling_update, tmp_volume,
};
use super::{BuildContext, BuildError, BuildNote, NoteReason, sha256_hex, to_yaml};
use crate::sizing::{self, Footprint, SizingError};

const COMPONENT: &str = "server";
/// Where the tenants' Secret keys are mounted: `SECRETS_DIR/<Secret>/<key>`.
const SECRETS_DIR: &str = "/etc/hearth/secrets";
const CONFIG_FILE: &str = "model.yaml";
const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Startup budget before any weights are read (runtime start, tokenizer, warm-up).
const STARTUP_BASE_SECONDS: u64 = 600;
/// Extra startup budget per GiB of weights (reading and mapping them from the cache).
const STARTUP_SECONDS_PER_GIB: u64 = 60;
const STARTUP_PERIOD_SECONDS: i32 = 10;

/// Everything a Model owns. `None` fields are objects that must not exist: the controller
/// deletes them if they do (e.g. the HPA after switching to KEDA).
#[derive(Clone, Debug)]
pub struct ModelObjects {
    /// `<model>-spec`: the Model document the server reads as `/etc/hearth/model.yaml`.
    pub config_map: ConfigMap,
    /// `<model>-cache`: the weights cache.
    pub pvc: PersistentVolumeClaim,
    /// `<model>-server`; `None` when [`ModelObjects::blocked`] says why the model cannot run.
    pub deployment: Option<Deployment>,
    /// `<model>`: the OpenAI-compatible endpoint.
    pub service: Service,
    /// `<model>-server`, when `spec.autoscaling` is set and KEDA does not scale the model.
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// `<model>-server` (`keda.sh/v1alpha1` ScaledObject), for scale to zero with KEDA.
    pub scaled_object: Option<DynamicObject>,
    /// `<model>-server`, when more than one replica is expected.
    pub pdb: Option<PodDisruptionBudget>,
    /// `<model>-server`: ingress only from declared clients and monitoring.
    pub network_policy: NetworkPolicy,
    /// The sizing the Deployment was built from, when the model was sized and fits.
    pub footprint: Option<Footprint>,
    /// Why there is no Deployment (FitsNowhere, UnknownProfile, SizingUnknown): report it as
    /// Stalled, and Ready=False.
    pub blocked: Option<BuildNote>,
    /// What was done differently from the spec (ScaleToZeroUnavailable).
    pub notes: Vec<BuildNote>,
}

/// The objects a Model should own. `reported_weights_bytes` is the weights size the fetch
/// step measured, when known; otherwise sizing uses `spec.sizing`. Fails only when the Model's
/// metadata cannot name its objects; everything the spec gets wrong comes back as
/// [`ModelObjects::blocked`].
pub fn desired_model_objects(
    model: &Model,
    ctx: &BuildContext,
    reported_weights_bytes: Option<u64>,
) -> Result<ModelObjects, BuildError> {
    let owner = Owner::model(model)?;
    let spec = &model.spec;
    let (config_map, config_hash) = desired_config_map(&owner, spec)?;

    let weights_bytes = sizing::weights_bytes(spec, reported_weights_bytes);
    let (footprint, blocked) = match sizing::plan(spec, reported_weights_bytes, &ctx.profiles) {
        Ok(footprint) => (Some(footprint), None),
        Err(error @ SizingError::FitsNowhere { .. }) => (
            None,
            Some(BuildNote::new(
                NoteReason::FitsNowhere,
                format!(
                    "the model fits no hardware profile: {error}; lower spec.contextLength or spec.serving.maxBatchSize, quantize further, or choose larger hardware"
                ),
            )),
        ),
        Err(error @ SizingError::UnknownProfile { .. }) => {
            (None, Some(BuildNote::new(NoteReason::UnknownProfile, error.to_string())))
        }
        // The user sized the pod: serve it, and let the fetch step report the weights later.
        Err(SizingError::UnknownWeights) if sets_memory(spec.resources.as_ref()) => (None, None),
        Err(error @ SizingError::UnknownWeights) => (
            None,
            Some(BuildNote::new(NoteReason::SizingUnknown, format!("{error}; or set spec.resources.requests.memory"))),
        ),
    };

    let cache_size = weights_bytes.map_or(UNKNOWN_WEIGHTS_CACHE_GIB, cache_gib);
    let pvc = desired_cache_claim(&owner, cache_size, ctx);
    let server = format!("{}-server", owner.name);
    let service = desired_service(&owner, owner.name.clone(), COMPONENT);
    let network_policy = desired_network_policy(&owner, server.clone(), COMPONENT, ctx);

    let mut objects = ModelObjects {
        config_map,
        pvc,
        deployment: None,
        service,
        hpa: None,
        scaled_object: None,
        pdb: None,
        network_policy,
        footprint,
        blocked,
        notes: Vec::new(),
    };
    if objects.blocked.is_some() {
        return Ok(objects);
    }

    let scaling = desired_scaling(&owner, &server, COMPONENT, spec.replicas, spec.autoscaling.as_ref(), None, ctx);
    let memory_bytes = objects.footprint.as_ref().map(|f| f.memory_bytes);
    let deployment = desired_deployment(&owner, spec, ctx, memory_bytes, weights_bytes, scaling.replicas, config_hash);
    objects.deployment = Some(deployment);
    objects.pdb = desired_pdb(&owner, &server, COMPONENT, scaling.min_replicas);
    objects.hpa = scaling.hpa;
    objects.scaled_object = scaling.scaled_object;
    objects.notes.extend(scaling.note);
    Ok(objects)
}

fn sets_memory(resources: Option<&ResourceRequirements>) -> bool {
    resources
        .is_some_and(|r| [&r.requests, &r.limits].into_iter().flatten().any(|values| values.contains_key("memory")))
}

/// The `<model>-spec` ConfigMap and the hash that rolls the pods when it changes. The hash
/// leaves out `replicas` and `autoscaling`: the server does not read them, and restarting
/// every replica (and reloading its weights) because the maximum changed would hurt.
fn desired_config_map(owner: &Owner, spec: &ModelSpec) -> Result<(ConfigMap, String), BuildError> {
    let spec_value = serde_json::to_value(spec)
        .map_err(|e| BuildError::Serialize { what: "the Model spec", message: e.to_string() })?;
    let mut document = json!({
        "apiVersion": API_VERSION,
        "kind": "Model",
        "metadata": {"name": owner.name, "namespace": owner.namespace},
        "spec": spec_value,
    });
    let text = to_yaml("the Model document", &document)?;
    if let Some(spec) = document.get_mut("spec").and_then(|s| s.as_object_mut()) {
        spec.remove("replicas");
        spec.remove("autoscaling");
    }
    let hash = sha256_hex(&to_yaml("the Model document", &document)?);
    let config_map = ConfigMap {
        metadata: owner.meta(format!("{}-spec", owner.name), "config"),
        data: Some(BTreeMap::from([(CONFIG_FILE.to_owned(), text)])),
        ..ConfigMap::default()
    };
    Ok((config_map, hash))
}

/// Seconds the startup probe allows: 10 minutes plus 1 minute per GiB of weights.
fn startup_budget_seconds(weights_bytes: Option<u64>) -> u64 {
    let gib = weights_bytes.unwrap_or(0).div_ceil(1024 * 1024 * 1024);
    STARTUP_BASE_SECONDS + STARTUP_SECONDS_PER_GIB * gib
}

/// Requests and limits: memory from sizing (limit = request, so a replica never gets
/// OOM-killed for using what it was sized for), CPU from the context, GPUs from the spec.
/// `spec.resources` wins resource by resource: a name it mentions in requests or limits is
/// taken from it entirely.
fn server_resources(spec: &ModelSpec, ctx: &BuildContext, memory_bytes: Option<u64>) -> ResourceRequirements {
    let mut requests = BTreeMap::from([("cpu".to_owned(), quantity(&ctx.cpu_request))]);
    let mut limits = BTreeMap::new();
    if let Some(bytes) = memory_bytes {
        let memory = quantity(&sizing::memory_quantity(bytes));
        requests.insert("memory".to_owned(), memory.clone());
        limits.insert("memory".to_owned(), memory);
    }
    if spec.hardware.accelerator == Accelerator::Nvidia {
        limits.insert(GPU_RESOURCE.to_owned(), Quantity(spec.hardware.count.unwrap_or(1).to_string()));
    }
    let mut claims = None;
    if let Some(user) = &spec.resources {
        let user_requests = user.requests.clone().unwrap_or_default();
        let user_limits = user.limits.clone().unwrap_or_default();
        for name in user_requests.keys().chain(user_limits.keys()) {
            requests.remove(name);
            limits.remove(name);
        }
        requests.extend(user_requests);
        limits.extend(user_limits);
        claims.clone_from(&user.claims);
    }
    ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        claims,
    }
}

/// Node selector and tolerations for the accelerator.
fn scheduling(spec: &ModelSpec) -> (BTreeMap<String, String>, Vec<Toleration>) {
    let mut node_selector = spec.hardware.node_selector.clone();
    let mut tolerations = spec.hardware.tolerations.clone();
    match spec.hardware.accelerator {
        Accelerator::Cpu => {}
        Accelerator::Nvidia => {
            let gpu = Toleration {
                key: Some(GPU_RESOURCE.into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Toleration::default()
            };
            if !tolerations.contains(&gpu) {
                tolerations.push(gpu);
            }
        }
        Accelerator::Apple => {
            node_selector.insert("hearth.dev/accelerator".into(), "apple".into());
            node_selector.insert("kubernetes.io/arch".into(), "arm64".into());
        }
    }
    (node_selector, tolerations)
}

/// One projected volume with every tenant's key, each at `<Secret>/<key>` (what the server's
/// `--secrets-dir` reads). Keys are read at start-up: rotate one with a rollout restart.
fn tenant_secrets_volume(spec: &ModelSpec) -> Option<Volume> {
    let mut by_secret: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for tenant in &spec.tenants {
        let keys = by_secret.entry(tenant.api_key_secret_ref.name.as_str()).or_default();
        if !keys.contains(&tenant.api_key_secret_ref.key.as_str()) {
            keys.push(&tenant.api_key_secret_ref.key);
        }
    }
    if by_secret.is_empty() {
        return None;
    }
    let sources = by_secret
        .into_iter()
        .map(|(name, keys)| VolumeProjection {
            secret: Some(SecretProjection {
                name: name.to_owned(),
                items: Some(
                    keys.into_iter()
                        .map(|key| KeyToPath { key: key.to_owned(), path: format!("{name}/{key}"), mode: None })
                        .collect(),
                ),
                optional: Some(false),
            }),
            ..VolumeProjection::default()
        })
        .collect();
    Some(Volume {
        name: "tenant-keys".into(),
        projected: Some(ProjectedVolumeSource { sources: Some(sources), default_mode: Some(0o440) }),
        ..Volume::default()
    })
}

fn desired_deployment(
    owner: &Owner,
    spec: &ModelSpec,
    ctx: &BuildContext,
    memory_bytes: Option<u64>,
    weights_bytes: Option<u64>,
    replicas: Option<i32>,
    config_hash: String,
) -> Deployment {
    let (tmp, tmp_mount) = tmp_volume();
    let mut volumes = vec![
        Volume {
            name: "cache".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: format!("{}-cache", owner.name),
                read_only: None,
            }),
            ..Volume::default()
        },
        config_volume(&format!("{}-spec", owner.name)),
        tmp,
    ];
    let mut fetch_mounts = vec![mount("cache", CACHE_DIR, false), tmp_mount.clone()];
    let mut server_mounts = vec![mount("cache", CACHE_DIR, true), mount("config", CONFIG_DIR, true), tmp_mount];
    if let Some(claim) = source_claim(spec) {
        volumes.push(Volume {
            name: "source".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.to_owned(),
                read_only: Some(true),
            }),
            ..Volume::default()
        });
        let source_mount = mount("source", &format!("{PVC_SOURCE_DIR}/{claim}"), true);
        fetch_mounts.push(source_mount.clone());
        server_mounts.push(source_mount);
    }

    if let Some(secrets) = tenant_secrets_volume(spec) {
        volumes.push(secrets);
        server_mounts.push(mount("tenant-keys", SECRETS_DIR, true));
    }

    let image = match spec.hardware.accelerator {
        Accelerator::Nvidia => ctx.server_image_cuda.clone(),
        Accelerator::Cpu | Accelerator::Apple => ctx.server_image.clone(),
    };
    let mut fetch_args = vec!["fetch".to_owned(), spec.source.uri.clone()];
    if let Some(sha256) = &spec.source.sha256 {
        fetch_args.extend(["--sha256".to_owned(), sha256.clone()]);
    }
    fetch_args.extend(["--cache".to_owned(), CACHE_DIR.to_owned()]);
    let fetch = Container {
        name: "fetch".into(),
        image: Some(image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["hearth-server".into()]),
        args: Some(fetch_args),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), quantity("250m")),
                ("memory".to_owned(), quantity("256Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".to_owned(), quantity("1Gi"))])),
            claims: None,
        }),
        security_context: Some(container_security_context()),
        volume_mounts: Some(fetch_mounts),
        // A failed fetch (a checksum mismatch above all) leaves its error where the Model
        // controller reads it into the Model's status.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };

    let timeout_seconds = i64::from(spec.serving.timeout_seconds);
    let startup_threshold = startup_budget_seconds(weights_bytes).div_ceil(STARTUP_PERIOD_SECONDS as u64);
    let mut server_args: Vec<String> = [
        "serve",
        "--config",
        &format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        "--model",
        &served_path(spec),
        "--host",
        "0.0.0.0",
        "--port",
        &HTTP_PORT.to_string(),
        // In-flight requests may finish after SIGTERM, up to the request timeout.
        "--drain-seconds",
        &timeout_seconds.to_string(),
    ]
    .map(str::to_owned)
    .into();
    if !spec.tenants.is_empty() {
        server_args.extend(["--secrets-dir".to_owned(), SECRETS_DIR.to_owned()]);
    }
    let server = Container {
        name: "server".into(),
        image: Some(image),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["hearth-server".into()]),
        args: Some(server_args),
        ports: Some(vec![http_port()]),
        startup_probe: Some(http_probe(
            "/readyz",
            STARTUP_PERIOD_SECONDS,
            i32::try_from(startup_threshold).unwrap_or(i32::MAX),
        )),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        lifecycle: Some(drain_lifecycle()),
        resources: Some(server_resources(spec, ctx, memory_bytes)),
        security_context: Some(container_security_context()),
        volume_mounts: Some(server_mounts),
        ..Container::default()
    };

    let (node_selector, tolerations) = scheduling(spec);
    let pod = PodSpec {
        init_containers: Some(vec![fetch]),
        containers: vec![server],
        volumes: Some(volumes),
        security_context: Some(pod_security_context()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        node_selector: (!node_selector.is_empty()).then_some(node_selector),
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        termination_grace_period_seconds: Some(PRE_STOP_SECONDS + timeout_seconds + 15),
        ..PodSpec::default()
    };
    Deployment {
        metadata: owner.meta(format!("{}-server", owner.name), COMPONENT),
        spec: Some(DeploymentSpec {
            replicas,
            selector: owner.pod_selector(COMPONENT),
            strategy: Some(rolling_update()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(owner.labels(COMPONENT)),
                    annotations: Some(pod_annotations(config_hash)),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_budget_is_ten_minutes_plus_one_per_gib() {
        assert_eq!(startup_budget_seconds(None), 600);
        assert_eq!(startup_budget_seconds(Some(253_113_024)), 660);
        assert_eq!(startup_budget_seconds(Some(5 * 1024 * 1024 * 1024)), 900);
    }
}
