//! Re-encoding of weight types that candle multiplies with scalar code on the CPU.
//!
//! candle 0.11 has SIMD CPU kernels for Q4_0, Q8_0 and the K-quants but falls back to scalar
//! loops for Q4_1, Q5_0 and Q5_1: on two cores Gemma 3 270M Q4_K_M (whose q/k/gate/up are Q5_0)
//! decoded at ~2 tokens/s and SmolLM2 Q4_1 at ~1.5. The re-encodings are exact:
//! - Q5_0 (`x = d * (q - 16)`) becomes Q8_0 with the same scale and the values widened;
//! - Q4_1 (`x = d * q + m`) becomes Q4_0 (`d * (q - 8)`, same bytes) plus a per-block offset
//!   `m + 8d`, and Q5_1 likewise becomes Q5_0 (then Q8_0) plus `m + 16d`. The offsets are
//!   applied as `block_sums(x) @ offsets`, a matmul 32 times smaller than the weight's.

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Result, Tensor};

/// Bytes of one Q4_1 block: f16 scale, f16 minimum, 16 bytes of nibbles.
const Q4_1_BLOCK: usize = 20;
/// Bytes of one Q5_0 block: f16 scale, 32 high bits, 16 bytes of low nibbles.
const Q5_0_BLOCK: usize = 22;
/// Bytes of one Q5_1 block: f16 scale, f16 minimum, 32 high bits, 16 bytes of low nibbles.
const Q5_1_BLOCK: usize = 24;
/// Bytes of one Q8_0 block: f16 scale, 32 signed bytes.
const Q8_0_BLOCK: usize = 34;
/// Weights per block in all of the above.
pub(crate) const BLOCK: usize = 32;

/// Whether [`for_cpu_matmul`] would re-encode a tensor of this type.
pub(crate) fn needs_transcoding(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1)
}

/// Returns a weight `[n, k]` in a type with a SIMD CPU kernel, and for the offset types the
/// per-block offsets `[k / 32, n]` to add as `block_sums(x) @ offsets`.
pub(crate) fn for_cpu_matmul(tensor: QTensor) -> Result<(QTensor, Option<Tensor>)> {
    if !needs_transcoding(tensor.dtype()) {
        return Ok((tensor, None));
    }
    let shape = tensor.shape().clone();
    let data = tensor.data()?;
    match tensor.dtype() {
        GgmlDType::Q5_0 => Ok((q8_0_tensor(q5_0_to_q8_0(&data)?, &shape)?, None)),
        GgmlDType::Q4_1 => {
            let blocks = whole_blocks(&data, Q4_1_BLOCK, "Q4_1")?;
            let mut q4_0 = Vec::with_capacity(blocks.len() * 18);
            for b in &blocks {
                q4_0.extend_from_slice(&b[0..2]);
                q4_0.extend_from_slice(&b[4..20]);
            }
            let storage = QStorage::from_data(Cow::Owned(q4_0), &Device::Cpu, GgmlDType::Q4_0)?;
            let weight = QTensor::new(storage, shape.clone())?;
            Ok((weight, Some(offsets(&blocks, 8.0, &shape)?)))
        }
        GgmlDType::Q5_1 => {
            let blocks = whole_blocks(&data, Q5_1_BLOCK, "Q5_1")?;
            let mut q5_0 = Vec::with_capacity(blocks.len() * Q5_0_BLOCK);
            for b in &blocks {
                q5_0.extend_from_slice(&b[0..2]);
                q5_0.extend_from_slice(&b[4..24]);
            }
            let weight = q8_0_tensor(q5_0_to_q8_0(&q5_0)?, &shape)?;
            Ok((weight, Some(offsets(&blocks, 16.0, &shape)?)))
        }
        other => candle_core::bail!("no CPU re-encoding for {other:?}"),
    }
}

fn whole_blocks<'a>(data: &'a [u8], size: usize, name: &str) -> Result<Vec<&'a [u8]>> {
    if !data.len().is_multiple_of(size) {
        candle_core::bail!("{name} data of {} bytes is not a whole number of blocks", data.len());
    }
    Ok(data.chunks_exact(size).collect())
}

fn q8_0_tensor(data: Vec<u8>, shape: &candle_core::Shape) -> Result<QTensor> {
    let storage = QStorage::from_data(Cow::Owned(data), &Device::Cpu, GgmlDType::Q8_0)?;
    QTensor::new(storage, shape.clone())
}

/// `m + centre * d` per block of `d, m, ...` blocks, as `[k / 32, n]` f32.
fn offsets(blocks: &[&[u8]], centre: f64, shape: &candle_core::Shape) -> Result<Tensor> {
    let (n, k) = shape.dims2()?;
    let halves = |at: usize| -> Result<Tensor> {
        let bytes: Vec<u8> = blocks.iter().flat_map(|b| [b[at], b[at + 1]]).collect();
        let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, GgmlDType::F16)?;
        QTensor::new(storage, blocks.len())?.dequantize(&Device::Cpu)
    };
    let (d, m) = (halves(0)?, halves(2)?);
    (m + (d * centre)?)?.reshape((n, k / BLOCK))?.t()?.contiguous()
}

/// Widens Q5_0 blocks (`x = d * (q - 16)`, q in 0..32) to Q8_0 blocks with the same scale.
pub(crate) fn q5_0_to_q8_0(src: &[u8]) -> Result<Vec<u8>> {
    if !src.len().is_multiple_of(Q5_0_BLOCK) {
        candle_core::bail!("Q5_0 data of {} bytes is not a whole number of blocks", src.len());
    }
    let mut out = Vec::with_capacity(src.len() / Q5_0_BLOCK * Q8_0_BLOCK);
    for block in src.chunks_exact(Q5_0_BLOCK) {
        let (scale, rest) = block.split_at(2);
        let (high, low) = rest.split_at(4);
        let high = u32::from_le_bytes([high[0], high[1], high[2], high[3]]);
        out.extend_from_slice(scale);
        let mut values = [0u8; 32];
        for (j, &byte) in low.iter().enumerate() {
            // Value j has its low nibble in byte j's low half and its fifth bit in bit j;
            // value j + 16 has the high half and bit j + 16 (ggml's dequantize_row_q5_0).
            let v0 = (byte & 0x0F) | ((((high >> j) << 4) & 0x10) as u8);
            let v1 = (byte >> 4) | (((high >> (j + 12)) & 0x10) as u8);
            values[j] = (v0 as i8 - 16) as u8;
            values[j + 16] = (v1 as i8 - 16) as u8;
        }
        out.extend_from_slice(&values);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    /// Multiplies through the re-encoded weight (and offsets) the way the model does.
    fn apply(weight: &QTensor, offsets: &Option<Tensor>, x: &Tensor) -> Tensor {
        let w = weight.dequantize(&Device::Cpu).expect("dequantize");
        let y = x.matmul(&w.t().expect("t")).expect("matmul");
        match offsets {
            None => y,
            Some(off) => {
                let (rows, k) = x.dims2().expect("dims");
                let sums = x.reshape((rows, k / BLOCK, BLOCK)).and_then(|s| s.sum(2)).expect("sums");
                (y + sums.matmul(off).expect("offsets")).expect("add")
            }
        }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()).expect("diff")
    }

    #[test]
    fn offset_types_reencode_exactly() {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_1] {
            let w = Tensor::randn(0f32, 1.0, (8, 64), &Device::Cpu).expect("randn");
            let q = QTensor::quantize(&w, dtype).expect("quantize");
            let expected = q.dequantize(&Device::Cpu).expect("dequantize");
            let (weight, offsets) = for_cpu_matmul(q).expect("transcode");
            assert!(offsets.is_some());
            let x = Tensor::randn(0f32, 1.0, (3, 64), &Device::Cpu).expect("x");
            let want = x.matmul(&expected.t().expect("t")).expect("matmul");
            let diff = max_diff(&want, &apply(&weight, &offsets, &x));
            assert!(diff < 1e-4, "{dtype:?}: {diff}");
        }
    }

    #[test]
    fn q5_0_widens_to_q8_0_exactly() {
        let x = Tensor::randn(0f32, 1.0, (8, 64), &Device::Cpu).expect("randn");
        let q5 = QTensor::quantize(&x, GgmlDType::Q5_0).expect("quantize");
        let expected = q5.dequantize(&Device::Cpu).expect("dequantize");
        let (q8, offsets) = for_cpu_matmul(q5).expect("transcode");
        assert!(offsets.is_none());
        assert_eq!(q8.dtype(), GgmlDType::Q8_0);
        let got = q8.dequantize(&Device::Cpu).expect("dequantize");
        assert_eq!(max_diff(&expected, &got), 0.0);
    }
}
