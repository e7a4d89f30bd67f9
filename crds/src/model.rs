//! `Model`: one LLM or embedding model, where its weights come from, the hardware it needs
//! and how it scales.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::conditions::Condition;
use crate::references::SecretKeyRef;
use crate::scaling::Autoscaling;

/// Pattern every weights or tokenizer location must match: one of the supported schemes.
pub const SOURCE_URI_PATTERN: &str = r"^(hf|https|s3|pvc|file)://[^\s]+$";

/// A served model. The operator turns it into an inference-server Deployment, a Service and
/// an autoscaler; `hearth-server up` serves it in-process.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "hearth.dev",
    version = "v1alpha1",
    kind = "Model",
    namespaced,
    derive = "PartialEq",
    doc = "An LLM or embedding model served by Hearth: where its weights come from, the hardware it needs, how it scales and whom it serves.",
    status = "ModelStatus",
    shortname = "hm",
    shortname = "hmodel",
    category = "hearth",
    printcolumn = r#"{"name":"Task","type":"string","jsonPath":".spec.task"}"#,
    printcolumn = r#"{"name":"Accelerator","type":"string","jsonPath":".spec.hardware.accelerator"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Fits","type":"boolean","jsonPath":".status.footprint.fits","priority":1}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// What the model does: `chat` (text generation) or `embedding` (vectors for retrieval).
    #[serde(default)]
    pub task: ModelTask,
    /// Where the weights come from.
    pub source: ModelSource,
    /// File format of the weights; inferred from the file name when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<WeightsFormat>,
    /// Longest context (prompt plus generated tokens) served, in tokens. Defaults to the
    /// model's own maximum, capped at 8192.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16, max = 1048576))]
    pub context_length: Option<u32>,
    /// What the operator needs to size the model before its weights are downloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sizing: Option<SizingHints>,
    /// The hardware the model runs on.
    #[serde(default)]
    pub hardware: Hardware,
    /// Container resources; when omitted they are computed from the weights and KV cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Replicas when no autoscaling is set.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Scale replicas with load; when set, `replicas` is only the starting count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// Limits of one server replica: batching, queueing and per-request bounds.
    #[serde(default)]
    pub serving: Serving,
    /// Tenants allowed to call the model, each with its own API key and rate limits. When
    /// empty, the model is open to every client the network policy admits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub tenants: Vec<Tenant>,
    /// Price of the model's tokens, used to report what a Cascade saves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<TokenCost>,
}

fn default_replicas() -> i32 {
    1
}

/// What a model is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ModelTask {
    /// Text generation, served as chat and text completions.
    #[default]
    Chat,
    /// Sentence embeddings, served as `/v1/embeddings`.
    Embedding,
}

/// The on-disk format of the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum WeightsFormat {
    /// A single GGUF file (quantized; tokenizer and chat template usually embedded).
    Gguf,
    /// Hugging Face safetensors, with a tokenizer.json and config.json beside it.
    Safetensors,
}

/// Where the weights come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSource {
    /// Location of the weights: `hf://ORG/REPO/FILE`, `https://…`, `s3://BUCKET/KEY`,
    /// `pvc://CLAIM/PATH` or `file:///PATH`. For safetensors, the directory holding
    /// model.safetensors, config.json and tokenizer.json.
    #[schemars(length(min = 8, max = 2048), regex(pattern = r"^(hf|https|s3|pvc|file)://[^\s]+$"))]
    pub uri: String,
    /// Expected SHA-256 of the weights file (64 lowercase hex digits), checked after
    /// download; a mismatch keeps the model from being served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-f0-9]{64}$"))]
    pub sha256: Option<String>,
    /// Location of a tokenizer.json; not needed when the GGUF embeds its tokenizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 8, max = 2048), regex(pattern = r"^(hf|https|s3|pvc|file)://[^\s]+$"))]
    pub tokenizer: Option<String>,
}

/// Facts about the model that let the operator size it before downloading the weights.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SizingHints {
    /// Parameter count, e.g. `270M`, `1.5B`, `70B`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?[KMBT]$"))]
    pub parameters: Option<String>,
    /// Quantization of the weights, which sets the bits per weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Quantization>,
    /// Transformer layers (for the KV-cache size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub layers: Option<u32>,
    /// Key/value attention heads per layer (for the KV-cache size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub kv_heads: Option<u32>,
    /// Dimension of one attention head (for the KV-cache size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub head_dim: Option<u32>,
}

/// Weight quantization schemes, by their GGUF names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Quantization {
    /// 32-bit floats.
    #[serde(rename = "f32")]
    F32,
    /// 16-bit floats.
    #[serde(rename = "f16")]
    F16,
    /// bfloat16.
    #[serde(rename = "bf16")]
    Bf16,
    /// 8-bit blocks.
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 6-bit k-quants.
    #[serde(rename = "q6_k")]
    Q6K,
    /// 5-bit k-quants, medium.
    #[serde(rename = "q5_k_m")]
    Q5KM,
    /// 5-bit blocks.
    #[serde(rename = "q5_0")]
    Q5_0,
    /// 4-bit k-quants, medium.
    #[serde(rename = "q4_k_m")]
    Q4KM,
    /// 4-bit blocks.
    #[serde(rename = "q4_0")]
    Q4_0,
    /// 4-bit blocks with a minimum.
    #[serde(rename = "q4_1")]
    Q4_1,
    /// 3-bit k-quants, medium.
    #[serde(rename = "q3_k_m")]
    Q3KM,
    /// 2-bit k-quants.
    #[serde(rename = "q2_k")]
    Q2K,
}

impl Quantization {
    /// Average bits stored per weight, scales included (llama.cpp's figures).
    pub fn bits_per_weight(self) -> f64 {
        match self {
            Self::F32 => 32.0,
            Self::F16 | Self::Bf16 => 16.0,
            Self::Q8_0 => 8.5,
            Self::Q6K => 6.5625,
            Self::Q5KM => 5.69,
            Self::Q5_0 => 5.5,
            Self::Q4KM => 4.85,
            Self::Q4_0 => 4.5,
            Self::Q4_1 => 5.0,
            Self::Q3KM => 3.91,
            Self::Q2K => 2.96,
        }
    }
}

/// The kind of accelerator a model runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Accelerator {
    /// Any CPU node.
    #[default]
    Cpu,
    /// NVIDIA GPUs through the `nvidia.com/gpu` device plugin (CUDA build of the server).
    Nvidia,
    /// Apple silicon nodes labelled `hearth.dev/accelerator=apple` (Metal where the runtime
    /// offers it, CPU otherwise).
    Apple,
}

/// The hardware a model needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.count) || self.accelerator == 'nvidia'").message("count applies only to accelerator nvidia").field_path(".count"))]
pub struct Hardware {
    /// Accelerator kind: cpu, nvidia or apple.
    #[serde(default)]
    pub accelerator: Accelerator,
    /// GPUs per replica (nvidia only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub count: Option<u32>,
    /// A hardware profile to size against (e.g. `h100-80gb`, `mac-mini-m4-pro-64gb`);
    /// when omitted, every profile of the accelerator kind is considered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub profile: Option<String>,
    /// Extra node labels the pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for tainted (e.g. GPU) nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// The context served when a Model sets no `contextLength`: the model's own maximum, capped
/// at this many tokens (sizing assumes it too).
pub const DEFAULT_CONTEXT_CAP: u32 = 8192;

/// Per-replica serving limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Serving {
    /// Most sequences decoded together in one batch.
    #[serde(default = "default_max_batch_size")]
    #[schemars(range(min = 1, max = 256))]
    pub max_batch_size: u32,
    /// Most requests waiting for a batch slot; beyond it, requests get 429 at once.
    #[serde(default = "default_max_queue")]
    #[schemars(range(min = 0, max = 65536))]
    pub max_queue: u32,
    /// Largest `max_tokens` a request may ask for, and the default when it asks none.
    #[serde(default = "default_max_tokens")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_tokens: u32,
    /// Longest a request may take, end to end, in seconds.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: u32,
}

impl Default for Serving {
    fn default() -> Self {
        Self {
            max_batch_size: default_max_batch_size(),
            max_queue: default_max_queue(),
            max_tokens: default_max_tokens(),
            timeout_seconds: default_timeout_seconds(),
        }
    }
}

fn default_max_batch_size() -> u32 {
    16
}
fn default_max_queue() -> u32 {
    256
}
fn default_max_tokens() -> u32 {
    2048
}
fn default_timeout_seconds() -> u32 {
    120
}

/// A client of a model with its own key and limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tenant {
    /// Tenant name, unique within the model; used in metrics and logs.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// The Secret key holding the tenant's API key (sent as `Authorization: Bearer KEY`).
    pub api_key_secret_ref: SecretKeyRef,
    /// Requests per minute the tenant may make; unlimited when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub requests_per_minute: Option<u32>,
    /// Prompt plus generated tokens per minute the tenant may use; unlimited when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000000))]
    pub tokens_per_minute: Option<u64>,
}

/// Price of a model's tokens in any currency unit, per million tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenCost {
    /// Price of a million prompt tokens.
    #[schemars(range(min = 0.0, max = 1000000.0))]
    pub input_per_million_tokens: f64,
    /// Price of a million generated tokens.
    #[schemars(range(min = 0.0, max = 1000000.0))]
    pub output_per_million_tokens: f64,
}

/// Coarse lifecycle phase of a Model, for people; programs should read the conditions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ModelPhase {
    /// Accepted, nothing running yet.
    #[default]
    Pending,
    /// Weights are being downloaded.
    Downloading,
    /// Replicas are starting.
    Starting,
    /// At least one replica serves requests.
    Serving,
    /// The model cannot be served as specified (see the Stalled condition).
    Failed,
}

/// What the operator observed about a Model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling, Stalled, plus Downloaded, Available and Scaled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Coarse lifecycle phase.
    #[serde(default)]
    pub phase: ModelPhase,
    /// In-cluster URL of the OpenAI-compatible API, e.g. `http://gemma-server.ai.svc:8080/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Replicas that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Replicas ready to serve.
    #[serde(default)]
    pub ready_replicas: i32,
    /// What the model needs and where it fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footprint: Option<Footprint>,
}

/// The sizing of a model: weights, KV cache, memory and expected speed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Footprint {
    /// Bytes of weights loaded into memory.
    pub weights_bytes: u64,
    /// Bytes of KV cache per token of context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_bytes_per_token: Option<u64>,
    /// Memory requested per replica, as a Kubernetes quantity.
    pub memory_request: String,
    /// Whether some hardware profile can hold the model.
    pub fits: bool,
    /// The hardware profile the estimate is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Decode speed the memory bandwidth allows, in tokens per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_decode_tokens_per_second: Option<f64>,
}
