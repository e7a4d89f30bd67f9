//! The GGUF weight block formats these kernels read, and their plain dequantization (the
//! reference every fast path is tested against).
//!
//! Layouts as ggml stores them (little-endian, f16 scales):
//! - `Q4_0` (18 bytes / 32 weights): `d`, 16 bytes of nibbles; `w = d * (q - 8)`.
//! - `Q4_1` (20 / 32): `d`, `m`, 16 bytes of nibbles; `w = d * q + m`.
//! - `Q5_0` (22 / 32): `d`, 32 high bits, 16 bytes of low nibbles; `w = d * (q - 16)`.
//! - `Q8_0` (34 / 32): `d`, 32 signed bytes; `w = d * q`.
//! - `Q4_K` (144 / 256): `d`, `dmin`, 12 bytes of packed 6-bit scales and mins for eight
//!   sub-blocks of 32, 128 bytes of nibbles; `w = d * sc * q - dmin * m`.
//! - `Q6_K` (210 / 256): 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 signed
//!   8-bit scales (one per 16 weights), `d`; `w = d * sc * (q - 32)`.
//!
//! In the 32-weight types byte `j` of the nibbles holds weight `j` (low nibble) and weight
//! `j + 16` (high nibble).

/// A weight type the kernels multiply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightType {
    /// 4-bit, one scale per 32.
    Q4_0,
    /// 4-bit, a scale and a minimum per 32.
    Q4_1,
    /// 5-bit, one scale per 32.
    Q5_0,
    /// 8-bit, one scale per 32.
    Q8_0,
    /// 4-bit k-quant: 256 weights, 6-bit scales and mins per 32.
    Q4K,
    /// 6-bit k-quant: 256 weights, 8-bit scales per 16.
    Q6K,
}

/// How activations are quantized for a weight type: 8-bit blocks of 32 or of 256.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationBlocks {
    /// One f32 scale and one sum of quants per 32 values (ggml's `Q8_0`/`Q8_1`).
    Of32,
    /// One f32 scale per 256 values and a sum of quants per 16 (ggml's `Q8_K`).
    Of256,
}

impl WeightType {
    /// Every supported type.
    pub const ALL: [WeightType; 6] =
        [WeightType::Q4_0, WeightType::Q4_1, WeightType::Q5_0, WeightType::Q8_0, WeightType::Q4K, WeightType::Q6K];

    /// Weights per block.
    pub const fn block_values(self) -> usize {
        match self {
            WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q5_0 | WeightType::Q8_0 => 32,
            WeightType::Q4K | WeightType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            WeightType::Q4_0 => 18,
            WeightType::Q4_1 => 20,
            WeightType::Q5_0 => 22,
            WeightType::Q8_0 => 34,
            WeightType::Q4K => 144,
            WeightType::Q6K => 210,
        }
    }

    /// The activation blocks this type is multiplied with.
    pub const fn activation_blocks(self) -> ActivationBlocks {
        match self {
            WeightType::Q4K | WeightType::Q6K => ActivationBlocks::Of256,
            _ => ActivationBlocks::Of32,
        }
    }

    /// ggml's name for the type.
    pub const fn name(self) -> &'static str {
        match self {
            WeightType::Q4_0 => "Q4_0",
            WeightType::Q4_1 => "Q4_1",
            WeightType::Q5_0 => "Q5_0",
            WeightType::Q8_0 => "Q8_0",
            WeightType::Q4K => "Q4_K",
            WeightType::Q6K => "Q6_K",
        }
    }
}

/// The f16 at `bytes[at..at + 2]`, as f32.
#[inline]
pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a `Q4_K` block's 12 scale bytes.
#[inline]
pub(crate) fn q4k_scale_min(j: usize, scales: &[u8]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        ((scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))
    }
}

/// The integer quant of weight `i` of a 32-weight block, before the type's offset and scale:
/// 0..15 for the 4-bit types, 0..31 for `Q5_0`, -128..127 for `Q8_0`.
#[inline]
pub(crate) fn quant32(ty: WeightType, block: &[u8], i: usize) -> i32 {
    let nibble = |qs: &[u8]| -> i32 { if i < 16 { i32::from(qs[i] & 0x0F) } else { i32::from(qs[i - 16] >> 4) } };
    match ty {
        WeightType::Q4_0 => nibble(&block[2..18]),
        WeightType::Q4_1 => nibble(&block[4..20]),
        WeightType::Q5_0 => {
            let high = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
            nibble(&block[6..22]) | (((high >> i) & 1) as i32) << 4
        }
        WeightType::Q8_0 => i32::from(block[2 + i] as i8),
        WeightType::Q4K | WeightType::Q6K => unreachable!("quant32 is for 32-weight types"),
    }
}

/// Weight `i` (0..256) of a `Q6_K` block as its 6-bit quant (0..63) and scale index (0..16).
#[inline]
pub(crate) fn q6k_quant(block: &[u8], i: usize) -> (i32, usize) {
    let (half, rest) = (i / 128, i % 128);
    let (quarter, l) = (rest / 32, rest % 32);
    let ql = &block[64 * half..64 * half + 64];
    let qh = block[128 + 32 * half + l];
    let low = match quarter {
        0 => ql[l] & 0x0F,
        1 => ql[l + 32] & 0x0F,
        2 => ql[l] >> 4,
        _ => ql[l + 32] >> 4,
    };
    let high = (qh >> (2 * quarter)) & 3;
    (i32::from(low | (high << 4)), i / 16)
}

/// Dequantizes one block into `out` (`ty.block_values()` floats): the plain reference.
pub fn dequantize_block(ty: WeightType, block: &[u8], out: &mut [f32]) {
    debug_assert_eq!(block.len(), ty.block_bytes());
    match ty {
        WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q5_0 | WeightType::Q8_0 => {
            let d = f16_at(block, 0);
            let (offset, min) = match ty {
                WeightType::Q4_0 => (8, 0.0),
                WeightType::Q4_1 => (0, f16_at(block, 2)),
                WeightType::Q5_0 => (16, 0.0),
                _ => (0, 0.0),
            };
            for (i, o) in out.iter_mut().enumerate().take(32) {
                *o = d * (quant32(ty, block, i) - offset) as f32 + min;
            }
        }
        WeightType::Q4K => {
            let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
            let (scales, qs) = (&block[4..16], &block[16..144]);
            for (i, o) in out.iter_mut().enumerate().take(256) {
                let (chunk, l) = (i / 64, i % 64);
                let byte = qs[32 * chunk + l % 32];
                let q = if l < 32 { byte & 0x0F } else { byte >> 4 };
                let (sc, m) = q4k_scale_min(i / 32, scales);
                *o = d * f32::from(sc) * f32::from(q) - dmin * f32::from(m);
            }
        }
        WeightType::Q6K => {
            let d = f16_at(block, 208);
            for (i, o) in out.iter_mut().enumerate().take(256) {
                let (q, s) = q6k_quant(block, i);
                *o = d * f32::from(block[192 + s] as i8) * (q - 32) as f32;
            }
        }
    }
}

/// Dequantizes a row of whole blocks into `out` (`blocks * block_values` floats).
pub fn dequantize_row(ty: WeightType, row: &[u8], out: &mut [f32]) {
    for (block, out) in row.chunks_exact(ty.block_bytes()).zip(out.chunks_exact_mut(ty.block_values())) {
        dequantize_block(ty, block, out);
    }
}
