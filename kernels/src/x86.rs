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
use crate::blocks::{WeightType, q4k_scale_min};

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

#[target_feature(enable = "avx2,fma,f16c")]
fn q4k<const R: usize>(w: &[u8], rows: &[Row<'_>; R]) -> [f32; R] {
    let low = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut mins = [0.0f32; R];
    for (b, block) in w.chunks_exact(144).enumerate() {
        let (d, dmin) = (f16(block, 0), f16(block, 2));
        let mut scales = [_mm256_setzero_si256(); 8];
        let mut min_of = [0i32; 8];
        for (j, (scale, min)) in scales.iter_mut().zip(min_of.iter_mut()).enumerate() {
            let (sc, m) = q4k_scale_min(j, &block[4..16]);
            *scale = _mm256_set1_epi16(i16::from(sc));
            *min = i32::from(m);
        }
        let mut q = [_mm256_setzero_si256(); 8];
        for chunk in 0..4 {
            let bytes = load32(block, 16 + 32 * chunk);
            q[2 * chunk] = _mm256_and_si256(bytes, low);
            q[2 * chunk + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), low);
        }
        for ((acc, mins), row) in acc.iter_mut().zip(mins.iter_mut()).zip(rows) {
            let mut sum = _mm256_setzero_si256();
            for j in 0..8 {
                let a = load32i(row.qs, 256 * b + 32 * j);
                sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(q[j], a), scales[j]));
            }
            let sums = &row.sums[16 * b..16 * b + 16];
            let mut m = 0i32;
            for (j, &min) in min_of.iter().enumerate() {
                m += min * (i32::from(sums[2 * j]) + i32::from(sums[2 * j + 1]));
            }
            let ad = row.scales[b];
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * ad), _mm256_cvtepi32_ps(sum), *acc);
            *mins += dmin * ad * m as f32;
        }
    }
    let mut out = [0.0; R];
    for ((o, acc), mins) in out.iter_mut().zip(acc).zip(mins) {
        *o = hsum(acc) - mins;
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q6k<const R: usize>(w: &[u8], rows: &[Row<'_>; R]) -> [f32; R] {
    let low = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut offsets = [0.0f32; R];
    for (b, block) in w.chunks_exact(210).enumerate() {
        let d = f16(block, 208);
        let sc: [i8; 16] = std::array::from_fn(|g| block[192 + g] as i8);
        // Vector v holds weights 32v..32v + 32 (as 6-bit quants, offset 32 not yet removed).
        let mut q = [_mm256_setzero_si256(); 8];
        for half in 0..2 {
            let ql0 = load32(block, 64 * half);
            let ql1 = load32(block, 64 * half + 32);
            let qh = load32(block, 128 + 32 * half);
            let (h0, h1) = (_mm256_and_si256(qh, _mm256_set1_epi8(0x03)), _mm256_and_si256(qh, _mm256_set1_epi8(0x0C)));
            let (h2, h3) = (_mm256_and_si256(qh, _mm256_set1_epi8(0x30)), _mm256_and_si256(qh, _mm256_set1_epi8(-64)));
            q[4 * half] = _mm256_or_si256(_mm256_and_si256(ql0, low), _mm256_slli_epi16::<4>(h0));
            q[4 * half + 1] = _mm256_or_si256(_mm256_and_si256(ql1, low), _mm256_slli_epi16::<2>(h1));
            q[4 * half + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low), h2);
            q[4 * half + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low), _mm256_srli_epi16::<2>(h3));
        }
        let mut scales = [_mm256_setzero_si256(); 8];
        for (v, scale) in scales.iter_mut().enumerate() {
            *scale = _mm256_set_m128i(_mm_set1_epi16(i16::from(sc[2 * v + 1])), _mm_set1_epi16(i16::from(sc[2 * v])));
        }
        for ((acc, offsets), row) in acc.iter_mut().zip(offsets.iter_mut()).zip(rows) {
            let mut sum = _mm256_setzero_si256();
            for (v, (&q, &scale)) in q.iter().zip(&scales).enumerate() {
                let a = load32i(row.qs, 256 * b + 32 * v);
                sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), scale));
            }
            let sums = &row.sums[16 * b..16 * b + 16];
            let offset: i32 = sc.iter().zip(sums).map(|(&s, &a)| i32::from(s) * i32::from(a)).sum();
            let dd = d * row.scales[b];
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(sum), *acc);
            *offsets += 32.0 * dd * offset as f32;
        }
    }
    let mut out = [0.0; R];
    for ((o, acc), offsets) in out.iter_mut().zip(acc).zip(offsets) {
        *o = hsum(acc) - offsets;
    }
    out
}
