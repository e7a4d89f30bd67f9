//! A BERT sentence encoder (all-MiniLM-L6-v2 and its kin) on bf16 AMX tiles.
//!
//! The forward pass of Hugging Face's `BertModel` (post-LayerNorm, erf GELU, absolute position
//! embeddings) followed by sentence-transformers' mean pooling and L2 normalisation. The dense
//! layers are [`Bf16Matrix`] products (bf16 operands, f32 sums); everything else is f32.
//!
//! Texts are packed, not padded: a batch is one matrix of all its tokens, each text attends
//! only to its own tokens, so no work goes to padding and a text's embedding does not depend on
//! what it is batched with (each output row of a product depends only on its own input row).
//!
//! The element-wise work (LayerNorm, GELU, softmax) is plain Rust written so that the compiler
//! vectorises it; [`BertEncoder::embed`] compiles it for AVX-512 when the CPU has it (every CPU
//! with AMX does) and runs the portable build elsewhere.
#![allow(unsafe_code)]

use crate::amx::{self, Bf16Matrix, Bf16Rows, TASK_ROWS};
use crate::{KernelError, Parallel, for_each_part};

/// Shape and constants of a BERT encoder (Hugging Face `config.json` names in brackets).
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    /// Width of every token's hidden state (`hidden_size`).
    pub hidden: usize,
    /// Attention heads (`num_attention_heads`).
    pub heads: usize,
    /// Encoder layers (`num_hidden_layers`).
    pub layers: usize,
    /// Width of the feed-forward layer (`intermediate_size`).
    pub intermediate: usize,
    /// Position embeddings (`max_position_embeddings`): the longest input.
    pub max_positions: usize,
    /// Token type embeddings (`type_vocab_size`).
    pub type_vocab: usize,
    /// Word embeddings (`vocab_size`).
    pub vocab: usize,
    /// LayerNorm epsilon (`layer_norm_eps`).
    pub eps: f32,
}

/// One encoder layer: self-attention and feed-forward, each followed by residual + LayerNorm.
#[derive(Debug)]
struct Layer {
    /// Query, key and value weights stacked: `3 · hidden` outputs.
    qkv: Bf16Matrix,
    qkv_bias: Vec<f32>,
    output: Bf16Matrix,
    output_bias: Vec<f32>,
    attention_norm: (Vec<f32>, Vec<f32>),
    up: Bf16Matrix,
    up_bias: Vec<f32>,
    down: Bf16Matrix,
    down_bias: Vec<f32>,
    output_norm: (Vec<f32>, Vec<f32>),
}

/// Why an encoder could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// A weight the encoder needs is missing or could not be read.
    #[error("weight {name}: {reason}")]
    Weight {
        /// The tensor's name in the checkpoint.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// The configuration cannot run on these kernels.
    #[error("{0}")]
    Config(String),
    /// A weight matrix the tiles cannot take.
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// A text to encode: its token ids and token type ids (same length, at least one token).
#[derive(Clone, Copy, Debug)]
pub struct Text<'a> {
    /// Token ids, special tokens included.
    pub ids: &'a [u32],
    /// Token type (segment) ids.
    pub type_ids: &'a [u32],
}

/// The loaded encoder. Cheap to share across threads: all state is read-only.
#[derive(Debug)]
pub struct BertEncoder {
    config: BertConfig,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embedding_norm: (Vec<f32>, Vec<f32>),
    layers: Vec<Layer>,
    amx: bool,
}

impl BertEncoder {
    /// Builds the encoder from a checkpoint's f32 tensors, fetched by Hugging Face name through
    /// `weight(name, expected_len)`. `amx` picks the AMX tile kernel (it needs
    /// [`amx::available`]) or the portable loop.
    pub fn new(
        config: BertConfig,
        amx: bool,
        mut weight: impl FnMut(&str, usize) -> Result<Vec<f32>, String>,
    ) -> Result<Self, EncoderError> {
        let c = &config;
        if c.heads == 0 || !c.hidden.is_multiple_of(c.heads) {
            return Err(EncoderError::Config(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                c.hidden, c.heads
            )));
        }
        if !(c.hidden / c.heads).is_multiple_of(LANES) {
            return Err(EncoderError::Config(format!(
                "attention heads of {} values (hidden_size / num_attention_heads) are not a multiple of {LANES}",
                c.hidden / c.heads
            )));
        }
        if amx && !amx::available() {
            return Err(EncoderError::Config("AMX tiles requested on a CPU or OS without AMX-BF16".into()));
        }
        let mut get = |name: String, len: usize| -> Result<Vec<f32>, EncoderError> {
            let values = weight(&name, len).map_err(|reason| EncoderError::Weight { name: name.clone(), reason })?;
            if values.len() != len {
                return Err(EncoderError::Weight {
                    name,
                    reason: format!("expected {len} values, found {}", values.len()),
                });
            }
            Ok(values)
        };
        let (h, i) = (c.hidden, c.intermediate);
        let norm = |get: &mut dyn FnMut(String, usize) -> Result<Vec<f32>, EncoderError>, prefix: &str| {
            Ok::<_, EncoderError>((get(format!("{prefix}.weight"), h)?, get(format!("{prefix}.bias"), h)?))
        };
        let word = get("embeddings.word_embeddings.weight".into(), c.vocab * h)?;
        let position = get("embeddings.position_embeddings.weight".into(), c.max_positions * h)?;
        let token_type = get("embeddings.token_type_embeddings.weight".into(), c.type_vocab * h)?;
        let embedding_norm = norm(&mut get, "embeddings.LayerNorm")?;
        let mut layers = Vec::with_capacity(c.layers);
        for l in 0..c.layers {
            let p = format!("encoder.layer.{l}");
            let mut qkv = Vec::with_capacity(3 * h * h);
            let mut qkv_bias = Vec::with_capacity(3 * h);
            for part in ["query", "key", "value"] {
                qkv.extend(get(format!("{p}.attention.self.{part}.weight"), h * h)?);
                qkv_bias.extend(get(format!("{p}.attention.self.{part}.bias"), h)?);
            }
            layers.push(Layer {
                qkv: Bf16Matrix::pack(&qkv, 3 * h, h)?,
                qkv_bias,
                output: Bf16Matrix::pack(&get(format!("{p}.attention.output.dense.weight"), h * h)?, h, h)?,
                output_bias: get(format!("{p}.attention.output.dense.bias"), h)?,
                attention_norm: norm(&mut get, &format!("{p}.attention.output.LayerNorm"))?,
                up: Bf16Matrix::pack(&get(format!("{p}.intermediate.dense.weight"), i * h)?, i, h)?,
                up_bias: get(format!("{p}.intermediate.dense.bias"), i)?,
                down: Bf16Matrix::pack(&get(format!("{p}.output.dense.weight"), h * i)?, h, i)?,
                down_bias: get(format!("{p}.output.dense.bias"), h)?,
                output_norm: norm(&mut get, &format!("{p}.output.LayerNorm"))?,
            });
        }
        Ok(Self { config, word, position, token_type, embedding_norm, layers, amx })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Whether the dense layers run on AMX tiles.
    pub fn uses_amx(&self) -> bool {
        self.amx
    }

    /// L2-normalised mean-pooled embeddings, one per text, computed on `par`'s threads.
    ///
    /// Every text needs at least one token, at most `max_positions`, and ids inside the
    /// vocabulary and type vocabulary; anything else is an error naming the text.
    pub fn embed(&self, par: &dyn Parallel, texts: &[Text<'_>]) -> Result<Vec<Vec<f32>>, KernelError> {
        for text in texts {
            if text.ids.is_empty() || text.ids.len() > self.config.max_positions {
                return Err(KernelError::Shape {
                    what: "encoder text tokens",
                    expected: self.config.max_positions,
                    found: text.ids.len(),
                });
            }
            if text.type_ids.len() != text.ids.len() {
                return Err(KernelError::Shape {
                    what: "encoder text type ids",
                    expected: text.ids.len(),
                    found: text.type_ids.len(),
                });
            }
            if let Some(&bad) = text.ids.iter().find(|&&id| id as usize >= self.config.vocab) {
                return Err(KernelError::Shape {
                    what: "encoder token id (vocabulary size)",
                    expected: self.config.vocab,
                    found: bad as usize,
                });
            }
            if let Some(&bad) = text.type_ids.iter().find(|&&id| id as usize >= self.config.type_vocab) {
                return Err(KernelError::Shape {
                    what: "encoder token type id (type vocabulary size)",
                    expected: self.config.type_vocab,
                    found: bad as usize,
                });
            }
        }
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: the CPU has every feature `forward_avx512` is compiled for.
            return Ok(unsafe { self.forward_avx512(par, texts) });
        }
        Ok(self.forward(par, texts))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    unsafe fn forward_avx512(&self, par: &dyn Parallel, texts: &[Text<'_>]) -> Vec<Vec<f32>> {
        self.forward(par, texts)
    }

    #[inline(always)]
    fn forward(&self, par: &dyn Parallel, texts: &[Text<'_>]) -> Vec<Vec<f32>> {
        let c = &self.config;
        let (h, heads) = (c.hidden, c.heads);
        let head_dim = h / heads;
        let tokens: usize = texts.iter().map(|t| t.ids.len()).sum();
        let starts: Vec<usize> = texts
            .iter()
            .scan(0, |at, t| {
                let start = *at;
                *at += t.ids.len();
                Some(start)
            })
            .collect();

        // Embeddings: word + token type, plus position, then LayerNorm (a residual step whose
        // "layer output" is the position embedding and whose bias is zero).
        let mut x = vec![0f32; tokens * h];
        let mut y = vec![0f32; tokens * h];
        {
            let mut at = 0;
            for text in texts {
                for (p, (&id, &ty)) in text.ids.iter().zip(text.type_ids).enumerate() {
                    let word = &self.word[id as usize * h..][..h];
                    let typ = &self.token_type[ty as usize * h..][..h];
                    for ((v, &a), &b) in x[at * h..][..h].iter_mut().zip(word).zip(typ) {
                        *v = a + b;
                    }
                    y[at * h..][..h].copy_from_slice(&self.position[p * h..][..h]);
                    at += 1;
                }
            }
        }
        let eps = c.eps;
        let zero_bias = vec![0f32; h];
        let mut xb = Bf16Rows::new();
        xb.reset(tokens, h);
        let (w, b) = &self.embedding_norm;
        residual_norm(par, &mut x, &y, &zero_bias, w, b, eps, &mut xb);

        let mut qkv = vec![0f32; tokens * 3 * h];
        let mut cb = Bf16Rows::new();
        cb.reset(tokens, h);
        let mut ffn = vec![0f32; tokens * c.intermediate];
        let mut fb = Bf16Rows::new();
        fb.reset(tokens, c.intermediate);
        let scale = 1.0 / (head_dim as f32).sqrt();
        for layer in &self.layers {
            // Self-attention, each text over its own tokens; contexts go straight to bf16.
            self.dense(par, &layer.qkv, &xb, &mut qkv);
            let mut parts = Vec::with_capacity(texts.len());
            let mut rest: &mut [u16] = cb.values_mut();
            for text in texts {
                let (part, tail) = rest.split_at_mut(text.ids.len() * h);
                parts.push(part);
                rest = tail;
            }
            let qkv_ref = &qkv;
            for_each_part(par, parts, |n, out| {
                let (start, len) = (starts[n], texts[n].ids.len());
                attend(&qkv_ref[start * 3 * h..][..len * 3 * h], &layer.qkv_bias, len, h, heads, scale, out);
            });
            let (w, b) = &layer.attention_norm;
            self.dense_norm(par, &layer.output, &cb, &mut y, &layer.output_bias, w, b, &mut x, &mut xb);

            // Feed-forward.
            // GELU runs on each block of rows as soon as its product is done (still in cache).
            let blocks: Vec<&mut [u16]> = fb.values_mut().chunks_mut(TASK_ROWS * c.intermediate).collect();
            self.dense_then(par, &layer.up, &xb, &mut ffn, blocks, |rows, out| gelu_rows(rows, &layer.up_bias, out));
            let (w, b) = &layer.output_norm;
            self.dense_norm(par, &layer.down, &fb, &mut y, &layer.down_bias, w, b, &mut x, &mut xb);
        }

        // Mean pooling over each text's tokens, then L2 normalisation.
        texts
            .iter()
            .zip(&starts)
            .map(|(text, &start)| {
                let len = text.ids.len();
                let mut mean = vec![0f32; h];
                for row in x[start * h..(start + len) * h].chunks_exact(h) {
                    for d in 0..h {
                        mean[d] += row[d];
                    }
                }
                let inv = 1.0 / len as f32;
                mean.iter_mut().for_each(|v| *v *= inv);
                let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                mean.iter_mut().for_each(|v| *v /= norm);
                mean
            })
            .collect()
    }

    fn dense(&self, par: &dyn Parallel, matrix: &Bf16Matrix, x: &Bf16Rows, out: &mut [f32]) {
        // Shapes are fixed by construction; a mismatch is a bug here, not bad input.
        matrix.matmul(par, self.amx, x, out).unwrap_or_else(|e| panic!("encoder dense layer: {e}"));
    }

    fn dense_then<T: Send>(
        &self,
        par: &dyn Parallel,
        matrix: &Bf16Matrix,
        x: &Bf16Rows,
        out: &mut [f32],
        extras: Vec<T>,
        then: impl Fn(&mut [f32], T) + Sync,
    ) {
        matrix.matmul_then(par, self.amx, x, out, extras, then).unwrap_or_else(|e| panic!("encoder dense layer: {e}"));
    }

    /// `y = input · Wᵀ`, then `state = LayerNorm(state + y + bias)` and `state_bf16 = bf16(state)`,
    /// block by block as the product finishes.
    #[allow(clippy::too_many_arguments)]
    fn dense_norm(
        &self,
        par: &dyn Parallel,
        matrix: &Bf16Matrix,
        input: &Bf16Rows,
        y: &mut [f32],
        bias: &[f32],
        w: &[f32],
        b: &[f32],
        state: &mut [f32],
        state_bf16: &mut Bf16Rows,
    ) {
        let step = TASK_ROWS * bias.len();
        let eps = self.config.eps;
        let blocks: Vec<(&mut [f32], &mut [u16])> =
            state.chunks_mut(step).zip(state_bf16.values_mut().chunks_mut(step)).collect();
        self.dense_then(par, matrix, input, y, blocks, |y, (x, xb)| residual_norm_rows(x, y, bias, w, b, eps, xb));
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// Compiles a function twice, for AVX-512 and for the baseline, and calls the AVX-512 build
/// where the CPU has it. (Closures handed to a thread pool do not inherit a caller's target
/// features, so the hot loops are dispatched one by one.)
macro_rules! multiversion {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn fast($($arg: $ty),*) {
                    body($($arg),*)
                }
                if avx512() {
                    // SAFETY: the CPU has every feature `fast` is compiled for.
                    return unsafe { fast($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// One task's rows of [`residual_norm`]: the state, the layer output, the bf16 copy.
type NormPart<'a> = ((&'a mut [f32], &'a [f32]), &'a mut [u16]);

/// `x = LayerNorm(x + y + bias)` row by row, and `out = bf16(x)`, in parallel tasks.
#[allow(clippy::too_many_arguments)]
fn residual_norm(
    par: &dyn Parallel,
    x: &mut [f32],
    y: &[f32],
    bias: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
    out: &mut Bf16Rows,
) {
    let cols = bias.len();
    let step = TASK_ROWS * cols;
    let parts: Vec<NormPart<'_>> =
        x.chunks_mut(step).zip(y.chunks(step)).zip(out.values_mut().chunks_mut(step)).collect();
    for_each_part(par, parts, |_, ((x, y), out)| residual_norm_rows(x, y, bias, w, b, eps, out));
}

multiversion! {
    /// [`residual_norm`] over whole rows of one task.
    fn residual_norm_rows(x: &mut [f32], y: &[f32], bias: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [u16]) {
        let cols = bias.len();
        for ((row, y), out) in x.chunks_exact_mut(cols).zip(y.chunks_exact(cols)).zip(out.chunks_exact_mut(cols)) {
            for ((v, &y), &bias) in row.iter_mut().zip(y).zip(bias) {
                *v += y + bias;
            }
            layer_norm(row, w, b, eps);
            for (o, &v) in out.iter_mut().zip(row.iter()) {
                *o = amx::bf16(v);
            }
        }
    }
}

multiversion! {
    /// `out = bf16(GELU(input + bias))` over whole rows.
    fn gelu_rows(input: &[f32], bias: &[f32], out: &mut [u16]) {
        for (row, out) in input.chunks_exact(bias.len()).zip(out.chunks_exact_mut(bias.len())) {
            for ((o, &v), &bias) in out.iter_mut().zip(row).zip(bias) {
                *o = amx::bf16(gelu(v + bias));
            }
        }
    }
}

/// Lanes of the partial sums (so reductions vectorise without reassociating floats freely).
const LANES: usize = 16;

/// Sum of a slice in [`LANES`] partial sums.
#[inline(always)]
fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for l in 0..LANES {
            acc[l] += f(chunk[l]);
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|&v| f(v)).sum::<f32>()
}

/// Largest value of a non-empty slice, in [`LANES`] partial maxima.
#[inline(always)]
fn lane_max(values: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for l in 0..LANES {
            acc[l] = if chunk[l] > acc[l] { chunk[l] } else { acc[l] };
        }
    }
    acc.iter().chain(tail).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// `row = (row − mean) / sqrt(var + eps) · w + b`, in place.
#[inline(always)]
fn layer_norm(row: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = lane_sum(row, |v| v) / n;
    let var = lane_sum(row, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, &w), &b) in row.iter_mut().zip(w).zip(b) {
        *v = (*v - mean) * inv * w + b;
    }
}

/// `e^x` for `x ≤ 88`, within 2 ulp, in operations that vectorise (no libm call).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Taylor coefficients to r^6 on |r| ≤ ln2/2.
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // `shifted` holds the integer `n` in its low mantissa bits: 2^n from integer
    // operations alone (a float-to-int cast would not vectorise, for its saturation rules).
    let biased = shifted.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127);
    p * f32::from_bits(biased << 23)
}

/// `erf(x)` within 5e-7 (Abramowitz and Stegun 7.1.26: 1.5e-7, plus f32 rounding), vectorisable.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// BERT's GELU: `x · Φ(x) = x/2 · (1 + erf(x/√2))`.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

multiversion! {
    /// Self-attention of one text: `qkv` holds its `len` rows of query, key and value (each
    /// `hidden` wide, before `bias`); `out` gets `len` rows of the heads' concatenated contexts.
    fn attend(qkv: &[f32], bias: &[f32], len: usize, hidden: usize, heads: usize, scale: f32, out: &mut [u16]) {
        let d = hidden / heads;
        let stride = 3 * hidden;
        let padded = len.div_ceil(LANES) * LANES;
        // Keys transposed ([dim][position], zero past `len`) and values ([position][dim]), biased.
        let mut keys_t = vec![0f32; d * padded];
        let mut values = vec![0f32; len * d];
        let mut query = vec![0f32; d];
        let mut scores = vec![0f32; padded];
        let mut context = vec![0f32; d];
        for head in 0..heads {
            let (q_at, k_at, v_at) = (head * d, hidden + head * d, 2 * hidden + head * d);
            for j in 0..len {
                let row = &qkv[j * stride..][..stride];
                let key = row[k_at..][..d].iter().zip(&bias[k_at..][..d]);
                for (column, (&x, &b)) in keys_t.chunks_exact_mut(padded).zip(key) {
                    column[j] = x + b;
                }
                for (v, (&x, &b)) in values[j * d..][..d].iter_mut().zip(row[v_at..][..d].iter().zip(&bias[v_at..][..d])) {
                    *v = x + b;
                }
            }
            for i in 0..len {
                let row = &qkv[i * stride + q_at..][..d];
                for ((q, &x), &b) in query.iter_mut().zip(row).zip(&bias[q_at..][..d]) {
                    *q = (x + b) * scale;
                }
                // Sixteen scores at a time, summed over the head's dimensions in registers.
                for (block, chunk) in scores.chunks_exact_mut(LANES).enumerate() {
                    let mut acc = [0f32; LANES];
                    for (e, &q) in query.iter().enumerate() {
                        let keys = &keys_t[e * padded + block * LANES..][..LANES];
                        for l in 0..LANES {
                            acc[l] = q.mul_add(keys[l], acc[l]);
                        }
                    }
                    chunk.copy_from_slice(&acc);
                }
                let real = &mut scores[..len];
                let max = lane_max(real);
                real.iter_mut().for_each(|s| *s = exp(*s - max));
                let inv = 1.0 / lane_sum(real, |v| v);
                // Sixteen dimensions at a time, summed over the positions in registers.
                // (The head width is a multiple of LANES, checked when the encoder is built.)
                for (block, chunk) in context.chunks_exact_mut(LANES).enumerate() {
                    let mut acc = [0f32; LANES];
                    for (j, &p) in real.iter().enumerate() {
                        let value = &values[j * d + block * LANES..][..LANES];
                        for l in 0..LANES {
                            acc[l] = p.mul_add(value[l], acc[l]);
                        }
                    }
                    chunk.copy_from_slice(&acc);
                }
                for (o, &c) in out[i * hidden + q_at..][..d].iter_mut().zip(&context) {
                    *o = amx::bf16(c * inv);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37);
    }

    #[test]
    fn erf_matches_its_series() {
        // erf by its Taylor series in f64, which converges everywhere it is tested here.
        fn reference(x: f64) -> f64 {
            let (mut term, mut sum, mut n) = (x, x, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -x * x / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        }
        let mut x = -4.0f64;
        while x <= 4.0 {
            let got = f64::from(erf(x as f32));
            assert!((got - reference(x)).abs() < 5e-7, "erf({x}) = {got}, want {}", reference(x));
            x += 0.01;
        }
        assert_eq!(erf(10.0), 1.0);
        assert_eq!(erf(-10.0), -1.0);
    }

    #[test]
    fn layer_norm_matches_the_definition() {
        let row: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 3.0 + 1.0).collect();
        let w: Vec<f32> = (0..37).map(|i| 1.0 + i as f32 * 0.01).collect();
        let b: Vec<f32> = (0..37).map(|i| i as f32 * -0.02).collect();
        let mut got = row.clone();
        layer_norm(&mut got, &w, &b, 1e-12);
        let n = row.len() as f64;
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
        for i in 0..row.len() {
            let want = (f64::from(row[i]) - mean) / var.sqrt() * f64::from(w[i]) + f64::from(b[i]);
            assert!((f64::from(got[i]) - want).abs() < 1e-5, "{i}: {} vs {want}", got[i]);
        }
    }

    #[test]
    fn attention_matches_a_plain_softmax() {
        let (len, hidden, heads) = (21, 32, 2);
        let qkv: Vec<f32> = (0..len * 3 * hidden).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
        let mut out = vec![0u16; len * hidden];
        let scale = 0.5;
        let bias: Vec<f32> = (0..3 * hidden).map(|i| ((i * 31) % 17) as f32 / 20.0 - 0.4).collect();
        attend(&qkv, &bias, len, hidden, heads, scale, &mut out);
        // The reference adds the biases itself.
        let qkv: Vec<f32> = qkv.iter().enumerate().map(|(i, &v)| v + bias[i % (3 * hidden)]).collect();
        let d = hidden / heads;
        for head in 0..heads {
            for i in 0..len {
                let q = &qkv[i * 3 * hidden + head * d..][..d];
                let logits: Vec<f64> = (0..len)
                    .map(|j| {
                        let k = &qkv[j * 3 * hidden + hidden + head * d..][..d];
                        q.iter().zip(k).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>() * scale as f64
                    })
                    .collect();
                let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for e in 0..d {
                    let want: f64 = (0..len)
                        .map(|j| weights[j] / total * f64::from(qkv[j * 3 * hidden + 2 * hidden + head * d + e]))
                        .sum();
                    let got = f64::from(amx::bf16_to_f32(out[i * hidden + head * d + e]));
                    // The context is stored as bf16: 8 significant bits.
                    assert!(
                        (got - want).abs() <= want.abs() / 256.0 + 1e-6,
                        "head {head} row {i} dim {e}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
