//! AVX2 + FMA + F16C dot products over the weight blocks (x86-64), chosen at run time.
//!
//! Every function here is compiled with those features enabled and reached only through
//! [`dot`], whose caller holds an [`crate::Isa`] that was built after
//! `is_x86_feature_detected!` confirmed all three. The only other unsafe operations are
//! unaligned loads from slices that indexing has just proven long enough.
//!
//! Per block the weights are unpacked into bytes once and multiplied with `R` activation
//! rows (`_mm256_maddubs_epi16`, unsigned weight × signed activation, then pairwise `madd`
//! into i32), so one pass over the weights serves several rows: the tiled matmul's
//! micro-kernel.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use crate::activations::Row;
use crate::blocks::WeightType;

/// Whether this CPU has what the functions here need.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// `R` dot products of the weight row `w` with `rows`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`available`]).
#[inline]
pub(crate) unsafe fn dot<const R: usize>(ty: WeightType, w: &[u8], rows: &[Row<'_>; R]) -> [f32; R] {
    // SAFETY: the caller guarantees the features these functions are compiled for.
    unsafe {
        match ty {
            WeightType::Q8_0 => q8_0(w, rows),
            WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q5_0 => q32_unsigned(ty, w, rows),
            WeightType::Q4K => q4k(w, rows),
            WeightType::Q6K => q6k(w, rows),
        }
    }
}

#[inline]
#[target_feature(enable = "avx2")]
fn load32(bytes: &[u8], at: usize) -> __m256i {
    let chunk = &bytes[at..at + 32];
    // SAFETY: `chunk` is 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn load32i(values: &[i8], at: usize) -> __m256i {
    let chunk = &values[at..at + 32];
    // SAFETY: `chunk` is 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn load16(bytes: &[u8], at: usize) -> __m128i {
    let chunk = &bytes[at..at + 16];
    // SAFETY: `chunk` is 16 readable bytes; the load is unaligned.
    unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,f16c")]
fn f16(bytes: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
}

/// Byte `i` = 0xFF where bit `i` of `x` is set.
#[inline]
#[target_feature(enable = "avx2")]
fn bits_to_bytes(x: u32) -> __m256i {
    let spread = _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0);
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x as i32), spread);
    let all_but_own_bit = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, all_but_own_bit), _mm256_set1_epi64x(-1))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0<const R: usize>(w: &[u8], rows: &[Row<'_>; R]) -> [f32; R] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, block) in w.chunks_exact(34).enumerate() {
        let d = f16(block, 0);
        let q = load32(block, 2);
        let magnitude = _mm256_sign_epi8(q, q);
        for (acc, row) in acc.iter_mut().zip(rows) {
            let a = _mm256_sign_epi8(load32i(row.qs, 32 * b), q);
            let products = _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, a), ones);
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * row.scales[b]), _mm256_cvtepi32_ps(products), *acc);
        }
    }
    let mut out = [0.0; R];
    for (o, acc) in out.iter_mut().zip(acc) {
        *o = hsum(acc);
    }
    out
}

/// Q4_0, Q4_1 and Q5_0: unsigned quants `q` with `w = d * q + c` per block, where
/// `c = m` (Q4_1) or `-8d` / `-16d`; the constant multiplies the activation block's sum.
#[target_feature(enable = "avx2,fma,f16c")]
fn q32_unsigned<const R: usize>(ty: WeightType, w: &[u8], rows: &[Row<'_>; R]) -> [f32; R] {
    let (nibbles_at, offset) = match ty {
        WeightType::Q4_0 => (2, 8.0),
        WeightType::Q4_1 => (4, 0.0),
        _ => (6, 16.0),
    };
    let (ones, low) = (_mm256_set1_epi16(1), _mm256_set1_epi8(0x0F));
    let mut acc = [_mm256_setzero_ps(); R];
    let mut constant = [0.0f32; R];
    for (b, block) in w.chunks_exact(ty.block_bytes()).enumerate() {
        let d = f16(block, 0);
        let nibbles = load16(block, nibbles_at);
        let mut q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(nibbles), nibbles), low);
        let c = match ty {
            WeightType::Q4_1 => f16(block, 2),
            WeightType::Q5_0 => {
                let high = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
                q = _mm256_or_si256(q, _mm256_and_si256(bits_to_bytes(high), _mm256_set1_epi8(0x10)));
                -offset * d
            }
            _ => -offset * d,
        };
        for ((acc, constant), row) in acc.iter_mut().zip(constant.iter_mut()).zip(rows) {
            let products = _mm256_madd_epi16(_mm256_maddubs_epi16(q, load32i(row.qs, 32 * b)), ones);
            let ad = row.scales[b];
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * ad), _mm256_cvtepi32_ps(products), *acc);
            *constant += c * ad * f32::from(row.sums[b]);
        }
    }
    let mut out = [0.0; R];
    for ((o, acc), constant) in out.iter_mut().zip(acc).zip(constant) {
        *o = hsum(acc) + constant;
    }
    out
}

/// The 8 six-bit scales (bytes 0..8) and 8 mins (bytes 8..16) of a `Q4_K` block's 12 packed
/// scale bytes, unpacked with four 32-bit operations per half instead of one lookup per
/// sub-block (the same bits as [`crate::blocks::q4k_scale_min`]).
#[inline]
fn q4k_scales_and_mins(packed: &[u8]) -> [u8; 16] {
    let word = |at: usize| u32::from_le_bytes([packed[at], packed[at + 1], packed[at + 2], packed[at + 3]]);
    let (a, b, c) = (word(0), word(4), word(8));
    let scales_low = a & 0x3f3f_3f3f;
    let mins_low = b & 0x3f3f_3f3f;
    let scales_high = (c & 0x0f0f_0f0f) | (((a >> 6) & 0x0303_0303) << 4);
    let mins_high = ((c >> 4) & 0x0f0f_0f0f) | (((b >> 6) & 0x0303_0303) << 4);
    let mut out = [0u8; 16];
    for (chunk, word) in out.chunks_exact_mut(4).zip([scales_low, scales_high, mins_low, mins_high]) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    out
}

/// `Q4_K`: per block, the sub-block loop is outside the activation-row loop, so only one
/// sub-block's quants and scale are live at a time (no register spills at `R = 4`), each
/// row's integer sum stays in a register, and the mins term is one vector multiply-add
/// against the activation sums.
#[target_feature(enable = "avx2,fma,f16c")]
fn q4k<const R: usize>(w: &[u8], rows: &[Row<'_>; R]) -> [f32; R] {
    let low = _mm256_set1_epi8(0x0F);
    // Byte k of the result is byte k / 2 of the input: each min paired with itself, matching
    // the two 16-value activation sums of its 32-value sub-block.
    let pair_up = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, block) in w.chunks_exact(144).enumerate() {
        let (d, dmin) = (f16(block, 0), f16(block, 2));
        let unpacked = q4k_scales_and_mins(&block[4..16]);
        let scales_and_mins = load16(&unpacked, 0);
        let mins = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(scales_and_mins, pair_up));
        let quants = &block[16..144];
        let mut sums = [_mm256_setzero_si256(); R];
        for j in 0..8 {
            let bytes = load32(quants, 32 * (j / 2));
            let q = if j % 2 == 0 {
                _mm256_and_si256(bytes, low)
            } else {
                _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), low)
            };
            let scale = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(scales_and_mins, _mm_set1_epi8(j as i8)));
            for (sum, row) in sums.iter_mut().zip(rows) {
                let a = load32i(row.qs, 256 * b + 32 * j);
                *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), scale));
            }
        }
        for ((acc, sum), row) in acc.iter_mut().zip(sums).zip(rows) {
            let ad = row.scales[b];
            let activation_sums = load16x16(row.sums, 16 * b);
            let min_term = _mm256_cvtepi32_ps(_mm256_madd_epi16(mins, activation_sums));
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * ad), _mm256_cvtepi32_ps(sum), *acc);
            *acc = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * ad), min_term, *acc);
        }
    }
    let mut out = [0.0; R];
    for (o, acc) in out.iter_mut().zip(acc) {
        *o = hsum(acc);
    }
    out
}

/// 16 `i16` from `values[at..at + 16]`.
#[inline]
#[target_feature(enable = "avx2")]
fn load16x16(values: &[i16], at: usize) -> __m256i {
    let chunk = &values[at..at + 16];
    // SAFETY: `chunk` is 16 readable i16 (32 bytes); the load is unaligned.
    unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) }
}

/// `Q6_K`: like [`q4k`], sub-block vectors outside the row loop. The `-32` offset is folded
/// into each row's integer sum (`32 * Σ scale * activation sum`, one `madd`), so a block
/// costs each row one float multiply-add.
#[target_feature(enable = "avx2,fma,f16c")]
fn q6k<const R: usize>(w: &[u8], rows: &[Row<'_>; R]) -> [f32; R] {
    let low = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, block) in w.chunks_exact(210).enumerate() {
        let d = f16(block, 208);
        let scale_bytes = load16(block, 192);
        let all_scales = _mm256_cvtepi8_epi16(scale_bytes);
        let mut sums = [_mm256_setzero_si256(); R];
        for (sum, row) in sums.iter_mut().zip(rows) {
            let offset = _mm256_madd_epi16(all_scales, load16x16(row.sums, 16 * b));
            *sum = _mm256_sub_epi32(*sum, _mm256_slli_epi32::<5>(offset));
        }
        // Vector v holds weights 32v..32v + 32 as 6-bit quants (offset 32 not removed); its low
        // 16 take scale 2v, its high 16 scale 2v + 1.
        for v in 0..8 {
            let (half, quarter) = (v / 4, v % 4);
            let ql = load32(block, 64 * half + 32 * (quarter % 2));
            let qh = load32(block, 128 + 32 * half);
            let low_bits =
                if quarter < 2 { _mm256_and_si256(ql, low) } else { _mm256_and_si256(_mm256_srli_epi16::<4>(ql), low) };
            let high_bits = match quarter {
                0 => _mm256_slli_epi16::<4>(_mm256_and_si256(qh, _mm256_set1_epi8(0x03))),
                1 => _mm256_slli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0x0C))),
                2 => _mm256_and_si256(qh, _mm256_set1_epi8(0x30)),
                _ => _mm256_srli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(-64))),
            };
            let q = _mm256_or_si256(low_bits, high_bits);
            let pick = _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
            let pair = _mm_add_epi8(pick, _mm_set1_epi8(2 * v as i8));
            let scale = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scale_bytes, pair));
            for (sum, row) in sums.iter_mut().zip(rows) {
                let a = load32i(row.qs, 256 * b + 32 * v);
                *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), scale));
            }
        }
        for ((acc, sum), row) in acc.iter_mut().zip(sums).zip(rows) {
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * row.scales[b]), _mm256_cvtepi32_ps(sum), *acc);
        }
    }
    let mut out = [0.0; R];
    for (o, acc) in out.iter_mut().zip(acc) {
        *o = hsum(acc);
    }
    out
}
