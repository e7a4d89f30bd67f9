//! Hearth's quantized decoder-only transformer over GGUF weights (candle ops).
//!
//! One implementation covers the supported architectures (`llama`, `qwen2`, `qwen3`, `gemma3`);
//! they differ only in a few per-architecture settings (rope style, activation, biases, q/k
//! norms, sandwich norms, embedding scale, sliding window). Weights are shared and
//! read-only, so one [`QuantizedTransformer`] serves many sequences, each with its own
//! [`KvCache`]; [`QuantizedTransformer::forward_batch`] runs one decode step for many sequences
//! with the projections and MLPs batched (continuous batching).
//!
//! Numerics follow llama.cpp: matmuls quantize activations to 8 bits per block like ggml does,
//! attention and norms run in f32. Long prompts should be fed in chunks (a few hundred tokens):
//! one chunk's attention scores take `heads * chunk * context` floats.

mod cache;
mod config;
#[cfg(test)]
mod tests;
mod transcode;

use std::io::{Read, Seek};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, gguf_file};
use candle_core::{DType, Device, Module, Tensor};
use hearth_kernels::attention::{self, Heads, Sequence};
use hearth_kernels::gated::Gate;
use hearth_kernels::{Isa, QuantizedMatrix, WeightType};

use super::CandlePool;

pub use cache::KvCache;
use cache::LayerCache;
use config::{Activation, ArchSettings, RopeStyle};
pub use config::{ModelConfig, SUPPORTED_ARCHITECTURES};

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// `general.architecture` names an architecture this backend does not implement.
    #[error("unsupported model architecture `{0}`: expected one of llama, qwen2, qwen3, gemma3")]
    UnsupportedArchitecture(String),
    /// A required GGUF metadata key is absent.
    #[error("GGUF metadata key `{0}` is missing")]
    MissingMetadata(String),
    /// A GGUF metadata key holds a value of the wrong type or range.
    #[error("GGUF metadata key `{key}` should be {expected}, found {found}")]
    InvalidMetadata {
        /// The full metadata key.
        key: String,
        /// What the key should hold.
        expected: &'static str,
        /// What it holds.
        found: String,
    },
    /// A tensor the architecture needs is absent from the file.
    #[error("GGUF tensor `{0}` is missing")]
    MissingTensor(String),
    /// A tensor's shape disagrees with the shape the metadata implies.
    #[error("GGUF tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        /// The tensor's name.
        name: String,
        /// The shape implied by the metadata (rows, columns).
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// The file uses a feature of a supported architecture that this backend does not.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A token id at or beyond the vocabulary size.
    #[error("token id {token} is out of range for a vocabulary of {vocab_size}")]
    TokenOutOfRange {
        /// The offending id.
        token: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// Running the tokens would take a sequence past the model's context length.
    #[error("the sequence would reach {needed} tokens, beyond the context length of {limit}")]
    ContextOverflow {
        /// Positions the sequence would occupy.
        needed: usize,
        /// The model's context length.
        limit: usize,
    },
    /// An environment setting holds a value this backend does not know.
    #[error("{name} should be {expected}, found `{found}`")]
    Setting {
        /// The variable.
        name: &'static str,
        /// What it may hold.
        expected: &'static str,
        /// What it holds.
        found: String,
    },
    /// A weight could not be laid out for Hearth's CPU kernels (a shape they cannot take).
    #[error("CPU kernel: {0}")]
    Kernel(String),
    /// The caller passed inconsistent arguments (no tokens, a cache of another model, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// An error from candle (I/O while reading tensors, a failed kernel, ...).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// RMS norm with a learned scale (GGUF stores Gemma's `1 + w` already folded in).
#[derive(Debug)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// A weight matrix: Hearth's own CPU kernels over the GGUF blocks (`hearth-kernels`), or candle's
/// `QMatMul` plus the per-block offsets of a re-encoded `d * q + m` type (see [`transcode`]).
#[derive(Debug)]
enum Linear {
    Kernel(Arc<QuantizedMatrix>),
    Candle {
        weight: QMatMul,
        /// `[in / 32, out]`, added as `block_sums(x) @ offsets`.
        block_offsets: Option<Tensor>,
    },
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Linear::Kernel(_) => {
                let [y] = Linear::forward_group([self], x)?;
                Ok(y)
            }
            Linear::Candle { weight, block_offsets } => {
                let y = weight.forward(x)?;
                let Some(offsets) = block_offsets else {
                    return Ok(y);
                };
                let (rows, k) = x.dims2()?;
                let sums = x.reshape((rows, k / transcode::BLOCK, transcode::BLOCK))?.sum(2)?;
                y + sums.matmul(offsets)?
            }
        }
    }
}

impl Linear {
    /// `x · Wᵀ` for several matrices of the same input. When all are Hearth's, one call of
    /// its kernels: the input is quantized once and the matrices' tasks run as one parallel
    /// pass (decode does one such pass for q, k and v and one for gate and up, instead of five).
    fn forward_group<const N: usize>(ws: [&Linear; N], x: &Tensor) -> candle_core::Result<[Tensor; N]> {
        let mats: Option<Vec<&QuantizedMatrix>> = ws
            .iter()
            .map(|w| match w {
                Linear::Kernel(m) => Some(&**m),
                Linear::Candle { .. } => None,
            })
            .collect();
        let ys: Vec<Tensor> = match mats {
            Some(mats) => {
                let rows = x.dims2()?.0;
                let input = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let mut outs: Vec<Vec<f32>> = mats.iter().map(|w| vec![0.0f32; rows * w.rows()]).collect();
                let mut views: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
                QuantizedMatrix::matmul_group_on(&CandlePool, Isa::detect(), &input, rows, &mats, &mut views)
                    .map_err(candle_core::Error::wrap)?;
                outs.into_iter()
                    .zip(&mats)
                    .map(|(out, w)| Tensor::from_vec(out, (rows, w.rows()), x.device()))
                    .collect::<candle_core::Result<_>>()?
            }
            None => ws.iter().map(|w| w.forward(x)).collect::<candle_core::Result<_>>()?,
        };
        ys.try_into().map_err(|_| candle_core::Error::Msg("matmul group: wrong number of outputs".into()))
    }
}

/// The token embedding table: candle's quantized lookup, or rows of the kernel matrix that the
/// tied output layer multiplies with (one copy of the weights for both).
#[derive(Debug)]
enum Embedding {
    Candle(Arc<QTensor>),
    Kernel(Arc<QuantizedMatrix>),
}

impl Embedding {
    fn lookup(&self, tokens: &[u32], device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Embedding::Candle(table) => table.embedding(&Tensor::new(tokens, device)?),
            Embedding::Kernel(table) => {
                let cols = table.cols();
                let mut out = vec![0.0f32; tokens.len() * cols];
                for (&token, row) in tokens.iter().zip(out.chunks_exact_mut(cols)) {
                    table.dequantize_row(token as usize, row).map_err(candle_core::Error::wrap)?;
                }
                Tensor::from_vec(out, (tokens.len(), cols), device)
            }
        }
    }
}

/// Which CPU matmul a quantized weight type gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuMatmul {
    /// What measured fastest here (`kernels/benches/matmul.rs`): where the CPU has AVX-512
    /// VNNI, Hearth's 16-row tiles for Q8_0, Q5_0, Q4_K and Q6_K and its row kernels for Q4_0
    /// and Q4_1; elsewhere Hearth's row kernels for Q4_0, Q4_1, Q8_0 and Q5_0 re-encoded to
    /// Q8_0 (exact; Hearth's Q5_0 row kernel is slower for one row) and candle's kernels for the
    /// k-quants (faster than Hearth's row-at-a-time ones).
    Auto,
    /// Hearth's kernels for every type they cover, each as stored (Q5_0, Q4_K and Q6_K too).
    Hearth,
    /// candle's `QMatMul` for everything (with Q4_1/Q5_0/Q5_1 re-encoded), the peer in benchmarks.
    Candle,
}

impl CpuMatmul {
    /// Reads `HEARTH_CPU_MATMUL` (`auto`, `hearth` or `candle`; unset means `auto`).
    pub fn from_env() -> Result<Self, ModelError> {
        Self::parse(std::env::var("HEARTH_CPU_MATMUL").ok().as_deref())
    }

    /// Parses a `HEARTH_CPU_MATMUL` value (`None` when unset).
    pub fn parse(value: Option<&str>) -> Result<Self, ModelError> {
        match value {
            None | Some("") | Some("auto") => Ok(Self::Auto),
            Some("hearth") => Ok(Self::Hearth),
            Some("candle") => Ok(Self::Candle),
            Some(other) => Err(ModelError::Setting {
                name: "HEARTH_CPU_MATMUL",
                expected: "auto, hearth or candle",
                found: other.to_string(),
            }),
        }
    }

    /// How a weight stored as `dtype` with `rows` rows goes to Hearth's kernels under this
    /// choice: the kernel type, and whether the blocks are first re-encoded Q5_0 → Q8_0.
    /// `None`: candle's.
    fn kernel_type(self, dtype: GgmlDType, rows: usize) -> Option<(WeightType, bool)> {
        let ty = match dtype {
            GgmlDType::Q4_0 => WeightType::Q4_0,
            GgmlDType::Q4_1 => WeightType::Q4_1,
            GgmlDType::Q5_0 => WeightType::Q5_0,
            GgmlDType::Q8_0 => WeightType::Q8_0,
            GgmlDType::Q4K => WeightType::Q4K,
            GgmlDType::Q6K => WeightType::Q6K,
            _ => return None,
        };
        match (self, ty) {
            (Self::Candle, _) => None,
            (Self::Auto, WeightType::Q4K | WeightType::Q6K) if !QuantizedMatrix::tiles_pay(ty, rows) => None,
            // Q5_0 tiles as stored where VNNI takes them; elsewhere widened to Q8_0 (exact),
            // whose row kernel beats Hearth's Q5_0 one for a single row.
            (Self::Auto, WeightType::Q5_0) if QuantizedMatrix::tiles_pay(ty, rows) => Some((ty, false)),
            (Self::Auto, WeightType::Q5_0) => Some((WeightType::Q8_0, true)),
            _ => Some((ty, false)),
        }
    }
}

/// One transformer block's weights.
#[derive(Debug)]
struct Layer {
    attn_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_bias: Option<Tensor>,
    k_bias: Option<Tensor>,
    v_bias: Option<Tensor>,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    post_attn_norm: Option<RmsNorm>,
    ffn_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    post_ffn_norm: Option<RmsNorm>,
    /// Attends over the sliding window only.
    local: bool,
}

/// Rotary embedding frequencies; cos/sin are computed per call for the positions at hand.
#[derive(Debug)]
struct Rope {
    inv_freq: Vec<f64>,
}

impl Rope {
    fn new(base: f64, head_dim: usize, linear_factor: f64, freq_factors: Option<&[f32]>) -> Self {
        let inv_freq = (0..head_dim / 2)
            .map(|i| {
                let factor = freq_factors.and_then(|f| f.get(i)).map_or(1.0, |&f| f64::from(f));
                1.0 / (base.powf(2.0 * i as f64 / head_dim as f64) * linear_factor * factor)
            })
            .collect();
        Self { inv_freq }
    }

    /// cos and sin tables `[positions.len(), head_dim / 2]`.
    fn cos_sin(&self, positions: &[usize], device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
                let (s, c) = (p as f64 * f).sin_cos();
                cos.push(c as f32);
                sin.push(s as f32);
            }
        }
        Ok((
            Tensor::from_vec(cos, (positions.len(), half), device)?,
            Tensor::from_vec(sin, (positions.len(), half), device)?,
        ))
    }
}

/// A quantized decoder-only transformer loaded from GGUF. Immutable once loaded (`Send + Sync`):
/// all per-sequence state lives in [`KvCache`]s.
pub struct QuantizedTransformer {
    config: ModelConfig,
    settings: ArchSettings,
    device: Device,
    embedding: Embedding,
    layers: Vec<Layer>,
    output_norm: RmsNorm,
    lm_head: Linear,
    global_rope: Rope,
    local_rope: Rope,
}

impl std::fmt::Debug for QuantizedTransformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantizedTransformer")
            .field("config", &self.config)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// One sequence's share of a forward pass: its cache and how many of the tokens are its.
struct Segment<'a> {
    cache: &'a mut KvCache,
    tokens: usize,
}

/// Which positions' logits a forward pass returns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Logits {
    /// Every position, in order.
    All,
    /// The last position of each segment.
    LastOfEach,
}

/// Per-forward inputs shared by every layer.
struct StepInputs {
    global_cos_sin: (Tensor, Tensor),
    local_cos_sin: Option<(Tensor, Tensor)>,
    /// Per segment: additive causal masks `[tokens, keys]` for global and local layers, when the
    /// segment has more than one token.
    masks: Vec<[Option<Tensor>; 2]>,
}

/// How weight matrices are kept in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WeightPrecision {
    /// As stored (re-encoded on the CPU where candle lacks a SIMD kernel); activations are
    /// quantized to 8 bits inside each matmul, like llama.cpp.
    Quantized,
    /// Dequantized to f32: exact products, 4 bytes per weight. For tests that need results
    /// free of activation-quantization noise.
    #[cfg_attr(not(test), allow(dead_code))]
    F32,
}

/// Reads tensors by name, checking presence and shape before candle sees them.
struct Loader<'a, R> {
    content: &'a gguf_file::Content,
    reader: &'a mut R,
    device: &'a Device,
    precision: WeightPrecision,
    cpu_matmul: CpuMatmul,
}

impl<R: Read + Seek> Loader<'_, R> {
    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn qtensor(&mut self, name: &str, shape: &[usize]) -> Result<QTensor, ModelError> {
        let info = self.content.tensor_infos.get(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        if info.shape.dims() != shape {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: info.shape.dims().to_vec(),
            });
        }
        Ok(self.content.tensor(self.reader, name, self.device)?)
    }

    /// A weight matrix `[out, in]` (GGUF stores it as `[in, out]`), re-encoded on the CPU
    /// when candle has no SIMD kernel for its type.
    fn matmul(&mut self, name: &str, out: usize, inp: usize) -> Result<Linear, ModelError> {
        let weight = self.qtensor(name, &[out, inp])?;
        self.linear(weight)
    }

    fn linear(&self, weight: QTensor) -> Result<Linear, ModelError> {
        if self.precision == WeightPrecision::F32 {
            let weight = QMatMul::Tensor(weight.dequantize(self.device)?);
            return Ok(Linear::Candle { weight, block_offsets: None });
        }
        if let Some(matrix) = self.kernel_matrix(&weight)? {
            return Ok(Linear::Kernel(Arc::new(matrix)));
        }
        let (weight, block_offsets) =
            if self.device.is_cpu() { transcode::for_cpu_matmul(weight)? } else { (weight, None) };
        Ok(Linear::Candle { weight: QMatMul::from_qtensor(weight)?, block_offsets })
    }

    /// The weight in Hearth's kernel layout, when it is on the CPU, quantized as stored, and of
    /// a type the configured [`CpuMatmul`] gives to Hearth's kernels.
    fn kernel_matrix(&self, weight: &QTensor) -> Result<Option<QuantizedMatrix>, ModelError> {
        if self.precision != WeightPrecision::Quantized || !self.device.is_cpu() {
            return Ok(None);
        }
        let (rows, cols) = weight.shape().dims2()?;
        let Some((ty, widen)) = self.cpu_matmul.kernel_type(weight.dtype(), rows) else {
            return Ok(None);
        };
        // Q8_0, Q4_K and Q6_K in 16-row tiles where the CPU has AVX-512 VNNI (several times
        // faster; about the same bytes), built from the tensor's bytes without another copy.
        let data = weight.data()?;
        let data = if widen { std::borrow::Cow::Owned(transcode::q5_0_to_q8_0(&data)?) } else { data };
        let matrix =
            QuantizedMatrix::new_fastest(ty, rows, cols, data).map_err(|e| ModelError::Kernel(e.to_string()))?;
        Ok(Some(matrix))
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor, ModelError> {
        Ok(self.qtensor(name, &[len])?.dequantize(self.device)?)
    }

    fn norm(&mut self, name: &str, len: usize, eps: f64) -> Result<RmsNorm, ModelError> {
        Ok(RmsNorm { weight: self.vector(name, len)?, eps: eps as f32 })
    }
}

impl QuantizedTransformer {
    /// Loads a model from a parsed GGUF header and the file it came from, placing the weights
    /// on `device`. Fails with a [`ModelError`] naming the architecture, key or tensor at fault.
    pub fn from_gguf<R: Read + Seek>(
        content: gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self, ModelError> {
        Self::load(content, reader, device, WeightPrecision::Quantized, CpuMatmul::from_env()?)
    }

    fn load<R: Read + Seek>(
        content: gguf_file::Content,
        reader: &mut R,
        device: &Device,
        precision: WeightPrecision,
        cpu_matmul: CpuMatmul,
    ) -> Result<Self, ModelError> {
        let (mut config, settings) = config::read_config(&content)?;
        let mut ld = Loader { content: &content, reader, device, precision, cpu_matmul };
        let (hidden, hd) = (config.hidden_size, config.head_dim);
        let (q_dim, kv_dim) = (config.heads * hd, config.kv_heads * hd);
        let eps = config.rms_norm_eps;

        let embd_name = "token_embd.weight";
        let vocab = match ld.content.tensor_infos.get(embd_name) {
            None => return Err(ModelError::MissingTensor(embd_name.into())),
            Some(info) => match info.shape.dims() {
                [rows, cols] if *cols == hidden => *rows,
                dims => {
                    return Err(ModelError::TensorShape {
                        name: embd_name.into(),
                        expected: vec![config.vocab_size, hidden],
                        found: dims.to_vec(),
                    });
                }
            },
        };
        config.vocab_size = vocab;
        let table = ld.qtensor(embd_name, &[vocab, hidden])?;
        let (embedding, lm_head) = if ld.has("output.weight") {
            let lm_head = ld.matmul("output.weight", vocab, hidden)?;
            (Embedding::Candle(Arc::new(table)), lm_head)
        } else if let Some(matrix) = ld.kernel_matrix(&table)? {
            // Tied output layer on Hearth's kernels: one copy serves the lookup and the matmul
            // (candle's copy goes now, before the layers load).
            drop(table);
            let matrix = Arc::new(matrix);
            (Embedding::Kernel(matrix.clone()), Linear::Kernel(matrix))
        } else if precision == WeightPrecision::F32
            || (ld.device.is_cpu() && transcode::needs_transcoding(table.dtype()))
        {
            let copy = ld.qtensor(embd_name, &[vocab, hidden])?;
            (Embedding::Candle(Arc::new(table)), ld.linear(copy)?)
        } else {
            let table = Arc::new(table);
            let lm_head = Linear::Candle { weight: QMatMul::from_arc(table.clone())?, block_offsets: None };
            (Embedding::Candle(table), lm_head)
        };
        let output_norm = ld.norm("output_norm.weight", hidden, eps)?;
        let freq_factors = if ld.has("rope_freqs.weight") {
            Some(ld.vector("rope_freqs.weight", hd / 2)?.to_vec1::<f32>()?)
        } else {
            None
        };

        let mut layers = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let name = |s: &str| format!("blk.{l}.{s}");
            let opt_norm = |ld: &mut Loader<'_, R>, s: &str, len: usize, on: bool| {
                on.then(|| ld.norm(&name(s), len, eps)).transpose()
            };
            let opt_bias = |ld: &mut Loader<'_, R>, s: &str, len: usize| {
                settings.qkv_bias.then(|| ld.vector(&name(s), len)).transpose()
            };
            layers.push(Layer {
                attn_norm: ld.norm(&name("attn_norm.weight"), hidden, eps)?,
                q: ld.matmul(&name("attn_q.weight"), q_dim, hidden)?,
                k: ld.matmul(&name("attn_k.weight"), kv_dim, hidden)?,
                v: ld.matmul(&name("attn_v.weight"), kv_dim, hidden)?,
                o: ld.matmul(&name("attn_output.weight"), hidden, q_dim)?,
                q_bias: opt_bias(&mut ld, "attn_q.bias", q_dim)?,
                k_bias: opt_bias(&mut ld, "attn_k.bias", kv_dim)?,
                v_bias: opt_bias(&mut ld, "attn_v.bias", kv_dim)?,
                q_norm: opt_norm(&mut ld, "attn_q_norm.weight", hd, settings.qk_norm)?,
                k_norm: opt_norm(&mut ld, "attn_k_norm.weight", hd, settings.qk_norm)?,
                post_attn_norm: opt_norm(&mut ld, "post_attention_norm.weight", hidden, settings.post_norms)?,
                ffn_norm: ld.norm(&name("ffn_norm.weight"), hidden, eps)?,
                gate: ld.matmul(&name("ffn_gate.weight"), config.feed_forward_size, hidden)?,
                up: ld.matmul(&name("ffn_up.weight"), config.feed_forward_size, hidden)?,
                down: ld.matmul(&name("ffn_down.weight"), hidden, config.feed_forward_size)?,
                post_ffn_norm: opt_norm(&mut ld, "post_ffw_norm.weight", hidden, settings.post_norms)?,
                local: config.is_local_layer(l),
            });
        }

        let global_rope = Rope::new(config.rope_base, hd, settings.rope_linear_factor, freq_factors.as_deref());
        let local_rope = Rope::new(settings.local_rope_base, hd, 1.0, None);
        Ok(Self {
            config,
            settings,
            device: device.clone(),
            embedding,
            layers,
            output_norm,
            lm_head,
            global_rope,
            local_rope,
        })
    }

    /// The model's shape, as read from the file.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device holding the weights (and the caches this model makes).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty cache for a new sequence; it allocates on first use and grows as needed.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(
            self.config.layers,
            self.config.kv_heads,
            self.config.head_dim,
            self.config.context_length,
            &self.device,
        )
    }

    /// Runs `tokens` (a prompt chunk, or one decode token) for one sequence at positions
    /// `cache.len()..`, appending to its cache. Returns f32 logits on the CPU: shape `[vocab]`
    /// for the last position, or `[tokens.len(), vocab]` when `all_logits` is true.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, all_logits: bool) -> Result<Tensor, ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::InvalidInput("forward needs at least one token".into()));
        }
        let mut segments = [Segment { cache, tokens: tokens.len() }];
        if all_logits {
            self.run(tokens, &mut segments, Logits::All)
        } else {
            Ok(self.run(tokens, &mut segments, Logits::LastOfEach)?.squeeze(0)?)
        }
    }

    /// One decode step for several sequences at once: `tokens[i]` is the next token of the
    /// sequence whose cache is `caches[i]` (positions may differ). Projections and MLPs run as
    /// one batched matmul over all sequences (weights read once per step); attention runs per
    /// sequence against its own cache. Returns logits `[tokens.len(), vocab]` on the CPU.
    pub fn forward_batch(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor, ModelError> {
        if tokens.is_empty() || tokens.len() != caches.len() {
            return Err(ModelError::InvalidInput(format!(
                "forward_batch needs one token per cache and at least one of each, got {} tokens \
                 for {} caches",
                tokens.len(),
                caches.len()
            )));
        }
        let mut segments: Vec<Segment<'_>> = caches.iter_mut().map(|cache| Segment { cache, tokens: 1 }).collect();
        self.run(tokens, &mut segments, Logits::All)
    }

    /// The shared forward pass: `tokens` are the segments' tokens concatenated in order.
    fn run(&self, tokens: &[u32], segments: &mut [Segment<'_>], logits: Logits) -> Result<Tensor, ModelError> {
        let cfg = &self.config;
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(ModelError::TokenOutOfRange { token, vocab_size: cfg.vocab_size });
        }
        let mut positions = Vec::with_capacity(tokens.len());
        for seg in segments.iter_mut() {
            if !seg.cache.matches(cfg.layers, cfg.kv_heads, cfg.head_dim) {
                return Err(ModelError::InvalidInput("the KV cache was made by a model of another shape".into()));
            }
            let start = seg.cache.len();
            let needed = start + seg.tokens;
            if needed > cfg.context_length {
                return Err(ModelError::ContextOverflow { needed, limit: cfg.context_length });
            }
            positions.extend(start..needed);
        }
        for seg in segments.iter_mut() {
            let needed = seg.cache.len() + seg.tokens;
            seg.cache.reserve(needed)?;
        }
        let inputs = self.step_inputs(&positions, segments)?;

        let mut x = self.embedding.lookup(tokens, &self.device)?;
        if self.settings.scale_embeddings {
            x = (x * (cfg.hidden_size as f64).sqrt())?;
        }
        for (index, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.forward(&x)?;
            let attn = self.attention(layer, index, &h, segments, &inputs)?;
            let mut attn = layer.o.forward(&attn)?;
            if let Some(norm) = &layer.post_attn_norm {
                attn = norm.forward(&attn)?;
            }
            x = (x + attn)?;

            let h = layer.ffn_norm.forward(&x)?;
            let [gate, up] = Linear::forward_group([&layer.gate, &layer.up], &h)?;
            let gated = self.gated(&gate, &up)?;
            let mut mlp = layer.down.forward(&gated)?;
            if let Some(norm) = &layer.post_ffn_norm {
                mlp = norm.forward(&mlp)?;
            }
            x = (x + mlp)?;
        }
        for seg in segments.iter_mut() {
            let len = seg.cache.len() + seg.tokens;
            seg.cache.set_len(len);
        }

        let x = match logits {
            Logits::LastOfEach if segments.iter().any(|s| s.tokens > 1) => {
                let mut ends = Vec::with_capacity(segments.len());
                let mut end = 0u32;
                for seg in segments.iter() {
                    end += seg.tokens as u32;
                    ends.push(end - 1);
                }
                x.index_select(&Tensor::new(ends.as_slice(), &self.device)?, 0)?
            }
            _ => x,
        };
        let x = self.output_norm.forward(&x)?;
        let mut out = self.lm_head.forward(&x)?;
        if let Some(cap) = cfg.final_logit_softcap {
            out = ((out / cap)?.tanh()? * cap)?;
        }
        Ok(out.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
    }

    /// Rope tables for every row and causal masks for every multi-token segment.
    fn step_inputs(&self, positions: &[usize], segments: &[Segment<'_>]) -> Result<StepInputs, ModelError> {
        let cfg = &self.config;
        let global_cos_sin = self.global_rope.cos_sin(positions, &self.device)?;
        let local_cos_sin = match cfg.sliding_window {
            Some(_) => Some(self.local_rope.cos_sin(positions, &self.device)?),
            None => None,
        };
        let mut masks = Vec::with_capacity(segments.len());
        for seg in segments {
            let mut pair = [None, None];
            if seg.tokens > 1 {
                let start = seg.cache.len();
                pair[0] = Some(self.causal_mask(start, seg.tokens, None)?);
                if cfg.sliding_window.is_some() {
                    pair[1] = Some(self.causal_mask(start, seg.tokens, cfg.sliding_window)?);
                }
            }
            masks.push(pair);
        }
        Ok(StepInputs { global_cos_sin, local_cos_sin, masks })
    }

    /// Additive mask `[tokens, keys]` for queries at `start..start + tokens` over the keys
    /// [`key_range`] gives: 0 where a query may attend, -inf elsewhere.
    fn causal_mask(&self, start: usize, tokens: usize, window: Option<usize>) -> Result<Tensor, ModelError> {
        let (first_key, end) = key_range(start, tokens, window);
        let keys = end - first_key;
        let mut mask = Vec::with_capacity(tokens * keys);
        for query in start..end {
            for key in first_key..end {
                let visible = key <= query && window.is_none_or(|w| query - key < w);
                mask.push(if visible { 0.0 } else { f32::NEG_INFINITY });
            }
        }
        Ok(Tensor::from_vec(mask, (tokens, keys), &self.device)?)
    }

    /// Self-attention of one layer over all segments; `h` is the normed input `[rows, hidden]`.
    /// Appends each segment's keys and values to its cache. Returns `[rows, heads * head_dim]`.
    fn attention(
        &self,
        layer: &Layer,
        index: usize,
        h: &Tensor,
        segments: &mut [Segment<'_>],
        inputs: &StepInputs,
    ) -> Result<Tensor, ModelError> {
        let cfg = &self.config;
        let (heads, kv_heads, hd) = (cfg.heads, cfg.kv_heads, cfg.head_dim);
        let groups = heads / kv_heads;
        let rows = h.dim(0)?;

        let add_bias = |y: Tensor, bias: &Option<Tensor>| -> candle_core::Result<Tensor> {
            match bias {
                Some(b) => y.broadcast_add(b),
                None => Ok(y),
            }
        };
        let [q, k, v] = Linear::forward_group([&layer.q, &layer.k, &layer.v], h)?;
        let mut q = add_bias(q, &layer.q_bias)?.reshape((rows, heads, hd))?;
        let mut k = add_bias(k, &layer.k_bias)?.reshape((rows, kv_heads, hd))?;
        let v = add_bias(v, &layer.v_bias)?.reshape((rows, kv_heads, hd))?;
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }

        // Heads first: [1, heads, rows, hd], each row with its own position's cos/sin.
        let (cos, sin) = match (&inputs.local_cos_sin, layer.local) {
            (Some(local), true) => (&local.0, &local.1),
            _ => (&inputs.global_cos_sin.0, &inputs.global_cos_sin.1),
        };
        let rope = |x: Tensor| -> candle_core::Result<Tensor> {
            let x = x.transpose(0, 1)?.contiguous()?.unsqueeze(0)?;
            let x = match self.settings.rope_style {
                RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, cos, sin)?,
                RopeStyle::Neox => candle_nn::rotary_emb::rope(&x, cos, sin)?,
            };
            x.squeeze(0)
        };
        let window = if layer.local { cfg.sliding_window } else { None };
        if segments.iter().all(|seg| matches!(seg.cache.layers[index], LayerCache::Host { .. })) {
            return self.host_attention(index, window, &rope(q)?, &rope(k)?, &v, segments);
        }
        let q = (rope(q)? * cfg.attention_scale)?;
        let k = rope(k)?;
        let v = v.transpose(0, 1)?.contiguous()?;

        let single = segments.len() == 1;
        let mut outputs = Vec::with_capacity(segments.len());
        let mut row = 0;
        for (seg_index, seg) in segments.iter_mut().enumerate() {
            let n = seg.tokens;
            let start = seg.cache.len();
            let take = |t: &Tensor| -> candle_core::Result<Tensor> {
                if single { Ok(t.clone()) } else { t.narrow(1, row, n)?.contiguous() }
            };
            let LayerCache::Device { k: Some(k_cache), v: Some(v_cache) } = &seg.cache.layers[index] else {
                return Err(ModelError::InvalidInput("KV cache buffers were not reserved".into()));
            };
            k_cache.slice_set(&take(&k)?, 1, start)?;
            v_cache.slice_set(&take(&v)?, 1, start)?;

            let (first_key, end) = key_range(start, n, window);
            let keys = k_cache.narrow(1, first_key, end - first_key)?;
            let values = v_cache.narrow(1, first_key, end - first_key)?;
            // Grouped-query attention without copying keys: the `groups` query heads that share
            // a key head become extra rows of one matmul.
            let q_seg = take(&q)?.reshape((kv_heads, groups * n, hd))?;
            let mut scores = q_seg.matmul(&keys.t()?)?;
            if let Some(mask) = &inputs.masks[seg_index][usize::from(window.is_some())] {
                let shape = scores.dims().to_vec();
                scores = scores.reshape((kv_heads, groups, n, end - first_key))?.broadcast_add(mask)?.reshape(shape)?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            outputs.push(probs.matmul(&values)?.reshape((heads, n, hd))?);
            row += n;
        }
        let out = if single {
            outputs.pop().ok_or_else(|| ModelError::InvalidInput("no segments".into()))?
        } else {
            Tensor::cat(&outputs, 1)?
        };
        Ok(out.transpose(0, 1)?.contiguous()?.reshape((rows, heads * hd))?)
    }
}

impl QuantizedTransformer {
    /// `act(gate) * up`: on the CPU in one pass of Hearth's kernel, elsewhere with candle's
    /// operators.
    fn gated(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor, ModelError> {
        if !self.device.is_cpu() {
            let gate = match self.settings.activation {
                Activation::Silu => candle_nn::ops::silu(gate)?,
                Activation::GeluTanh => gate.gelu()?,
            };
            return Ok((gate * up)?);
        }
        let act = match self.settings.activation {
            Activation::Silu => Gate::Silu,
            Activation::GeluTanh => Gate::GeluTanh,
        };
        let shape = gate.shape().clone();
        let (gate, up) = (gate.flatten_all()?.to_vec1::<f32>()?, up.flatten_all()?.to_vec1::<f32>()?);
        let mut out = vec![0.0f32; gate.len()];
        hearth_kernels::gated::gated(&CandlePool, Isa::detect(), act, &gate, &up, &mut out)
            .map_err(candle_core::Error::wrap)?;
        Ok(Tensor::from_vec(out, shape, &self.device)?)
    }

    /// [`attention`](Self::attention) on the CPU with Hearth's kernel: appends each segment's
    /// keys and values to its host cache, then attends over every segment in one call (no
    /// tensor operation per segment). `q` is `[heads, rows, hd]` and `k` `[kv_heads, rows, hd]`
    /// after rope; `v` is `[rows, kv_heads, hd]`. Returns `[rows, heads * hd]`.
    fn host_attention(
        &self,
        index: usize,
        window: Option<usize>,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        segments: &mut [Segment<'_>],
    ) -> Result<Tensor, ModelError> {
        let cfg = &self.config;
        let (heads, kv_heads, hd) = (cfg.heads, cfg.kv_heads, cfg.head_dim);
        let rows = v.dim(0)?;
        let queries = q.flatten_all()?.to_vec1::<f32>()?;
        let keys = k.flatten_all()?.to_vec1::<f32>()?;
        let values = v.flatten_all()?.to_vec1::<f32>()?;
        let width = kv_heads * hd;
        let mut row = 0;
        for seg in segments.iter_mut() {
            let start = seg.cache.len();
            let LayerCache::Host { k: k_cache, v: v_cache } = &mut seg.cache.layers[index] else {
                return Err(ModelError::InvalidInput("a host attention step met a device KV cache".into()));
            };
            if k_cache.len() < (start + seg.tokens) * width {
                return Err(ModelError::InvalidInput("KV cache buffers were not reserved".into()));
            }
            for i in 0..seg.tokens {
                let at = (start + i) * width;
                for g in 0..kv_heads {
                    let from = (g * rows + row + i) * hd;
                    k_cache[at + g * hd..at + (g + 1) * hd].copy_from_slice(&keys[from..from + hd]);
                }
                v_cache[at..at + width].copy_from_slice(&values[(row + i) * width..(row + i + 1) * width]);
            }
            row += seg.tokens;
        }
        let mut sequences = Vec::with_capacity(segments.len());
        for seg in segments.iter() {
            let LayerCache::Host { k, v } = &seg.cache.layers[index] else {
                return Err(ModelError::InvalidInput("a host attention step met a device KV cache".into()));
            };
            sequences.push(Sequence { rows: seg.tokens, start: seg.cache.len(), keys: k, values: v });
        }
        let mut out = vec![0.0f32; rows * heads * hd];
        let shape = Heads { heads, kv_heads, head_dim: hd };
        attention::attend(
            &CandlePool,
            Isa::detect(),
            shape,
            cfg.attention_scale as f32,
            window,
            &queries,
            &sequences,
            &mut out,
        )
        .map_err(candle_core::Error::wrap)?;
        Ok(Tensor::from_vec(out, (rows, heads * hd), &self.device)?)
    }
}

/// Keys `[first, end)` that queries at `start..start + tokens` may see: all earlier positions,
/// or with a sliding window of `w` only the last `w` positions up to each query (llama.cpp's
/// rule: a key is hidden once `query - key >= w`).
fn key_range(start: usize, tokens: usize, window: Option<usize>) -> (usize, usize) {
    let first = match window {
        Some(w) => (start + 1).saturating_sub(w),
        None => 0,
    };
    (first, start + tokens)
}
