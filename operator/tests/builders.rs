//! Desired-state builders: snapshots of the objects produced for the example resources, and
//! the fields that matter asserted one by one.
//!
//! Snapshots live in `tests/snapshots/*.yaml`. A missing snapshot is written; a different one
//! fails the test. After an intended change, regenerate them with
//! `UPDATE_SNAPSHOTS=1 cargo test -p hearth-operator --test builders` and review the diff.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::PathBuf;

use hearth_crds::agent::Agent;
use hearth_crds::cascade::Cascade;
use hearth_crds::knowledge_base::KnowledgeBase;
use hearth_crds::model::{Accelerator, Model, ModelSpec, Quantization, SizingHints, TokenCost};
use hearth_crds::runtime::AgentRuntimeConfig;
use hearth_crds::scaling::{Autoscaling, ScalingMetric};
use hearth_crds::{Resource as HearthResource, parse_stack};
use hearth_operator::builders::{
    AgentObjects, BuildContext, BuildError, CascadeObjects, Dependency, KnowledgeBaseObjects, ModelObjects, NoteReason,
    ResolvedAgent, ResolvedKnowledgeBase, ResolvedStage, RouterConfig, agent_config, agent_endpoint,
    desired_agent_objects, desired_cascade_objects, desired_knowledge_base_objects, desired_model_objects,
    managed_qdrant_url, model_endpoint, restricted_profile_violations,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, HostPathVolumeSource, PodSecurityContext, PodSpec, SeccompProfile, SecurityContext,
    Toleration, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{Value, json};

/// This package's directory, read when the test runs (cargo and nextest set it), so a test
/// binary reused from a build in another checkout still reads this checkout's files.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}

const NAMESPACE: &str = "ai";

fn repo_file(relative: &str) -> PathBuf {
    manifest_dir().join("..").join(relative)
}

/// The resources of an example file, placed in `ai` and given stable uids as the API server
/// would.
fn example(file: &str) -> Vec<HearthResource> {
    let path = repo_file(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut resources = parse_stack(&text, file).unwrap_or_else(|e| panic!("{e}"));
    for resource in &mut resources {
        let meta = match resource {
            HearthResource::Model(r) => &mut r.metadata,
            HearthResource::Cascade(r) => &mut r.metadata,
            HearthResource::KnowledgeBase(r) => &mut r.metadata,
            HearthResource::Agent(r) => &mut r.metadata,
        };
        let name = meta.name.clone().unwrap_or_default();
        meta.namespace.get_or_insert_with(|| NAMESPACE.to_owned());
        meta.uid = Some(format!("00000000-0000-4000-8000-{:012x}", stable_number(&name)));
    }
    resources
}

fn stable_number(text: &str) -> u64 {
    text.bytes().fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))) & 0xffff_ffff_ffff
}

fn model(file: &str, name: &str) -> Model {
    example(file)
        .into_iter()
        .find_map(|r| match r {
            HearthResource::Model(m) if m.metadata.name.as_deref() == Some(name) => Some(*m),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Model {name} in {file}"))
}

fn cascade(file: &str, name: &str) -> Cascade {
    example(file)
        .into_iter()
        .find_map(|r| match r {
            HearthResource::Cascade(c) if c.metadata.name.as_deref() == Some(name) => Some(*c),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Cascade {name} in {file}"))
}

fn gemma() -> Model {
    model("manifests/examples/quickstart.yaml", "gemma3-270m")
}
fn qwen_coder() -> Model {
    model("manifests/examples/quickstart.yaml", "qwen-coder-1-5b")
}
/// The full-featured example's GPU model. As written (16k context × 32 sequences) its KV
/// cache alone is 72 GiB and it fits no H100 (sizing reserves full context for every batch
/// slot), so the tests halve the batch to see it placed.
fn gpu_model() -> Model {
    let mut model = model("manifests/examples/full-featured.yaml", "qwen3-8b");
    model.spec.serving.max_batch_size = 16;
    model
}
fn apple_model() -> Model {
    model("manifests/examples/full-featured.yaml", "mistral-7b-mac")
}
fn support() -> Cascade {
    cascade("manifests/examples/quickstart.yaml", "support")
}

/// A context with fixed images, so snapshots do not change with the crate version.
fn ctx() -> BuildContext {
    BuildContext {
        server_image: "ghcr.io/hearth-dev/hearth-server:test".into(),
        server_image_cuda: "ghcr.io/hearth-dev/hearth-server:test-cuda".into(),
        storage_class: Some("local-path".into()),
        ..BuildContext::new()
    }
}

fn keda_ctx() -> BuildContext {
    BuildContext { keda_available: true, ..ctx() }
}

fn build(model: &Model, ctx: &BuildContext) -> ModelObjects {
    desired_model_objects(model, ctx, None).unwrap_or_else(|e| panic!("{e}"))
}

/// The quickstart cascade's stages as the controller would resolve them: the small model is
/// up, the large one has no endpoint yet.
fn support_stages() -> Vec<ResolvedStage> {
    vec![
        ResolvedStage {
            model: "gemma3-270m".into(),
            endpoint: Some("http://gemma3-270m.ai.svc.cluster.local:8080/v1".into()),
            ready: true,
            cost: Some(TokenCost { input_per_million_tokens: 0.01, output_per_million_tokens: 0.02 }),
        },
        ResolvedStage {
            model: "qwen-coder-1-5b".into(),
            endpoint: None,
            ready: false,
            cost: Some(TokenCost { input_per_million_tokens: 0.1, output_per_million_tokens: 0.2 }),
        },
    ]
}

fn build_support(ctx: &BuildContext) -> CascadeObjects {
    desired_cascade_objects(&support(), &support_stages(), ctx).unwrap_or_else(|e| panic!("{e}"))
}

fn json(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).expect("objects serialize")
}

/// Every object as JSON, in a fixed order.
fn model_documents(objects: &ModelObjects) -> Vec<Value> {
    let mut docs = vec![json(&objects.config_map), json(&objects.pvc)];
    docs.extend(objects.deployment.as_ref().map(json));
    docs.push(json(&objects.service));
    docs.extend(objects.hpa.as_ref().map(json));
    docs.extend(objects.scaled_object.as_ref().map(json));
    docs.extend(objects.pdb.as_ref().map(json));
    docs.push(json(&objects.network_policy));
    docs
}

fn cascade_documents(objects: &CascadeObjects) -> Vec<Value> {
    let mut docs = vec![json(&objects.config_map), json(&objects.deployment), json(&objects.service)];
    docs.extend(objects.hpa.as_ref().map(json));
    docs.push(json(&objects.network_policy));
    docs
}

fn to_yaml_stream(header: &str, docs: &[Value]) -> String {
    let mut out = String::from(header);
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(doc).expect("YAML"));
    }
    out
}

fn model_snapshot_header(objects: &ModelObjects) -> String {
    let mut header = String::from("# Generated by operator/tests/builders.rs; regenerate with UPDATE_SNAPSHOTS=1.\n");
    if let Some(blocked) = &objects.blocked {
        header.push_str(&format!("# blocked: {}: {}\n", blocked.reason, blocked.message));
    }
    for note in &objects.notes {
        header.push_str(&format!("# note: {}: {}\n", note.reason, note.message));
    }
    header
}

/// Compares `actual` with `tests/snapshots/<name>.yaml`, writing it when missing or when
/// `UPDATE_SNAPSHOTS=1`.
fn assert_snapshot(name: &str, actual: &str) {
    let path = manifest_dir().join("tests/snapshots").join(format!("{name}.yaml"));
    let update = std::env::var("UPDATE_SNAPSHOTS").is_ok_and(|v| v == "1");
    if update || !path.exists() {
        std::fs::create_dir_all(path.parent().expect("snapshot dir")).expect("create tests/snapshots");
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).expect("read snapshot");
    if expected == actual {
        return;
    }
    let expected_lines: Vec<&str> = expected.lines().collect();
    let actual_lines: Vec<&str> = actual.lines().collect();
    let first = expected_lines
        .iter()
        .zip(&actual_lines)
        .position(|(e, a)| e != a)
        .unwrap_or(expected_lines.len().min(actual_lines.len()));
    let around =
        |lines: &[&str]| lines.iter().skip(first.saturating_sub(3)).take(8).copied().collect::<Vec<_>>().join("\n");
    panic!(
        "snapshot {} differs from line {}:\n--- expected\n{}\n+++ actual\n{}\n\nIf the change is intended, run `UPDATE_SNAPSHOTS=1 cargo test -p hearth-operator --test builders` and review `git diff {}`.",
        path.display(),
        first + 1,
        around(&expected_lines),
        around(&actual_lines),
        path.display()
    );
}

fn deployment_pod(deployment: &Deployment) -> &PodSpec {
    deployment.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod template")
}

fn server_container(deployment: &Deployment) -> &Container {
    &deployment_pod(deployment).containers[0]
}

fn pod_annotation(deployment: &Deployment, key: &str) -> String {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(key))
        .cloned()
        .unwrap_or_else(|| panic!("no pod annotation {key}"))
}

fn quantity(text: &str) -> Quantity {
    Quantity(text.into())
}

// ---------------------------------------------------------------- snapshots

#[test]
fn quickstart_gemma_model_matches_its_snapshot() {
    let objects = build(&gemma(), &ctx());
    assert_snapshot("model-gemma3-270m", &to_yaml_stream(&model_snapshot_header(&objects), &model_documents(&objects)));
}

#[test]
fn gpu_model_with_keda_matches_its_snapshot() {
    let objects = build(&gpu_model(), &keda_ctx());
    assert_snapshot("model-qwen3-8b", &to_yaml_stream(&model_snapshot_header(&objects), &model_documents(&objects)));
}

#[test]
fn apple_model_matches_its_snapshot() {
    let objects = build(&apple_model(), &ctx());
    assert_snapshot(
        "model-mistral-7b-mac",
        &to_yaml_stream(&model_snapshot_header(&objects), &model_documents(&objects)),
    );
}

#[test]
fn quickstart_cascade_matches_its_snapshot() {
    let objects = build_support(&ctx());
    let header = "# Generated by operator/tests/builders.rs; regenerate with UPDATE_SNAPSHOTS=1.\n";
    assert_snapshot("cascade-support", &to_yaml_stream(header, &cascade_documents(&objects)));
}

// ---------------------------------------------------------------- metadata

#[test]
fn every_owned_object_carries_labels_and_a_controller_owner_reference() {
    let cases: Vec<(&str, &str, &str, Vec<Value>)> = vec![
        ("Model", "gemma3-270m", "hearth.dev/model", model_documents(&build(&gemma(), &ctx()))),
        ("Model", "qwen3-8b", "hearth.dev/model", model_documents(&build(&gpu_model(), &keda_ctx()))),
        ("Model", "qwen3-8b", "hearth.dev/model", model_documents(&build(&gpu_model(), &ctx()))),
        ("Model", "mistral-7b-mac", "hearth.dev/model", model_documents(&build(&apple_model(), &ctx()))),
        ("Cascade", "support", "hearth.dev/cascade", cascade_documents(&build_support(&ctx()))),
    ];
    for (kind, name, resource_label, docs) in cases {
        assert!(docs.len() >= 4, "{name}: {} objects", docs.len());
        for doc in docs {
            let meta = &doc["metadata"];
            let object = format!("{} {}", doc["kind"].as_str().unwrap_or("?"), meta["name"].as_str().unwrap_or("?"));
            assert!(meta["name"].as_str().is_some_and(|n| n.starts_with(name)), "{object} is not named after {name}");
            assert_eq!(meta["namespace"], NAMESPACE, "{object}");
            let labels = &meta["labels"];
            assert_eq!(labels["app.kubernetes.io/instance"], name, "{object}");
            assert_eq!(labels["app.kubernetes.io/part-of"], "hearth", "{object}");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "hearth-operator", "{object}");
            assert!(labels["app.kubernetes.io/name"].is_string(), "{object}");
            assert!(labels["app.kubernetes.io/component"].is_string(), "{object}");
            assert_eq!(labels[resource_label], name, "{object}");
            let owners = meta["ownerReferences"].as_array().unwrap_or_else(|| panic!("{object} has no owner"));
            assert_eq!(owners.len(), 1, "{object}");
            let owner = &owners[0];
            assert_eq!(owner["apiVersion"], "hearth.dev/v1alpha1", "{object}");
            assert_eq!(owner["kind"], kind, "{object}");
            assert_eq!(owner["name"], name, "{object}");
            assert!(owner["uid"].as_str().is_some_and(|u| !u.is_empty()), "{object}");
            assert_eq!(owner["controller"], true, "{object}");
            assert_eq!(owner["blockOwnerDeletion"], true, "{object}");
        }
    }
}

#[test]
fn objects_are_named_after_the_model() {
    let objects = build(&gemma(), &ctx());
    let name = |v: Value| v["metadata"]["name"].as_str().map(str::to_owned);
    assert_eq!(name(json(&objects.config_map)).as_deref(), Some("gemma3-270m-spec"));
    assert_eq!(name(json(&objects.pvc)).as_deref(), Some("gemma3-270m-cache"));
    assert_eq!(name(json(&objects.deployment)).as_deref(), Some("gemma3-270m-server"));
    assert_eq!(name(json(&objects.service)).as_deref(), Some("gemma3-270m"));
    assert_eq!(name(json(&objects.hpa)).as_deref(), Some("gemma3-270m-server"));
    assert_eq!(name(json(&objects.network_policy)).as_deref(), Some("gemma3-270m-server"));
    assert_eq!(model_endpoint(&gemma(), &ctx()), "http://gemma3-270m.ai.svc.cluster.local:8080/v1");
}

#[test]
fn a_resource_without_a_uid_cannot_own_objects() {
    let mut model = gemma();
    model.metadata.uid = None;
    let err = desired_model_objects(&model, &ctx(), None).unwrap_err();
    assert_eq!(err, BuildError::MissingMetadata { kind: "Model", field: "uid" });
    let mut model = gemma();
    model.metadata.name = Some("7b-model".into());
    assert!(matches!(desired_model_objects(&model, &ctx(), None), Err(BuildError::InvalidName { .. })));
}

// ---------------------------------------------------------------- the model server

#[test]
fn config_map_holds_a_model_document_the_server_accepts() {
    let model = gpu_model();
    let objects = build(&model, &ctx());
    let text = &objects.config_map.data.as_ref().expect("data")["model.yaml"];
    let parsed = parse_stack(text, "model.yaml").unwrap_or_else(|e| panic!("{e}\n{text}"));
    let [HearthResource::Model(served)] = parsed.as_slice() else { panic!("expected one Model in\n{text}") };
    assert_eq!(served.spec, model.spec);
    assert_eq!(served.metadata.name.as_deref(), Some("qwen3-8b"));
    assert_eq!(served.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert!(served.metadata.uid.is_none(), "only name and namespace are written");
}

#[test]
fn model_server_deployment_follows_the_serving_contract() {
    let model = gpu_model();
    let objects = build(&model, &keda_ctx());
    let deployment = objects.deployment.as_ref().expect("deployment");
    let spec = deployment.spec.as_ref().expect("spec");
    let pod = deployment_pod(deployment);

    let fetch = &pod.init_containers.as_ref().expect("init containers")[0];
    assert_eq!(fetch.name, "fetch");
    assert_eq!(fetch.command.as_deref(), Some(&["hearth-server".to_owned()][..]));
    assert_eq!(
        fetch.args.as_deref().expect("fetch args"),
        ["fetch", "hf://Qwen/Qwen3-8B-GGUF/Qwen3-8B-Q4_K_M.gguf", "--cache", "/models"]
    );
    let apple = build(&apple_model(), &ctx());
    let apple_fetch =
        &deployment_pod(apple.deployment.as_ref().expect("deployment")).init_containers.as_ref().expect("init")[0];
    assert_eq!(
        apple_fetch.args.as_deref().expect("fetch args"),
        [
            "fetch",
            "s3://models/mistral-7b-instruct-q4_k_m.gguf",
            "--sha256",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "--cache",
            "/models"
        ]
    );

    let server = server_container(deployment);
    assert_eq!(server.name, "server");
    let args = server.args.as_deref().expect("server args");
    assert_eq!(
        args[..10],
        [
            "serve",
            "--config",
            "/etc/hearth/model.yaml",
            "--model",
            "/models/Qwen3-8B-Q4_K_M.gguf",
            "--host",
            "0.0.0.0",
            "--port",
            "8080",
            "--drain-seconds"
        ]
    );
    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.clone())
    };
    assert_eq!(path(&server.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(path(&server.readiness_probe).as_deref(), Some("/readyz"));
    let startup = server.startup_probe.as_ref().expect("startup probe");
    let budget = startup.failure_threshold.unwrap_or(3) * startup.period_seconds.unwrap_or(10);
    let weights_gib = (8e9 * 4.85 / 8.0 / (1u64 << 30) as f64).ceil() as i32;
    assert!(budget >= 600 + 60 * weights_gib, "startup budget {budget}s for {weights_gib} GiB");

    let timeout = i64::from(model.spec.serving.timeout_seconds);
    assert!(pod.termination_grace_period_seconds.expect("grace") >= timeout + 15);
    let pre_stop = server.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()).and_then(|h| h.sleep.as_ref());
    assert!(pre_stop.is_some_and(|s| s.seconds > 0), "preStop sleeps so endpoints drain");
    assert_eq!(args[10], timeout.to_string());

    let rolling = spec.strategy.as_ref().and_then(|s| s.rolling_update.as_ref()).expect("rolling update");
    assert_eq!(json(&rolling.max_unavailable), 0);
    assert_eq!(json(&rolling.max_surge), 1);

    assert_eq!(pod_annotation(deployment, "prometheus.io/scrape"), "true");
    assert_eq!(pod_annotation(deployment, "prometheus.io/port"), "8080");
    assert_eq!(pod_annotation(deployment, "prometheus.io/path"), "/metrics");
    assert_eq!(pod_annotation(deployment, "hearth.dev/config-sha256").len(), 64);

    let mounts: Vec<(String, String)> =
        server.volume_mounts.iter().flatten().map(|m| (m.name.clone(), m.mount_path.clone())).collect();
    for (volume, at) in [("cache", "/models"), ("config", "/etc/hearth"), ("tmp", "/tmp")] {
        assert!(mounts.contains(&(volume.to_owned(), at.to_owned())), "{volume} at {at}: {mounts:?}");
    }
    let volumes = pod.volumes.as_ref().expect("volumes");
    let claim = volumes.iter().find_map(|v| v.persistent_volume_claim.as_ref()).expect("cache claim");
    assert_eq!(claim.claim_name, "qwen3-8b-cache");
    let config = volumes.iter().find_map(|v| v.config_map.as_ref()).expect("config volume");
    assert_eq!(config.name, "qwen3-8b-spec");
    assert!(volumes.iter().any(|v| v.name == "tmp" && v.empty_dir.is_some()));
    assert!(volumes.iter().all(|v| v.host_path.is_none()));

    // Pods selected by the Service are the Deployment's pods.
    let selector = spec.selector.match_labels.as_ref().expect("selector");
    let pod_labels = spec.template.metadata.as_ref().and_then(|m| m.labels.as_ref()).expect("pod labels");
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    let service = objects.service.spec.as_ref().expect("service spec");
    assert_eq!(service.selector.as_ref(), Some(selector));
    let port = &service.ports.as_ref().expect("ports")[0];
    assert_eq!((port.port, port.name.as_deref()), (8080, Some("http")));
}

#[test]
fn cpu_model_is_sized_from_weights_and_kv_cache() {
    let objects = build(&gemma(), &ctx());
    let footprint = objects.footprint.as_ref().expect("footprint");
    let server = server_container(objects.deployment.as_ref().expect("deployment"));
    let resources = server.resources.as_ref().expect("resources");
    let requests = resources.requests.as_ref().expect("requests");
    let limits = resources.limits.as_ref().expect("limits");
    let memory = quantity(&hearth_operator::sizing::memory_quantity(footprint.memory_bytes));
    assert_eq!(requests.get("memory"), Some(&memory));
    assert_eq!(limits.get("memory"), Some(&memory), "limit = request");
    assert_eq!(requests.get("cpu"), Some(&quantity(&ctx().cpu_request)));
    assert!(!limits.contains_key("nvidia.com/gpu"));
    assert_eq!(server.image.as_deref(), Some("ghcr.io/hearth-dev/hearth-server:test"));

    let pvc = objects.pvc.spec.as_ref().expect("pvc spec");
    assert_eq!(pvc.access_modes.as_deref(), Some(&["ReadWriteOnce".to_owned()][..]));
    assert_eq!(pvc.storage_class_name.as_deref(), Some("local-path"));
    let size = |objects: &ModelObjects| {
        objects.pvc.spec.as_ref().and_then(|s| s.resources.as_ref()).and_then(|r| r.requests.as_ref()).expect("size")["storage"]
            .clone()
    };
    assert_eq!(size(&objects), quantity("1Gi"));
    // 8B × 4.85 bits = 4.85 GB; × 1.2 = 5.42 GiB → 6 GiB.
    assert_eq!(size(&build(&gpu_model(), &ctx())), quantity("6Gi"));
    // The weights size the fetch step reports wins over the estimate.
    let reported = desired_model_objects(&gemma(), &ctx(), Some(10 * (1 << 30))).expect("objects");
    assert_eq!(size(&reported), quantity("12Gi"));
}

#[test]
fn nvidia_model_requests_gpus_and_tolerates_gpu_taints() {
    let gpu_toleration = Toleration {
        key: Some("nvidia.com/gpu".into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Toleration::default()
    };
    let objects = build(&gpu_model(), &ctx());
    let deployment = objects.deployment.as_ref().expect("deployment");
    let server = server_container(deployment);
    assert_eq!(server.image.as_deref(), Some("ghcr.io/hearth-dev/hearth-server:test-cuda"));
    let limits = server.resources.as_ref().and_then(|r| r.limits.as_ref()).expect("limits");
    assert_eq!(limits.get("nvidia.com/gpu"), Some(&quantity("1")));
    let pod = deployment_pod(deployment);
    let tolerations = pod.tolerations.as_ref().expect("tolerations");
    assert_eq!(
        tolerations.iter().filter(|t| **t == gpu_toleration).count(),
        1,
        "the spec's own GPU toleration is not repeated"
    );
    assert_eq!(
        pod.node_selector.as_ref().and_then(|s| s.get("nvidia.com/gpu.product")).map(String::as_str),
        Some("NVIDIA-H100-80GB-HBM3")
    );

    // Two GPUs, no tolerations in the spec: the standard one is added.
    let mut model = gpu_model();
    model.spec.hardware.count = Some(2);
    model.spec.hardware.tolerations = vec![Toleration {
        key: Some("dedicated".into()),
        operator: Some("Equal".into()),
        value: Some("llm".into()),
        effect: Some("NoSchedule".into()),
        ..Toleration::default()
    }];
    let objects = build(&model, &ctx());
    let deployment = objects.deployment.as_ref().expect("deployment");
    let limits = server_container(deployment).resources.as_ref().and_then(|r| r.limits.as_ref()).expect("limits");
    assert_eq!(limits.get("nvidia.com/gpu"), Some(&quantity("2")));
    let tolerations = deployment_pod(deployment).tolerations.as_ref().expect("tolerations");
    assert_eq!(tolerations.len(), 2);
    assert!(tolerations.contains(&gpu_toleration));
    assert!(tolerations.iter().any(|t| t.key.as_deref() == Some("dedicated")));
}

#[test]
fn apple_model_schedules_on_apple_arm64_nodes_with_its_own_resources() {
    let objects = build(&apple_model(), &ctx());
    let deployment = objects.deployment.as_ref().expect("deployment");
    let pod = deployment_pod(deployment);
    let selector = pod.node_selector.as_ref().expect("node selector");
    assert_eq!(selector.get("hearth.dev/accelerator").map(String::as_str), Some("apple"));
    assert_eq!(selector.get("kubernetes.io/arch").map(String::as_str), Some("arm64"));
    assert!(pod.tolerations.is_none());
    let server = server_container(deployment);
    assert_eq!(server.image.as_deref(), Some("ghcr.io/hearth-dev/hearth-server:test"));
    let resources = server.resources.as_ref().expect("resources");
    let requests = resources.requests.as_ref().expect("requests");
    let limits = resources.limits.as_ref().expect("limits");
    assert_eq!(requests.get("memory"), Some(&quantity("8Gi")));
    assert_eq!(requests.get("cpu"), Some(&quantity("4")));
    assert_eq!(limits.get("memory"), Some(&quantity("12Gi")));
    assert!(!limits.contains_key("nvidia.com/gpu"));
}

// ---------------------------------------------------------------- the restricted profile

#[test]
fn every_generated_pod_template_satisfies_the_restricted_profile() {
    let mut deployments = vec![
        ("gemma3-270m", build(&gemma(), &ctx()).deployment),
        ("qwen3-8b", build(&gpu_model(), &keda_ctx()).deployment),
        ("mistral-7b-mac", build(&apple_model(), &ctx()).deployment),
        ("support", Some(build_support(&ctx()).deployment)),
    ];
    let mut pvc_source = gemma();
    pvc_source.spec.source.uri = "pvc://weights/llm/gemma.gguf".into();
    deployments.push(("pvc source", build(&pvc_source, &ctx()).deployment));
    for (name, deployment) in deployments {
        let deployment = deployment.unwrap_or_else(|| panic!("{name}: no deployment"));
        let pod = deployment_pod(&deployment);
        let violations = restricted_profile_violations(pod);
        assert!(violations.is_empty(), "{name}: {violations:#?}");
        for container in pod.init_containers.iter().flatten().chain(&pod.containers) {
            let sc = container.security_context.as_ref().expect("security context");
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}/{}", container.name);
            assert_eq!(sc.run_as_user, Some(65532), "{name}/{}", container.name);
            assert_eq!(sc.run_as_non_root, Some(true), "{name}/{}", container.name);
        }
        assert_eq!(pod.automount_service_account_token, Some(false), "{name}");
    }
}

#[test]
fn a_pvc_source_is_mounted_read_only_where_fetch_expects_it() {
    let mut model = gemma();
    model.spec.source.uri = "pvc://weights/llm/gemma.gguf".into();
    let objects = build(&model, &ctx());
    let deployment = objects.deployment.as_ref().expect("deployment");
    let pod = deployment_pod(deployment);
    let source = pod.volumes.iter().flatten().find(|v| v.name == "source").expect("source volume");
    let claim = source.persistent_volume_claim.as_ref().expect("claim");
    assert_eq!((claim.claim_name.as_str(), claim.read_only), ("weights", Some(true)));
    let server = server_container(deployment);
    assert!(server.volume_mounts.iter().flatten().any(|m| m.mount_path == "/pvc/weights" && m.read_only == Some(true)));
    assert_eq!(server.args.as_deref().expect("args")[4], "/pvc/weights/llm/gemma.gguf");
}

#[test]
fn the_checker_flags_a_broken_pod_spec() {
    let broken = PodSpec {
        host_network: Some(true),
        security_context: Some(PodSecurityContext { run_as_user: Some(0), ..PodSecurityContext::default() }),
        volumes: Some(vec![Volume {
            name: "host".into(),
            host_path: Some(HostPathVolumeSource { path: "/var/run".into(), type_: None }),
            ..Volume::default()
        }]),
        containers: vec![Container {
            name: "bad".into(),
            security_context: Some(SecurityContext {
                privileged: Some(true),
                capabilities: Some(Capabilities {
                    add: Some(vec!["SYS_ADMIN".into(), "NET_BIND_SERVICE".into()]),
                    drop: None,
                }),
                seccomp_profile: Some(SeccompProfile { type_: "Unconfined".into(), localhost_profile: None }),
                ..SecurityContext::default()
            }),
            ..Container::default()
        }],
        ..PodSpec::default()
    };
    let violations = restricted_profile_violations(&broken);
    for expected in [
        "pod: hostNetwork must not be true",
        "pod: runAsUser must not be 0",
        "volume \"host\": hostPath volumes are not allowed",
        "container \"bad\": privileged must not be true",
        "container \"bad\": allowPrivilegeEscalation must be false",
        "container \"bad\": runAsNonRoot must be true (on the container or the pod)",
        "container \"bad\": seccompProfile.type must be RuntimeDefault or Localhost (on the container or the pod)",
        "container \"bad\": capabilities.drop must include ALL",
        "container \"bad\": capability SYS_ADMIN must not be added (only NET_BIND_SERVICE may be)",
    ] {
        assert!(violations.iter().any(|v| v == expected), "missing {expected:?} in {violations:#?}");
    }
    assert!(!violations.iter().any(|v| v.contains("NET_BIND_SERVICE must not")), "{violations:#?}");

    // One change to a generated pod is caught and names the container.
    let objects = build(&gemma(), &ctx());
    let mut pod = deployment_pod(objects.deployment.as_ref().expect("deployment")).clone();
    let fetch = &mut pod.init_containers.as_mut().expect("init")[0];
    fetch.security_context.as_mut().expect("security context").allow_privilege_escalation = Some(true);
    assert_eq!(
        restricted_profile_violations(&pod),
        ["init container \"fetch\": allowPrivilegeEscalation must be false"]
    );
}

// ---------------------------------------------------------------- scaling

fn autoscaled(metric: ScalingMetric, target: i32, min: i32, max: i32) -> Model {
    let mut model = gemma();
    model.spec.autoscaling =
        Some(Autoscaling { min_replicas: min, max_replicas: max, metric, target, scale_to_zero: false });
    model
}

#[test]
fn hpa_maps_each_metric_and_owns_the_replica_count() {
    let cases = [
        (
            ScalingMetric::Cpu,
            json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}),
        ),
        (
            ScalingMetric::InflightRequests,
            json!({"type": "Pods", "pods": {"metric": {"name": "hearth_server_inflight_requests"}, "target": {"type": "AverageValue", "averageValue": "70"}}}),
        ),
        (
            ScalingMetric::QueueDepth,
            json!({"type": "Pods", "pods": {"metric": {"name": "hearth_server_queue_depth"}, "target": {"type": "AverageValue", "averageValue": "70"}}}),
        ),
    ];
    for (metric, expected) in cases {
        let objects = build(&autoscaled(metric, 70, 2, 6), &ctx());
        let hpa = json(objects.hpa.as_ref().expect("hpa"));
        assert_eq!(hpa["apiVersion"], "autoscaling/v2");
        assert_eq!(hpa["spec"]["metrics"], json!([expected]), "{metric:?}");
        assert_eq!(hpa["spec"]["minReplicas"], 2);
        assert_eq!(hpa["spec"]["maxReplicas"], 6);
        assert_eq!(
            hpa["spec"]["scaleTargetRef"],
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "gemma3-270m-server"})
        );
        let deployment = objects.deployment.as_ref().expect("deployment");
        assert_eq!(deployment.spec.as_ref().and_then(|s| s.replicas), None, "the HPA owns the count");
        assert!(objects.scaled_object.is_none());
        assert!(objects.notes.is_empty());
    }
    // Without autoscaling the Deployment carries spec.replicas and there is no HPA.
    let objects = build(&qwen_coder(), &ctx());
    assert!(objects.hpa.is_none());
    assert_eq!(objects.deployment.as_ref().and_then(|d| d.spec.as_ref()).and_then(|s| s.replicas), Some(1));
}

#[test]
fn scale_to_zero_with_keda_makes_a_scaled_object_instead_of_an_hpa() {
    let ctx = keda_ctx();
    let objects = build(&gpu_model(), &ctx);
    assert!(objects.hpa.is_none());
    assert!(objects.notes.is_empty(), "{:?}", objects.notes);
    assert!(objects.pdb.is_none(), "minReplicas 0: no disruption budget");
    let scaled = json(objects.scaled_object.as_ref().expect("scaled object"));
    assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(scaled["kind"], "ScaledObject");
    assert_eq!(scaled["metadata"]["name"], "qwen3-8b-server");
    let spec = &scaled["spec"];
    assert_eq!(spec["minReplicaCount"], 0);
    assert_eq!(spec["maxReplicaCount"], 8);
    assert_eq!(spec["scaleTargetRef"]["name"], "qwen3-8b-server");
    let trigger = &spec["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    assert_eq!(trigger["metadata"]["serverAddress"], ctx.prometheus_address.as_str());
    assert_eq!(trigger["metadata"]["threshold"], "8");
    let query = trigger["metadata"]["query"].as_str().expect("query");
    assert!(query.contains("hearth_server_queue_depth") && query.contains("namespace=\"ai\""), "{query}");
    let deployment = objects.deployment.as_ref().expect("deployment");
    assert_eq!(deployment.spec.as_ref().and_then(|s| s.replicas), None, "KEDA owns the count");
}

#[test]
fn scale_to_zero_without_keda_keeps_one_replica_and_says_why() {
    let objects = build(&gpu_model(), &ctx());
    assert!(objects.scaled_object.is_none());
    let hpa = objects.hpa.as_ref().and_then(|h| h.spec.as_ref()).expect("hpa");
    assert_eq!(hpa.min_replicas, Some(1));
    assert_eq!(hpa.max_replicas, 8);
    let [note] = objects.notes.as_slice() else { panic!("expected one note, got {:?}", objects.notes) };
    assert_eq!(note.reason, NoteReason::ScaleToZeroUnavailable);
    assert_eq!(note.reason.as_str(), "ScaleToZeroUnavailable");
    assert!(note.message.contains("KEDA") && note.message.contains("not installed"), "{}", note.message);
    assert!(objects.blocked.is_none());
}

#[test]
fn a_disruption_budget_only_when_more_than_one_replica_is_expected() {
    assert!(build(&qwen_coder(), &ctx()).pdb.is_none(), "one replica");
    assert!(build(&gemma(), &ctx()).pdb.is_none(), "autoscaling from one replica");

    let mut three = qwen_coder();
    three.spec.replicas = 3;
    let pdb = json(build(&three, &ctx()).pdb.as_ref().expect("pdb for three replicas"));
    assert_eq!(pdb["metadata"]["name"], "qwen-coder-1-5b-server");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        json!({"hearth.dev/model": "qwen-coder-1-5b", "app.kubernetes.io/component": "server"})
    );
    assert!(build(&autoscaled(ScalingMetric::Cpu, 70, 2, 4), &ctx()).pdb.is_some(), "autoscaling from two");
}

// ---------------------------------------------------------------- rolling on change

#[test]
fn a_spec_change_rolls_the_pods_and_a_scaling_change_does_not() {
    let hash = |model: &Model| {
        pod_annotation(build(model, &ctx()).deployment.as_ref().expect("deployment"), "hearth.dev/config-sha256")
    };
    let original = gemma();
    let before = hash(&original);
    assert_eq!(before, hash(&gemma()), "the hash is deterministic");

    let mut serving = gemma();
    serving.spec.serving.max_tokens = 512;
    assert_ne!(hash(&serving), before, "a serving change must roll the Deployment");
    let mut source = gemma();
    source.spec.source.sha256 = Some("a".repeat(64));
    assert_ne!(hash(&source), before);

    let mut scaling = gemma();
    if let Some(autoscaling) = scaling.spec.autoscaling.as_mut() {
        autoscaling.max_replicas = 16;
    }
    scaling.spec.replicas = 2;
    assert_eq!(hash(&scaling), before, "scaling changes must not restart replicas");
    let text = |model: &Model| build(model, &ctx()).config_map.data.expect("data")["model.yaml"].clone();
    assert_ne!(text(&scaling), text(&original), "the ConfigMap still carries the whole spec");
}

// ---------------------------------------------------------------- placement

fn seventy_b_on_a_mac_mini() -> Model {
    let mut model = gemma();
    model.metadata.name = Some("llama-70b".into());
    model.spec = ModelSpec {
        sizing: Some(SizingHints {
            parameters: Some("70B".into()),
            quantization: Some(Quantization::Q4KM),
            layers: Some(80),
            kv_heads: Some(8),
            head_dim: Some(128),
        }),
        autoscaling: Some(Autoscaling {
            min_replicas: 2,
            max_replicas: 4,
            metric: ScalingMetric::Cpu,
            target: 70,
            scale_to_zero: false,
        }),
        ..model.spec
    };
    model.spec.source.uri = "hf://org/llama-70b-GGUF/llama-70b-q4_k_m.gguf".into();
    model.spec.hardware.accelerator = Accelerator::Apple;
    model.spec.hardware.profile = Some("mac-mini-m4-pro-64gb".into());
    model
}

#[test]
fn a_model_that_fits_nowhere_gets_no_deployment_and_a_message_naming_the_profile() {
    let objects = build(&seventy_b_on_a_mac_mini(), &ctx());
    assert!(objects.deployment.is_none());
    assert!(objects.hpa.is_none() && objects.pdb.is_none() && objects.scaled_object.is_none());
    assert!(objects.footprint.is_none());
    let blocked = objects.blocked.as_ref().expect("blocked");
    assert_eq!(blocked.reason, NoteReason::FitsNowhere);
    assert!(blocked.message.contains("mac-mini-m4-pro-64gb"), "{}", blocked.message);
    assert!(blocked.message.contains("weights 39.5 GiB"), "{}", blocked.message);
    // The rest still exists: the spec, the cache (sized from the estimate), the endpoint.
    assert_eq!(objects.config_map.metadata.name.as_deref(), Some("llama-70b-spec"));
    let size =
        objects.pvc.spec.as_ref().and_then(|s| s.resources.as_ref()).and_then(|r| r.requests.as_ref()).expect("size");
    assert_eq!(size["storage"], quantity("48Gi"));
    assert_eq!(objects.service.metadata.name.as_deref(), Some("llama-70b"));

    // On the profile-less Apple fleet it fits a Mac Studio.
    let mut anywhere = seventy_b_on_a_mac_mini();
    anywhere.spec.hardware.profile = None;
    let objects = build(&anywhere, &ctx());
    assert!(objects.deployment.is_some(), "{:?}", objects.blocked);
    assert_eq!(objects.footprint.as_ref().map(|f| f.profile.name.as_str()), Some("mac-studio-m2-ultra-192gb"));
}

#[test]
fn a_model_that_cannot_be_sized_needs_resources() {
    let mut model = gemma();
    model.spec.sizing = None;
    let objects = build(&model, &ctx());
    assert!(objects.deployment.is_none());
    assert_eq!(objects.blocked.as_ref().map(|b| b.reason), Some(NoteReason::SizingUnknown));

    model.spec.resources = Some(k8s_openapi::api::core::v1::ResourceRequirements {
        requests: Some([("memory".to_owned(), quantity("2Gi"))].into()),
        ..Default::default()
    });
    let objects = build(&model, &ctx());
    let server = server_container(objects.deployment.as_ref().expect("deployment when resources are given"));
    let resources = server.resources.as_ref().expect("resources");
    assert_eq!(resources.requests.as_ref().and_then(|r| r.get("memory")), Some(&quantity("2Gi")));
    assert!(resources.limits.as_ref().is_none_or(|l| !l.contains_key("memory")), "the user's memory entry wins whole");

    let mut unknown = gemma();
    unknown.spec.hardware.profile = Some("tpu-v5".into());
    let objects = build(&unknown, &ctx());
    assert_eq!(objects.blocked.as_ref().map(|b| b.reason), Some(NoteReason::UnknownProfile));
}

// ---------------------------------------------------------------- network policy

#[test]
fn network_policy_admits_declared_clients_and_monitoring_only() {
    let policy = json(&build(&gemma(), &ctx()).network_policy);
    let spec = &policy["spec"];
    assert_eq!(spec["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        spec["podSelector"]["matchLabels"],
        json!({"hearth.dev/model": "gemma3-270m", "app.kubernetes.io/component": "server"})
    );
    assert_eq!(
        spec["ingress"],
        json!([
            {"from": [{"podSelector": {"matchLabels": {"hearth.dev/client-of-gemma3-270m": "true"}}}], "ports": [{"port": 8080, "protocol": "TCP"}]},
            {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}], "ports": [{"port": 8080, "protocol": "TCP"}]},
        ])
    );
    let no_monitoring = BuildContext { monitoring_namespace_labels: Default::default(), ..ctx() };
    let policy = json(&build(&gemma(), &no_monitoring).network_policy);
    assert_eq!(policy["spec"]["ingress"].as_array().map(Vec::len), Some(1));
}

// ---------------------------------------------------------------- cascade

#[test]
fn cascade_router_reads_resolved_endpoints_and_is_admitted_by_its_models() {
    let objects = build_support(&ctx());
    let data = objects.config_map.data.as_ref().expect("data");
    let config: RouterConfig = serde_yaml::from_str(&data["router.yaml"]).expect("router.yaml parses");
    assert_eq!(config.name, "support");
    assert_eq!(config.max_escalation_ratio, Some(0.5));
    let stages: Vec<(&str, &str, Option<f64>)> =
        config.stages.iter().map(|s| (s.model.as_str(), s.endpoint.as_str(), s.min_confidence)).collect();
    assert_eq!(
        stages,
        [
            ("gemma3-270m", "http://gemma3-270m.ai.svc.cluster.local:8080/v1", Some(0.72)),
            ("qwen-coder-1-5b", "http://qwen-coder-1-5b.ai.svc.cluster.local:8080/v1", None),
        ]
    );
    assert_eq!(config.stages[0].timeout_seconds, 60);
    assert_eq!(config.stages[1].cost.as_ref().map(|c| c.output_per_million_tokens), Some(0.2));
    let parsed = parse_stack(&data["cascade.yaml"], "cascade.yaml").unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(parsed.as_slice(), [HearthResource::Cascade(c)] if c.spec == support().spec));

    let deployment = &objects.deployment;
    let router = server_container(deployment);
    assert_eq!(
        router.args.as_deref().expect("args"),
        ["cascade", "--config", "/etc/hearth/router.yaml", "--host", "0.0.0.0", "--port", "8080"]
    );
    let labels = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref())
        .expect("labels");
    // Each stage Model's NetworkPolicy admits pods carrying its client label.
    for model in [gemma(), qwen_coder()] {
        let policy = json(&build(&model, &ctx()).network_policy);
        let admitted = &policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"];
        for (key, value) in admitted.as_object().expect("labels") {
            assert_eq!(labels.get(key).map(String::as_str), value.as_str(), "router lacks {key}");
        }
    }
    assert_eq!(objects.deployment.spec.as_ref().and_then(|s| s.replicas), Some(1));
    assert!(objects.hpa.is_none());
    assert_eq!(objects.service.metadata.name.as_deref(), Some("support-router"));
    let policy = json(&objects.network_policy);
    assert_eq!(
        policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"],
        json!({"hearth.dev/client-of-support": "true"})
    );
}

#[test]
fn the_operator_may_read_routers_but_not_model_servers() {
    let mut with_operator = ctx();
    with_operator.operator_namespace = Some("hearth-system".into());
    let router =
        json(&desired_cascade_objects(&support(), &support_stages(), &with_operator).expect("objects").network_policy);
    let rules = router["spec"]["ingress"].as_array().expect("rules");
    let operator = rules
        .iter()
        .find(|r| r["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "hearth-system")
        .expect("a rule for the operator's namespace");
    assert_eq!(operator["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"], "operator");
    assert_eq!(operator["ports"][0]["port"], 8080);
    let server = json(&build(&gemma(), &with_operator).network_policy);
    let text = server.to_string();
    assert!(!text.contains("hearth-system"), "model servers admit no operator traffic: {text}");
}

#[test]
fn cascade_router_rolls_only_when_routing_changes() {
    let hash = |cascade: &Cascade, stages: &[ResolvedStage]| {
        let objects = desired_cascade_objects(cascade, stages, &ctx()).expect("objects");
        pod_annotation(&objects.deployment, "hearth.dev/config-sha256")
    };
    let before = hash(&support(), &support_stages());
    let mut flipped = support_stages();
    flipped[0].ready = false;
    assert_eq!(hash(&support(), &flipped), before, "readiness is not configuration");
    let mut moved = support_stages();
    moved[1].endpoint = Some("http://elsewhere:8080/v1".into());
    assert_ne!(hash(&support(), &moved), before);
    let mut scaled = support();
    scaled.spec.replicas = 3;
    assert_eq!(hash(&scaled, &support_stages()), before);
}

#[test]
fn cascade_autoscaling_makes_an_hpa_and_never_scales_to_zero() {
    let mut cascade = support();
    cascade.spec.autoscaling = Some(Autoscaling {
        min_replicas: 0,
        max_replicas: 5,
        metric: ScalingMetric::InflightRequests,
        target: 32,
        scale_to_zero: true,
    });
    let objects = desired_cascade_objects(&cascade, &support_stages(), &keda_ctx()).expect("objects");
    let hpa = json(objects.hpa.as_ref().expect("hpa"));
    assert_eq!(hpa["metadata"]["name"], "support-router");
    assert_eq!(hpa["spec"]["minReplicas"], 1);
    assert_eq!(hpa["spec"]["metrics"][0]["pods"]["metric"]["name"], "hearth_server_inflight_requests");
    assert_eq!(objects.deployment.spec.as_ref().and_then(|s| s.replicas), None);
    assert_eq!(objects.notes.len(), 1);
    assert_eq!(objects.notes[0].reason, NoteReason::ScaleToZeroUnavailable);
}

// ---------------------------------------------------------------- knowledge bases

fn knowledge_base(file: &str, name: &str) -> KnowledgeBase {
    example(file)
        .into_iter()
        .find_map(|r| match r {
            HearthResource::KnowledgeBase(kb) if kb.metadata.name.as_deref() == Some(name) => Some(*kb),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no KnowledgeBase {name} in {file}"))
}

fn agent(file: &str, name: &str) -> Agent {
    example(file)
        .into_iter()
        .find_map(|r| match r {
            HearthResource::Agent(a) if a.metadata.name.as_deref() == Some(name) => Some(*a),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Agent {name} in {file}"))
}

/// The quickstart's knowledge base: a ConfigMap source, the managed Qdrant, a schedule.
fn handbook() -> KnowledgeBase {
    knowledge_base("manifests/examples/quickstart.yaml", "handbook")
}
/// The full-featured example's: PVC, URL and ConfigMap-key sources, an external Qdrant with an
/// API key, int8 quantization, deletionPolicy Retain.
fn policies() -> KnowledgeBase {
    knowledge_base("manifests/examples/full-featured.yaml", "policies")
}
/// The embedding model both use, as the operator sees it once sized.
fn minilm() -> Model {
    let mut model = model("manifests/examples/quickstart.yaml", "minilm");
    model.status = Some(hearth_crds::model::ModelStatus {
        footprint: Some(hearth_crds::model::Footprint { memory_request: "768Mi".into(), ..Default::default() }),
        ..Default::default()
    });
    model
}

fn build_kb(kb: &KnowledgeBase, ctx: &BuildContext) -> KnowledgeBaseObjects {
    desired_knowledge_base_objects(kb, Some(&minilm()), ctx).unwrap_or_else(|e| panic!("{e}"))
}

fn kb_documents(objects: &KnowledgeBaseObjects) -> Vec<Value> {
    let mut docs = vec![json(&objects.config_map)];
    docs.extend(objects.ingest_job.as_ref().map(json));
    docs.extend(objects.cron_job.as_ref().map(json));
    if let Some(qdrant) = &objects.qdrant {
        docs.extend([json(&qdrant.stateful_set), json(&qdrant.service), json(&qdrant.network_policy)]);
    }
    docs
}

fn job_pod(job: &Job) -> &PodSpec {
    job.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("job pod template")
}

fn mounts_of(container: &Container) -> Vec<(String, String, bool)> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.clone(), m.mount_path.clone(), m.read_only == Some(true)))
        .collect()
}

#[test]
fn knowledge_bases_match_their_snapshots() {
    let header = "# Generated by operator/tests/builders.rs; regenerate with UPDATE_SNAPSHOTS=1.\n";
    assert_snapshot("knowledge-base-handbook", &to_yaml_stream(header, &kb_documents(&build_kb(&handbook(), &ctx()))));
    assert_snapshot("knowledge-base-policies", &to_yaml_stream(header, &kb_documents(&build_kb(&policies(), &ctx()))));
}

#[test]
fn ingestion_reads_a_stack_of_the_embedding_model_and_the_resolved_knowledge_base() {
    for (kb, url, collection) in [
        (handbook(), "http://handbook-qdrant.ai.svc.cluster.local:6334", "ai-handbook"),
        (policies(), "http://qdrant.db:6334", "policies"),
    ] {
        let objects = build_kb(&kb, &ctx());
        let text = &objects.config_map.data.as_ref().expect("data")["stack.yaml"];
        let parsed = parse_stack(text, "stack.yaml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        let [HearthResource::Model(model), HearthResource::KnowledgeBase(ingested)] = parsed.as_slice() else {
            panic!("expected the Model then the KnowledgeBase in\n{text}")
        };
        assert_eq!(model.spec, minilm().spec);
        assert_eq!(ingested.metadata.name, kb.metadata.name);
        let store = ingested.spec.store.qdrant.as_ref().expect("store resolved");
        assert_eq!((store.url.as_str(), store.collection.as_deref()), (url, Some(collection)));
        assert_eq!(store.api_key_secret_ref, kb.spec.store.qdrant.as_ref().and_then(|q| q.api_key_secret_ref.clone()));
        assert_eq!(ingested.spec.sources, kb.spec.sources);
        assert_eq!((objects.collection.url.as_str(), objects.collection.name.as_str()), (url, collection));
    }
}

#[test]
fn the_ingestion_job_follows_the_ingest_contract() {
    let objects = build_kb(&policies(), &ctx());
    let job = objects.ingest_job.as_ref().expect("job");
    let name = job.metadata.name.as_deref().expect("name");
    assert_eq!(name, format!("policies-ingest-{}", &objects.ingest_hash[..8]));
    let annotations = job.metadata.annotations.as_ref().expect("annotations");
    assert_eq!(annotations["hearth.dev/ingest-sha256"], objects.ingest_hash);
    let spec = job.spec.as_ref().expect("spec");
    assert_eq!(spec.backoff_limit, Some(2));
    let pod = job_pod(job);
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    let ingest = &pod.containers[0];
    assert_eq!(
        ingest.args.as_deref().expect("args"),
        [
            "ingest",
            "-f",
            "/etc/hearth/stack.yaml",
            "--knowledge-base",
            "policies",
            "--models-dir",
            "/models",
            "--report-file",
            "/dev/termination-log"
        ]
    );
    assert_eq!(ingest.termination_message_path.as_deref(), Some("/dev/termination-log"));
    assert_eq!(ingest.termination_message_policy.as_deref(), Some("FallbackToLogsOnError"));
    let mounts = mounts_of(ingest);
    for expected in [
        ("config", "/etc/hearth", true),
        ("cache", "/models", true),
        ("pvc-1", "/pvc/docs", true),
        ("configmap-1", "/configmaps/faq", true),
        ("tmp", "/tmp", false),
    ] {
        let expected = (expected.0.to_owned(), expected.1.to_owned(), expected.2);
        assert!(mounts.contains(&expected), "{expected:?} in {mounts:?}");
    }
    let volumes = pod.volumes.as_ref().expect("volumes");
    let claims: Vec<(&str, Option<bool>)> = volumes
        .iter()
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| (c.claim_name.as_str(), c.read_only))
        .collect();
    assert_eq!(claims, [("minilm-cache", Some(true)), ("docs", Some(true))]);
    let env = ingest.env.as_ref().expect("env");
    assert_eq!(env[0].name, "QDRANT_API_KEY");
    let secret = env[0].value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).expect("from the Secret");
    assert_eq!((secret.name.as_str(), secret.key.as_str()), ("qdrant", "api-key"));
    let memory = &ingest.resources.as_ref().and_then(|r| r.requests.as_ref()).expect("requests")["memory"];
    assert_eq!(memory, &quantity("768Mi"), "sized like the Model's server");
    // The cache claim is ReadWriteOnce: run beside a server replica of the Model.
    let affinity = pod.affinity.as_ref().and_then(|a| a.pod_affinity.as_ref()).expect("pod affinity");
    let term = &affinity.required_during_scheduling_ignored_during_execution.as_ref().expect("required")[0];
    assert_eq!(term.topology_key, "kubernetes.io/hostname");
    assert_eq!(
        json(&term.label_selector)["matchLabels"],
        json!({"hearth.dev/model": "minilm", "app.kubernetes.io/component": "server"})
    );
    let shared = BuildContext { cache_access_mode: "ReadWriteMany".into(), ..ctx() };
    assert!(job_pod(build_kb(&policies(), &shared).ingest_job.as_ref().expect("job")).affinity.is_none());
    // No schedule: no CronJob; an external Qdrant: no managed one.
    assert!(objects.cron_job.is_none() && objects.qdrant.is_none());
    assert!(objects.collection.needs_api_key && !objects.collection.managed);
    assert_eq!((objects.collection.hnsw_m, objects.collection.ef_construct), (32, 200));
    assert!(objects.collection.int8_quantization);
}

#[test]
fn a_schedule_makes_a_cron_job_running_the_same_ingestion() {
    let objects = build_kb(&handbook(), &ctx());
    let cron = objects.cron_job.as_ref().expect("cron job");
    assert_eq!(cron.metadata.name.as_deref(), Some("handbook-reindex"));
    let spec = cron.spec.as_ref().expect("spec");
    assert_eq!(spec.schedule, "0 3 * * *");
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
    let template = spec.job_template.spec.as_ref().expect("job template");
    assert_eq!(Some(template), objects.ingest_job.as_ref().and_then(|j| j.spec.as_ref()));
    let labels = spec.job_template.metadata.as_ref().and_then(|m| m.labels.as_ref()).expect("labels");
    assert_eq!(labels["hearth.dev/knowledge-base"], "handbook", "the controller finds the CronJob's Jobs by it");
    // The pods are clients of the knowledge base's managed Qdrant.
    let pod_labels = template.template.metadata.as_ref().and_then(|m| m.labels.as_ref()).expect("pod labels");
    assert_eq!(pod_labels["hearth.dev/client-of-handbook"], "true");
    let mounts = mounts_of(&job_pod(objects.ingest_job.as_ref().expect("job")).containers[0]);
    assert!(mounts.contains(&("configmap-1".into(), "/configmaps/handbook".into(), true)), "{mounts:?}");
}

#[test]
fn only_sources_chunking_and_the_embedding_model_make_a_new_ingestion_job() {
    let job_name = |kb: &KnowledgeBase| build_kb(kb, &ctx()).ingest_job.and_then(|j| j.metadata.name).expect("job");
    let before = job_name(&handbook());
    let mut retrieval = handbook();
    retrieval.spec.retrieval.top_k = 9;
    retrieval.spec.store.hnsw.m = 32;
    retrieval.spec.schedule = None;
    assert_eq!(job_name(&retrieval), before, "retrieval, store tuning and schedule do not re-ingest");
    let mut chunking = handbook();
    chunking.spec.chunking.chunk_tokens = 256;
    assert_ne!(job_name(&chunking), before);
    let mut sources = handbook();
    sources.spec.sources[0].config_map.as_mut().expect("configMap").key = Some("leave.md".into());
    assert_ne!(job_name(&sources), before);
    let mut embedding = handbook();
    embedding.spec.embedding.model = "bge".into();
    assert_ne!(job_name(&embedding), before);
    let long = {
        let mut kb = handbook();
        kb.metadata.name = Some(format!("k{}", "b".repeat(52)));
        kb
    };
    let objects = build_kb(&long, &ctx());
    assert!(objects.ingest_job.and_then(|j| j.metadata.name).is_some_and(|n| n.len() <= 63));
    assert!(objects.cron_job.and_then(|j| j.metadata.name).is_some_and(|n| n.len() <= 52));
    assert!(objects.qdrant.and_then(|q| q.stateful_set.metadata.name).is_some_and(|n| n.len() <= 52));
}

#[test]
fn directory_sources_and_chat_models_are_refused_by_name() {
    let mut local = handbook();
    local.spec.sources.push(serde_json::from_value(json!({"directory": {"path": "./docs"}})).expect("source"));
    let objects = build_kb(&local, &ctx());
    let blocked = objects.blocked.as_ref().expect("blocked");
    assert_eq!(blocked.reason, NoteReason::DirectorySource);
    assert!(blocked.message.starts_with("spec.sources[1].directory"), "{}", blocked.message);
    assert!(objects.ingest_job.is_none() && objects.cron_job.is_none());

    let objects = desired_knowledge_base_objects(&handbook(), Some(&gemma()), &ctx()).expect("objects");
    assert_eq!(objects.blocked.as_ref().map(|b| b.reason), Some(NoteReason::NotAnEmbeddingModel));
    assert!(objects.ingest_job.is_none());
    // Without the Model nothing can be ingested yet, and nothing is refused either.
    let objects = desired_knowledge_base_objects(&handbook(), None, &ctx()).expect("objects");
    assert!(objects.ingest_job.is_none() && objects.blocked.is_none());
}

#[test]
fn the_managed_qdrant_is_pinned_restricted_and_keeps_data_per_the_deletion_policy() {
    let objects = build_kb(&handbook(), &ctx());
    let qdrant = objects.qdrant.as_ref().expect("managed qdrant");
    let set = qdrant.stateful_set.spec.as_ref().expect("spec");
    let pod = set.template.spec.as_ref().expect("pod");
    let container = &pod.containers[0];
    let image = container.image.as_deref().expect("image");
    let tag = image.rsplit_once(':').map(|(_, tag)| tag).expect("a tag");
    assert!(image.contains("qdrant/qdrant") && tag.starts_with('v') && tag != "latest", "{image}");
    let sc = container.security_context.as_ref().expect("security context");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let mounts = mounts_of(container);
    for (volume, at) in [("storage", "/qdrant/storage"), ("snapshots", "/qdrant/snapshots"), ("init", "/qdrant/init")] {
        assert!(mounts.contains(&(volume.to_owned(), at.to_owned(), false)), "{volume} writable at {at}");
    }
    let env: Vec<(&str, Option<&str>)> =
        container.env.iter().flatten().map(|e| (e.name.as_str(), e.value.as_deref())).collect();
    assert!(env.contains(&("QDRANT_INIT_FILE_PATH", Some("/qdrant/init/.qdrant-initialized"))));
    let claims = set.volume_claim_templates.as_ref().expect("claim template");
    assert_eq!(claims[0].metadata.name.as_deref(), Some("storage"));
    assert_eq!(
        claims[0].spec.as_ref().and_then(|s| s.storage_class_name.as_deref()),
        Some("local-path"),
        "the operator's storage class"
    );
    let retention = |kb: &KnowledgeBase| {
        let objects = build_kb(kb, &ctx());
        let set = objects.qdrant.expect("qdrant").stateful_set.spec.expect("spec");
        set.persistent_volume_claim_retention_policy.and_then(|p| p.when_deleted).expect("retention")
    };
    assert_eq!(retention(&handbook()), "Delete");
    let mut retained = handbook();
    retained.spec.deletion_policy = hearth_crds::knowledge_base::DeletionPolicy::Retain;
    assert_eq!(retention(&retained), "Retain");
    // Clients: the knowledge base's (ingestion, agents), the operator, monitoring.
    let mut with_operator = ctx();
    with_operator.operator_namespace = Some("hearth-system".into());
    let policy = json(&build_kb(&handbook(), &with_operator).qdrant.expect("qdrant").network_policy);
    let rules = policy["spec"]["ingress"].as_array().expect("rules");
    assert_eq!(rules[0]["from"][0]["podSelector"]["matchLabels"], json!({"hearth.dev/client-of-handbook": "true"}));
    assert_eq!(rules[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "hearth-system");
    assert_eq!(rules[1]["ports"], json!([{"port": 6334, "protocol": "TCP"}]));
    let service = json(&qdrant.service);
    assert_eq!(service["metadata"]["name"], "handbook-qdrant");
    assert_eq!(managed_qdrant_url("handbook", "ai", &ctx()), objects.collection.url);
}

// ---------------------------------------------------------------- agents

/// The full-featured example's agent with everything it uses resolved: its Model up, the
/// knowledge base's embedding Model up, the delegate not created yet, long-term memory's
/// knowledge base missing.
fn orders() -> (Agent, ResolvedAgent) {
    let agent = agent("manifests/examples/full-featured.yaml", "orders");
    let up = |name: &str, endpoint: &str| Dependency {
        name: name.into(),
        endpoint: Some(endpoint.into()),
        exists: true,
        ready: true,
    };
    let resolved = ResolvedAgent {
        model: up("qwen3-8b", "http://qwen3-8b.ai.svc.cluster.local:8080/v1"),
        knowledge_bases: vec![
            ResolvedKnowledgeBase {
                name: "policies".into(),
                knowledge_base: Some(policies()),
                embedding: up("minilm", "http://minilm.ai.svc.cluster.local:8080/v1"),
                ready: true,
            },
            ResolvedKnowledgeBase {
                name: "orders-memory".into(),
                knowledge_base: None,
                embedding: Dependency::default(),
                ready: false,
            },
        ],
        agents: vec![Dependency { name: "billing".into(), ..Dependency::default() }],
    };
    (agent, resolved)
}

/// The quickstart's agent on the support cascade, with the handbook.
fn helpdesk() -> (Agent, ResolvedAgent) {
    let agent = agent("manifests/examples/quickstart.yaml", "helpdesk");
    let resolved = ResolvedAgent {
        model: Dependency { name: "support".into(), endpoint: None, exists: true, ready: false },
        knowledge_bases: vec![ResolvedKnowledgeBase {
            name: "handbook".into(),
            knowledge_base: Some(handbook()),
            embedding: Dependency { name: "minilm".into(), endpoint: None, exists: true, ready: false },
            ready: false,
        }],
        agents: vec![],
    };
    (agent, resolved)
}

fn build_agent((agent, resolved): &(Agent, ResolvedAgent)) -> AgentObjects {
    desired_agent_objects(agent, resolved, &ctx()).unwrap_or_else(|e| panic!("{e}"))
}

fn agent_documents(objects: &AgentObjects) -> Vec<Value> {
    let mut docs = vec![json(&objects.config_map), json(&objects.deployment), json(&objects.service)];
    docs.extend(objects.hpa.as_ref().map(json));
    docs.push(json(&objects.network_policy));
    docs
}

#[test]
fn agents_match_their_snapshots() {
    let header = "# Generated by operator/tests/builders.rs; regenerate with UPDATE_SNAPSHOTS=1.\n";
    assert_snapshot("agent-orders", &to_yaml_stream(header, &agent_documents(&build_agent(&orders()))));
    assert_snapshot("agent-helpdesk", &to_yaml_stream(header, &agent_documents(&build_agent(&helpdesk()))));
}

#[test]
fn agent_yaml_carries_the_resolved_endpoints_and_knowledge_bases() {
    let objects = build_agent(&orders());
    let text = &objects.config_map.data.as_ref().expect("data")["agent.yaml"];
    let config: AgentRuntimeConfig = serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(config, agent_config(&orders().0, &orders().1, &ctx()).expect("config"));
    assert_eq!((config.name.as_str(), config.namespace.as_str()), ("orders", "ai"));
    assert_eq!(config.spec, orders().0.spec);
    assert_eq!(config.model.name, "qwen3-8b");
    assert_eq!(config.model.endpoint, "http://qwen3-8b.ai.svc.cluster.local:8080/v1");
    // The memory knowledge base does not exist yet: no binding, its store is unknown.
    let [binding] = config.knowledge_bases.as_slice() else { panic!("{:?}", config.knowledge_bases) };
    assert_eq!(binding.name, "policies");
    assert_eq!(binding.embedding.name, "minilm");
    assert_eq!(binding.embedding.endpoint, "http://minilm.ai.svc.cluster.local:8080/v1");
    let store = binding.spec.store.qdrant.as_ref().expect("store");
    assert_eq!((store.url.as_str(), store.collection.as_deref()), ("http://qdrant.db:6334", Some("policies")));
    // A delegate without an endpoint yet gets its predictable one.
    assert_eq!(config.agents[0].name, "billing");
    assert_eq!(config.agents[0].endpoint, "http://billing-agent.ai.svc.cluster.local:8080/v1");
    assert_eq!(config.openapi_dir.as_deref(), Some("/etc/hearth/openapi"));

    let helpdesk = build_agent(&helpdesk());
    let text = &helpdesk.config_map.data.as_ref().expect("data")["agent.yaml"];
    let config: AgentRuntimeConfig = serde_yaml::from_str(text).expect("agent.yaml parses");
    assert_eq!(config.model.name, "support");
    assert_eq!(config.model.endpoint, "http://support-router.ai.svc.cluster.local:8080/v1");
    let store = config.knowledge_bases[0].spec.store.qdrant.as_ref().expect("store");
    assert_eq!(store.url, "http://handbook-qdrant.ai.svc.cluster.local:6334");
    assert_eq!(store.collection.as_deref(), Some("ai-handbook"));
}

#[test]
fn the_agent_runtime_follows_the_serving_contract() {
    let objects = build_agent(&orders());
    let pod = deployment_pod(&objects.deployment);
    let runtime = server_container(&objects.deployment);
    assert_eq!(
        runtime.args.as_deref().expect("args"),
        [
            "agent",
            "--config",
            "/etc/hearth/agent/agent.yaml",
            "--data-dir",
            "/var/lib/hearth",
            "--host",
            "0.0.0.0",
            "--port",
            "8080",
            "--drain-seconds",
            "120"
        ]
    );
    let mounts = mounts_of(runtime);
    for expected in [
        ("config", "/etc/hearth/agent", true),
        ("data", "/var/lib/hearth", false),
        ("openapi-1", "/etc/hearth/openapi/orders-api", true),
        ("tmp", "/tmp", false),
    ] {
        let expected = (expected.0.to_owned(), expected.1.to_owned(), expected.2);
        assert!(mounts.contains(&expected), "{expected:?} in {mounts:?}");
    }
    let volumes = pod.volumes.as_ref().expect("volumes");
    assert!(volumes.iter().any(|v| v.name == "data" && v.empty_dir.is_some()), "memory is per pod");
    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.clone())
    };
    assert_eq!(path(&runtime.readiness_probe).as_deref(), Some("/readyz"));
    assert_eq!(path(&runtime.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(runtime.env.as_ref().expect("env")[0].name, "QDRANT_API_KEY");
    assert!(pod.termination_grace_period_seconds.expect("grace") >= 120, "a run may finish");
    // Autoscaled on CPU between 2 and 6: the HPA owns the count.
    let hpa = json(objects.hpa.as_ref().expect("hpa"));
    assert_eq!((hpa["spec"]["minReplicas"].clone(), hpa["spec"]["maxReplicas"].clone()), (json!(2), json!(6)));
    assert_eq!(objects.deployment.spec.as_ref().and_then(|s| s.replicas), None);
    assert_eq!(objects.service.metadata.name.as_deref(), Some("orders-agent"));
    assert_eq!(agent_endpoint(&orders().0, &ctx()), "http://orders-agent.ai.svc.cluster.local:8080/v1");
    // What it calls admits it: each target's NetworkPolicy selects its client label.
    let labels = pod_template_labels(&objects.deployment);
    for client in ["qwen3-8b", "policies", "minilm", "billing"] {
        assert_eq!(labels.get(&format!("hearth.dev/client-of-{client}")).map(String::as_str), Some("true"), "{client}");
    }
}

fn pod_template_labels(deployment: &Deployment) -> std::collections::BTreeMap<String, String> {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .expect("pod labels")
}

#[test]
fn agent_egress_allows_only_its_models_knowledge_delegates_dns_and_guardrail_hosts() {
    let policy = json(&build_agent(&orders()).network_policy);
    let spec = &policy["spec"];
    assert_eq!(spec["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        spec["ingress"][0]["from"][0]["podSelector"]["matchLabels"],
        json!({"hearth.dev/client-of-orders": "true"})
    );
    let pods = |labels: Value| json!({"podSelector": {"matchLabels": labels}});
    assert_eq!(
        spec["egress"],
        json!([
            // DNS, wherever the resolver is.
            {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
            // Its Model, the knowledge base's embedding Model, the delegate.
            {"to": [
                pods(json!({"hearth.dev/model": "qwen3-8b", "app.kubernetes.io/component": "server"})),
                pods(json!({"hearth.dev/model": "minilm", "app.kubernetes.io/component": "server"})),
                pods(json!({"hearth.dev/agent": "billing", "app.kubernetes.io/component": "agent"})),
            ], "ports": [{"port": 8080, "protocol": "TCP"}]},
            // The external Qdrant: a name outside the cluster opens its port, not just the host.
            {"ports": [{"port": 6334, "protocol": "TCP"}]},
            // guardrails.egress: in-cluster Services open their namespace, on the tools' ports.
            {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}}],
             "ports": [{"port": 8080, "protocol": "TCP"}]},
            {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}}],
             "ports": [{"port": 80, "protocol": "TCP"}]},
        ])
    );

    // The quickstart agent: its cascade's router, the handbook's embedding Model and managed Qdrant.
    let mut helpdesk = helpdesk();
    helpdesk.0.spec.guardrails.egress = vec!["api.example.com".into(), "search.example.com:8443".into(), "wiki".into()];
    let policy = json(&build_agent(&helpdesk).network_policy);
    let egress = policy["spec"]["egress"].as_array().expect("egress");
    assert_eq!(
        egress[1],
        json!({"to": [pods(json!({"hearth.dev/knowledge-base": "handbook", "app.kubernetes.io/component": "qdrant"}))],
               "ports": [{"port": 6334, "protocol": "TCP"}]})
    );
    assert_eq!(
        egress[2],
        json!({"to": [
            pods(json!({"hearth.dev/cascade": "support", "app.kubernetes.io/component": "router"})),
            pods(json!({"hearth.dev/model": "minilm", "app.kubernetes.io/component": "server"})),
        ], "ports": [{"port": 8080, "protocol": "TCP"}]})
    );
    assert_eq!(egress[3], json!({"ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}]}));
    assert_eq!(egress[4], json!({"ports": [{"port": 8443, "protocol": "TCP"}]}));
    assert_eq!(egress[5], json!({"to": [{"podSelector": {}}]}), "a bare name is a Service of this namespace");
    assert_eq!(egress.len(), 6);
}

#[test]
fn knowledge_base_and_agent_objects_are_labelled_owned_and_restricted() {
    let cases: Vec<(&str, &str, &str, Vec<Value>)> = vec![
        ("KnowledgeBase", "handbook", "hearth.dev/knowledge-base", kb_documents(&build_kb(&handbook(), &ctx()))),
        ("KnowledgeBase", "policies", "hearth.dev/knowledge-base", kb_documents(&build_kb(&policies(), &ctx()))),
        ("Agent", "orders", "hearth.dev/agent", agent_documents(&build_agent(&orders()))),
        ("Agent", "helpdesk", "hearth.dev/agent", agent_documents(&build_agent(&helpdesk()))),
    ];
    for (kind, name, resource_label, docs) in cases {
        for doc in docs {
            let meta = &doc["metadata"];
            let object = format!("{} {}", doc["kind"].as_str().unwrap_or("?"), meta["name"].as_str().unwrap_or("?"));
            assert!(meta["name"].as_str().is_some_and(|n| n.starts_with(name)), "{object} is not named after {name}");
            assert_eq!(meta["namespace"], NAMESPACE, "{object}");
            assert_eq!(meta["labels"][resource_label], name, "{object}");
            assert_eq!(meta["labels"]["app.kubernetes.io/managed-by"], "hearth-operator", "{object}");
            let owner = &meta["ownerReferences"][0];
            assert_eq!((owner["kind"].as_str(), owner["name"].as_str()), (Some(kind), Some(name)), "{object}");
            assert_eq!(owner["controller"], true, "{object}");
        }
    }
    let handbook = build_kb(&handbook(), &ctx());
    let pods: Vec<(&str, &PodSpec)> = vec![
        ("ingest job", job_pod(handbook.ingest_job.as_ref().expect("job"))),
        (
            "cron job",
            handbook
                .cron_job
                .as_ref()
                .and_then(|c| c.spec.as_ref())
                .and_then(|s| s.job_template.spec.as_ref())
                .and_then(|j| j.template.spec.as_ref())
                .expect("cron pod"),
        ),
        (
            "qdrant",
            handbook
                .qdrant
                .as_ref()
                .and_then(|q| q.stateful_set.spec.as_ref())
                .and_then(|s| s.template.spec.as_ref())
                .expect("qdrant pod"),
        ),
    ];
    let orders = build_agent(&orders());
    for (name, pod) in pods.into_iter().chain([("agent", deployment_pod(&orders.deployment))]) {
        let violations = restricted_profile_violations(pod);
        assert!(violations.is_empty(), "{name}: {violations:#?}");
        for container in &pod.containers {
            let sc = container.security_context.as_ref().expect("security context");
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}");
        }
        assert_eq!(pod.automount_service_account_token, Some(false), "{name}");
    }
}

// ---------------------------------------------------------------- tenants and isolation

/// Every NetworkPolicy the operator generates (model servers, routers, managed Qdrants,
/// agents) admits other namespaces only by an exact name: monitoring, or the operator's own
/// namespace for routers. Nothing opens to every namespace, no peer is an IP block, and every
/// same-namespace peer is narrowed by labels.
#[test]
fn no_generated_network_policy_admits_another_tenants_namespace() {
    let operator_ns = BuildContext { operator_namespace: Some("hearth-system".into()), ..ctx() };
    let handbook_kb = build_kb(&handbook(), &ctx());
    let policies: Vec<(String, Value)> = vec![
        ("model gemma3-270m".into(), json(&build(&gemma(), &ctx()).network_policy)),
        ("model qwen3-8b".into(), json(&build(&gpu_model(), &keda_ctx()).network_policy)),
        ("router support".into(), json(&build_support(&operator_ns).network_policy)),
        ("qdrant handbook".into(), json(&handbook_kb.qdrant.as_ref().expect("managed qdrant").network_policy)),
        ("agent orders".into(), json(&build_agent(&orders()).network_policy)),
        ("agent helpdesk".into(), json(&build_agent(&helpdesk()).network_policy)),
    ];
    let allowed_namespaces =
        [json!({"kubernetes.io/metadata.name": "monitoring"}), json!({"kubernetes.io/metadata.name": "hearth-system"})];
    for (what, policy) in policies {
        assert_eq!(policy["metadata"]["namespace"], NAMESPACE, "{what}");
        assert!(
            policy["spec"]["policyTypes"].as_array().unwrap().contains(&json!("Ingress")),
            "{what}: ingress must be restricted"
        );
        let ingress = policy["spec"]["ingress"].as_array().unwrap_or_else(|| panic!("{what}: no ingress rules"));
        assert!(!ingress.is_empty(), "{what}");
        for rule in ingress {
            let from =
                rule["from"].as_array().unwrap_or_else(|| panic!("{what}: a rule without `from` admits everyone"));
            for peer in from {
                assert!(peer.get("ipBlock").is_none(), "{what}: {peer}");
                match peer.get("namespaceSelector") {
                    None => {
                        let labels = &peer["podSelector"]["matchLabels"];
                        assert!(
                            labels.as_object().is_some_and(|l| !l.is_empty()),
                            "{what}: same-namespace peer without labels: {peer}"
                        );
                    }
                    Some(selector) => {
                        assert!(selector.get("matchExpressions").is_none(), "{what}: {peer}");
                        assert!(
                            allowed_namespaces.contains(&selector["matchLabels"]),
                            "{what}: admits namespaces {selector}"
                        );
                    }
                }
            }
        }
        // Agents' egress: pods of their own namespace by label, DNS, and named hosts only.
        for rule in policy["spec"]["egress"].as_array().into_iter().flatten() {
            for peer in rule["to"].as_array().into_iter().flatten() {
                if let Some(selector) = peer.get("namespaceSelector") {
                    assert!(
                        selector["matchLabels"].as_object().is_some_and(|l| !l.is_empty()),
                        "{what}: egress to every namespace: {peer}"
                    );
                }
            }
        }
    }
}

#[test]
fn tenants_keys_are_mounted_from_their_secrets_and_never_written_into_objects() {
    let model = gpu_model();
    assert_eq!(model.spec.tenants.len(), 2, "full-featured.yaml's qwen3-8b lists acme and globex");
    let objects = build(&model, &keda_ctx());
    let deployment = objects.deployment.as_ref().expect("deployment");
    let pod = deployment_pod(deployment);
    let volume = pod.volumes.iter().flatten().find(|v| v.name == "tenant-keys").expect("a tenant-keys volume");
    let sources = json(&volume.projected.as_ref().expect("projected").sources);
    assert_eq!(
        sources,
        json!([
            {"secret": {"name": "acme-key", "items": [{"key": "token", "path": "acme-key/token"}], "optional": false}},
            {"secret": {"name": "globex-key", "items": [{"key": "token", "path": "globex-key/token"}], "optional": false}},
        ])
    );
    let server = server_container(deployment);
    let args = server.args.as_deref().expect("args");
    let at = args.iter().position(|a| a == "--secrets-dir").expect("--secrets-dir");
    assert_eq!(args[at + 1], "/etc/hearth/secrets");
    assert!(
        server
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "tenant-keys" && m.mount_path == "/etc/hearth/secrets" && m.read_only == Some(true))
    );
    // The fetch step has no business with the keys.
    let fetch = &pod.init_containers.as_ref().expect("fetch")[0];
    assert!(!fetch.volume_mounts.iter().flatten().any(|m| m.name == "tenant-keys"));
    // A model without tenants gets neither.
    let open = build(&gemma(), &ctx());
    let open_deployment = open.deployment.as_ref().expect("deployment");
    assert!(!deployment_pod(open_deployment).volumes.iter().flatten().any(|v| v.name == "tenant-keys"));
    assert!(!server_container(open_deployment).args.iter().flatten().any(|a| a == "--secrets-dir"));
}
