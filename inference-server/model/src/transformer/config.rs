//! Model shape and per-architecture settings, read from a GGUF file's metadata.

use candle_core::quantized::gguf_file::{Content, Value};

use super::ModelError;

/// Architectures (`general.architecture`) this backend runs.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "gemma3"];

/// Gemma 3 alternates five sliding-window layers with one global layer (llama.cpp hardcodes it).
const GEMMA3_SLIDING_WINDOW_PATTERN: usize = 6;
/// Gemma 3's local (sliding-window) layers use this rope base whatever the global one is.
const GEMMA3_LOCAL_ROPE_BASE: f64 = 10_000.0;

/// The shape of a loaded model, as the engine and the sizing code need it.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// `general.architecture`, e.g. `llama`, `qwen2`, `qwen3`, `gemma3`.
    pub architecture: String,
    /// Rows of the token embedding (and columns of the logits).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Number of transformer blocks.
    pub layers: usize,
    /// Query heads per layer.
    pub heads: usize,
    /// Key/value heads per layer (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Width of one attention head (keys, queries and values).
    pub head_dim: usize,
    /// Width of the MLP's hidden layer.
    pub feed_forward_size: usize,
    /// Longest sequence (prompt plus generated tokens) the model accepts.
    pub context_length: usize,
    /// Epsilon of every RMS norm.
    pub rms_norm_eps: f64,
    /// Rope base frequency of the global-attention layers.
    pub rope_base: f64,
    /// Sliding-window size of the local-attention layers; `None` when every layer is global.
    pub sliding_window: Option<usize>,
    /// Per layer, whether it attends over the sliding window (local) rather than the whole
    /// sequence (global); all false without a sliding window.
    pub local_layers: Vec<bool>,
    /// Factor applied to query·key before the softmax.
    pub attention_scale: f64,
    /// When set, logits are soft-capped to `cap * tanh(logits / cap)`.
    pub final_logit_softcap: Option<f64>,
}

impl ModelConfig {
    /// Bytes the key/value cache takes per token of one sequence (f32 keys and values, all
    /// layers), as allocated by [`super::KvCache`].
    pub fn kv_bytes_per_token(&self) -> usize {
        self.layers * self.kv_heads * self.head_dim * 2 * std::mem::size_of::<f32>()
    }

    /// Whether layer `layer` (0-based) attends over a sliding window rather than the whole cache.
    pub fn is_local_layer(&self, layer: usize) -> bool {
        self.sliding_window.is_some() && self.local_layers.get(layer).copied().unwrap_or(false)
    }
}

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RopeStyle {
    /// Pairs (2i, 2i+1): llama.cpp's "normal" rope (llama, mistral; GGUF q/k are permuted for it).
    Interleaved,
    /// Pairs (i, i + d/2): GPT-NeoX rope (qwen2, qwen3, gemma3).
    Neox,
}

/// The MLP's gate activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Activation {
    Silu,
    /// GELU, tanh approximation (Gemma).
    GeluTanh,
}

/// What distinguishes one supported architecture from another; everything else is shared.
#[derive(Clone, Debug)]
pub(crate) struct ArchSettings {
    pub rope_style: RopeStyle,
    pub activation: Activation,
    /// q/k/v projections carry biases (qwen2).
    pub qkv_bias: bool,
    /// Per-head RMS norms on queries and keys before rope (qwen3, gemma3).
    pub qk_norm: bool,
    /// RMS norms on the attention and MLP outputs before the residual add (gemma3).
    pub post_norms: bool,
    /// Token embeddings are multiplied by sqrt(hidden_size) (gemma).
    pub scale_embeddings: bool,
    /// Rope base of local (sliding-window) layers.
    pub local_rope_base: f64,
    /// Linear rope scaling (positions divided by this) on global layers.
    pub rope_linear_factor: f64,
}

/// Typed access to `{arch}.*` metadata keys with errors that name the key.
struct Metadata<'a> {
    content: &'a Content,
    arch: &'a str,
}

impl Metadata<'_> {
    fn get(&self, key: &str) -> Option<(String, &Value)> {
        let full = format!("{}.{key}", self.arch);
        self.content.metadata.get(&full).map(|v| (full, v))
    }

    fn usize(&self, key: &str) -> Result<usize, ModelError> {
        match self.get(key) {
            Some((full, value)) => value_to_usize(&full, value),
            None => Err(ModelError::MissingMetadata(format!("{}.{key}", self.arch))),
        }
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        self.get(key).map(|(full, value)| value_to_usize(&full, value)).transpose()
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, ModelError> {
        self.get(key).map(|(full, value)| value_to_f64(&full, value)).transpose()
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some((_, Value::String(s))) => Ok(Some(s.clone())),
            Some((full, other)) => Err(invalid(&full, "a string", other)),
        }
    }
}

fn invalid(key: &str, expected: &'static str, found: &Value) -> ModelError {
    ModelError::InvalidMetadata { key: key.to_string(), expected, found: format!("{found:?}") }
}

fn value_to_usize(key: &str, value: &Value) -> Result<usize, ModelError> {
    let n: Option<u64> = match *value {
        Value::U8(v) => Some(v.into()),
        Value::U16(v) => Some(v.into()),
        Value::U32(v) => Some(v.into()),
        Value::U64(v) => Some(v),
        Value::I8(v) => u64::try_from(v).ok(),
        Value::I16(v) => u64::try_from(v).ok(),
        Value::I32(v) => u64::try_from(v).ok(),
        Value::I64(v) => u64::try_from(v).ok(),
        _ => None,
    };
    n.and_then(|n| usize::try_from(n).ok()).ok_or_else(|| invalid(key, "a non-negative integer", value))
}

fn value_to_f64(key: &str, value: &Value) -> Result<f64, ModelError> {
    match *value {
        Value::F32(v) => Ok(v.into()),
        Value::F64(v) => Ok(v),
        Value::U32(v) => Ok(v.into()),
        Value::I32(v) => Ok(v.into()),
        _ => Err(invalid(key, "a number", value)),
    }
}

/// Reads `general.architecture` and the model's shape from GGUF metadata. `vocab_size` is
/// `{arch}.vocab_size` or 0 here; the loader sets it from the embedding tensor, which decides.
pub(crate) fn read_config(content: &Content) -> Result<(ModelConfig, ArchSettings), ModelError> {
    let arch = match content.metadata.get("general.architecture") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(invalid("general.architecture", "a string", other)),
        None => return Err(ModelError::MissingMetadata("general.architecture".into())),
    };
    let settings = match arch.as_str() {
        "llama" => ArchSettings {
            rope_style: RopeStyle::Interleaved,
            activation: Activation::Silu,
            qkv_bias: false,
            qk_norm: false,
            post_norms: false,
            scale_embeddings: false,
            local_rope_base: 0.0,
            rope_linear_factor: 1.0,
        },
        "qwen2" => ArchSettings {
            rope_style: RopeStyle::Neox,
            activation: Activation::Silu,
            qkv_bias: true,
            qk_norm: false,
            post_norms: false,
            scale_embeddings: false,
            local_rope_base: 0.0,
            rope_linear_factor: 1.0,
        },
        "qwen3" => ArchSettings {
            rope_style: RopeStyle::Neox,
            activation: Activation::Silu,
            qkv_bias: false,
            qk_norm: true,
            post_norms: false,
            scale_embeddings: false,
            local_rope_base: 0.0,
            rope_linear_factor: 1.0,
        },
        "gemma3" => ArchSettings {
            rope_style: RopeStyle::Neox,
            activation: Activation::GeluTanh,
            qkv_bias: false,
            qk_norm: true,
            post_norms: true,
            scale_embeddings: true,
            local_rope_base: GEMMA3_LOCAL_ROPE_BASE,
            rope_linear_factor: 1.0,
        },
        _ => return Err(ModelError::UnsupportedArchitecture(arch)),
    };
    let md = Metadata { content, arch: &arch };
    let mut settings = settings;

    let hidden_size = md.usize("embedding_length")?;
    let layers = md.usize("block_count")?;
    let heads = md.usize("attention.head_count")?;
    let kv_heads = md.opt_usize("attention.head_count_kv")?.unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(ModelError::Unsupported(format!(
            "{heads} query heads cannot be grouped over {kv_heads} key/value heads"
        )));
    }
    let head_dim = match md.opt_usize("attention.key_length")? {
        Some(d) => d,
        None => hidden_size / heads,
    };
    if let Some(v) = md.opt_usize("attention.value_length")?
        && v != head_dim
    {
        return Err(ModelError::Unsupported(format!(
            "value heads of width {v} differ from key heads of width {head_dim}"
        )));
    }
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(ModelError::Unsupported(format!(
            "head width {head_dim} must be even and non-zero for rotary embeddings"
        )));
    }
    if let Some(rope_dim) = md.opt_usize("rope.dimension_count")?
        && rope_dim != head_dim
    {
        return Err(ModelError::Unsupported(format!(
            "partial rotary embeddings ({rope_dim} of {head_dim} head dimensions) are not supported"
        )));
    }
    let feed_forward_size = md.usize("feed_forward_length")?;
    let mut context_length = md.usize("context_length")?;
    let rms_norm_eps = md
        .opt_f64("attention.layer_norm_rms_epsilon")?
        .ok_or_else(|| ModelError::MissingMetadata(format!("{arch}.attention.layer_norm_rms_epsilon")))?;
    let rope_base = md.opt_f64("rope.freq_base")?.unwrap_or(10_000.0);

    // Linear scaling is exact; other schemes (yarn, ...) only matter beyond the context the
    // model was trained on, so the usable context is clamped there instead.
    let scaling_type = md.opt_string("rope.scaling.type")?;
    let scaling_factor = md.opt_f64("rope.scaling.factor")?.filter(|f| *f > 0.0);
    match (scaling_type.as_deref(), scaling_factor) {
        (None | Some("none"), _) | (_, None) => {}
        (Some("linear"), Some(factor)) => settings.rope_linear_factor = factor,
        (Some(_), Some(_)) => {
            if let Some(original) = md.opt_usize("rope.scaling.original_context_length")? {
                context_length = context_length.min(original);
            }
        }
    }

    let (sliding_window, local_layers) = if arch == "gemma3" {
        let window = md.usize("attention.sliding_window")?;
        let local_layers = match md.get("attention.sliding_window_pattern") {
            None => (0..layers).map(|l| (l + 1) % GEMMA3_SLIDING_WINDOW_PATTERN != 0).collect(),
            Some((_, Value::Array(flags))) if flags.len() == layers => {
                flags.iter().map(|f| matches!(f, Value::Bool(true))).collect()
            }
            Some((full, value)) => match value_to_usize(&full, value) {
                Ok(every) if every > 0 => (0..layers).map(|l| (l + 1) % every != 0).collect(),
                _ => {
                    return Err(invalid(&full, "a positive integer or one flag per layer", value));
                }
            },
        };
        // llama.cpp's key; candle's converter wrote `rope.local_freq_base`.
        if let Some(local_base) = md.opt_f64("rope.freq_base_swa")?.or(md.opt_f64("rope.local_freq_base")?) {
            settings.local_rope_base = local_base;
        }
        (Some(window).filter(|w| *w > 0), local_layers)
    } else {
        (None, vec![false; layers])
    };

    // Gemma 3 scales queries by 1/sqrt(query_pre_attn_scalar), which GGUF does not carry:
    // like llama.cpp, use the head width except for the 27B model (62 layers) whose scalar is
    // hidden_size / heads.
    let attention_scale = if arch == "gemma3" && layers == 62 {
        1.0 / ((hidden_size / heads) as f64).sqrt()
    } else {
        1.0 / (head_dim as f64).sqrt()
    };
    let vocab_size = md.opt_usize("vocab_size")?.unwrap_or(0);
    let final_logit_softcap = md.opt_f64("final_logit_softcapping")?.filter(|c| *c > 0.0);

    let config = ModelConfig {
        architecture: arch.clone(),
        vocab_size,
        hidden_size,
        layers,
        heads,
        kv_heads,
        head_dim,
        feed_forward_size,
        context_length,
        rms_norm_eps,
        rope_base,
        sliding_window,
        local_layers,
        attention_scale,
        final_logit_softcap,
    };
    Ok((config, settings))
}
