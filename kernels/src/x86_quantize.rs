//! AVX2 activation quantizers (x86-64): blocks of 32 and of 256 values to 8 bits, giving the
//! scalar loops' bytes exactly (round half to even). Reached only from [`crate::activations`]
//! after `is_x86_feature_detected!` confirmed AVX2; the only other unsafe operations are
//! unaligned loads from slices that indexing has just proven long enough.

#![allow(unsafe_code)]

use std::arch::x86_64::*;

#[inline]
#[target_feature(enable = "avx2")]
fn load8(x: &[f32], at: usize) -> __m256 {
    let chunk = &x[at..at + 8];
    // SAFETY: `chunk` is 8 readable floats; the load is unaligned.
    unsafe { _mm256_loadu_ps(chunk.as_ptr()) }
}

/// The largest of the vector's lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<1>(m, m)))
}

/// The sum of the vector's `i32` lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b00_00_00_01>(s)))
}

/// The largest magnitude among `x`'s values (`x.len()` a multiple of 8; NaNs are passed over).
#[inline]
#[target_feature(enable = "avx2")]
fn amax(x: &[f32]) -> f32 {
    let magnitude = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for at in (0..x.len()).step_by(8) {
        // maxps returns its second operand when either is NaN: a NaN value keeps the running max.
        m = _mm256_max_ps(_mm256_andnot_ps(magnitude, load8(x, at)), m);
    }
    hmax(m)
}

/// 32 values `x[at..at + 32]` times `inverse`, rounded to the nearest integer (ties to even, the
/// CPU's rounding mode), saturated to `i8` into `qs[at..at + 32]`; returns the sums of the two
/// halves' quants.
#[inline]
#[target_feature(enable = "avx2")]
fn round32(x: &[f32], at: usize, inverse: __m256, qs: &mut [i8]) -> (i32, i32) {
    let q = |j: usize| _mm256_cvtps_epi32(_mm256_mul_ps(load8(x, at + 8 * j), inverse));
    let (a, b, c, d) = (q(0), q(1), q(2), q(3));
    // packs works within 128-bit lanes; the permute puts the four groups of 8 back in order.
    let packed = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
    let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let out = &mut qs[at..at + 32];
    // SAFETY: `out` is 32 writable bytes; the store is unaligned.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), ordered) };
    (hsum_i32(_mm256_add_epi32(a, b)), hsum_i32(_mm256_add_epi32(c, d)))
}

/// [`crate::activations`]' blocks of 32 (scale `amax / 127`, stored rounded to f16), the same
/// values as its scalar loop: `(scale, sum of quants)`.
#[target_feature(enable = "avx2")]
pub(crate) fn quantize_block_32(x: &[f32], qs: &mut [i8]) -> (f32, i16) {
    let d = amax(&x[..32]) / 127.0;
    let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
    let (low, high) = round32(x, 0, _mm256_set1_ps(inverse), qs);
    (d, (low + high) as i16)
}

/// [`crate::activations`]' blocks of 256 (ggml's `Q8_K`: scale `max / -127` for the value of
/// largest magnitude), the same values as its scalar loop, sums per 16 into `sums`; returns the
/// scale. `x` and `qs` hold 256 values, `sums` 16.
#[target_feature(enable = "avx2")]
pub(crate) fn quantize_block_256(x: &[f32], qs: &mut [i8], sums: &mut [i16]) -> f32 {
    let largest = amax(&x[..256]);
    // The first value of that magnitude, as the scalar loop keeps.
    let Some(&max) = x.iter().find(|v| v.abs() == largest).filter(|_| largest != 0.0) else {
        qs.fill(0);
        sums.fill(0);
        return 0.0;
    };
    let inverse = -127.0 / max;
    for g in 0..8 {
        let (low, high) = round32(x, 32 * g, _mm256_set1_ps(inverse), qs);
        sums[2 * g] = low as i16;
        sums[2 * g + 1] = high as i16;
    }
    1.0 / inverse
}
