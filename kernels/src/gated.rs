//! The gated activation of a transformer's MLP, `act(gate) * up`, in one pass.
//!
//! With AVX2 and FMA the exponential is a vector polynomial (range reduction by ln 2, a degree-6
//! polynomial, the power of two put in the exponent bits; within a few ulp of libm's `expf`),
//! so GELU's tanh and SiLU's sigmoid cost a few instructions per 8 values instead of a libm call
//! each. The portable path uses the standard library's functions with the same formulas as
//! candle's operators.

use crate::{Isa, KernelError, Parallel, for_each_part};

/// Values per task.
const CHUNK: usize = 8192;

/// The activation applied to the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` (GELU, tanh approximation).
    GeluTanh,
    /// `x / (1 + e^-x)` (SiLU).
    Silu,
}

/// `out[i] = act(gate[i]) * up[i]`, tasks on `par`.
pub fn gated(
    par: &dyn Parallel,
    isa: Isa,
    act: Gate,
    gate: &[f32],
    up: &[f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    if up.len() != gate.len() {
        return Err(KernelError::Shape { what: "gated activation `up`", expected: gate.len(), found: up.len() });
    }
    if out.len() != gate.len() {
        return Err(KernelError::Shape { what: "gated activation output", expected: gate.len(), found: out.len() });
    }
    let parts: Vec<&mut [f32]> = out.chunks_mut(CHUNK).collect();
    for_each_part(par, parts, |i, out| {
        let range = i * CHUNK..i * CHUNK + out.len();
        apply(isa, act, &gate[range.clone()], &up[range], out);
    });
    Ok(())
}

fn apply(isa: Isa, act: Gate, gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::portable() {
        // SAFETY: an `Isa` other than the portable one exists only on CPUs with AVX2 and FMA.
        #[allow(unsafe_code)]
        unsafe {
            simd::apply(act, gate, up, out)
        };
        return;
    }
    let _ = isa;
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = scalar(act, g) * u;
    }
}

/// One activation, as candle computes it.
fn scalar(act: Gate, x: f32) -> f32 {
    match act {
        Gate::GeluTanh => {
            const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
            0.5 * x * (1.0 + (SQRT_TWO_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh())
        }
        Gate::Silu => x / (1.0 + (-x).exp()),
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod simd {
    use std::arch::x86_64::*;

    use super::{Gate, scalar};

    /// `e^x` for 8 lanes (inputs clamped to ±87.3, where `expf` stays finite and normal).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3)), _mm256_set1_ps(87.3));
        let n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)), 0x08);
        // r = x - n·ln 2, with ln 2 split in two so the product is exact enough.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        let bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        _mm256_mul_ps(y, _mm256_castsi256_ps(bits))
    }

    /// The activation of 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn activate(act: Gate, x: __m256) -> __m256 {
        let one = _mm256_set1_ps(1.0);
        match act {
            Gate::GeluTanh => {
                // 0.5·(1 + tanh u) = 1 / (1 + e^{-2u}): GELU is x·sigmoid(2u), with no
                // cancellation where tanh u is near -1.
                let x2 = _mm256_mul_ps(x, x);
                let inner = _mm256_fmadd_ps(_mm256_set1_ps(0.044_715), x2, one);
                let minus_two_u = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0 * 0.797_884_6), x), inner);
                _mm256_div_ps(x, _mm256_add_ps(one, exp(minus_two_u)))
            }
            Gate::Silu => {
                let neg = _mm256_sub_ps(_mm256_setzero_ps(), x);
                _mm256_div_ps(x, _mm256_add_ps(one, exp(neg)))
            }
        }
    }

    /// [`super::apply`] with AVX2 and FMA.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn apply(act: Gate, gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = gate.len().min(up.len()).min(out.len());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n` and every slice holds at least `n` floats; unaligned accesses.
            unsafe {
                let g = _mm256_loadu_ps(gate.as_ptr().add(i));
                let u = _mm256_loadu_ps(up.as_ptr().add(i));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(activate(act, g), u));
            }
            i += 8;
        }
        for j in i..n {
            out[j] = scalar(act, gate[j]) * up[j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rayon;

    fn inputs() -> Vec<f32> {
        // Dense around zero, then out to where the activations saturate, both signs, and a
        // length that leaves a tail after the 8-lane loop and spans several tasks.
        let mut xs: Vec<f32> = (-4000..4000).map(|i| i as f32 / 400.0).collect();
        xs.extend([-200.0, -90.0, -88.0, -30.0, -1e-30, 0.0, 1e-30, 30.0, 88.0, 90.0, 200.0]);
        xs.extend((0..8200).map(|i| ((i * 7919) % 2000) as f32 / 100.0 - 10.0));
        xs
    }

    #[test]
    fn both_paths_match_the_formulas_in_f64() {
        let xs = inputs();
        let up: Vec<f32> = xs.iter().enumerate().map(|(i, _)| 0.5 + (i % 7) as f32 * 0.25).collect();
        for isa in [Isa::portable(), Isa::detect()] {
            for act in [Gate::GeluTanh, Gate::Silu] {
                let mut out = vec![f32::NAN; xs.len()];
                gated(&Rayon, isa, act, &xs, &up, &mut out).unwrap();
                for ((&x, &u), &got) in xs.iter().zip(&up).zip(&out) {
                    let x64 = f64::from(x);
                    let want = f64::from(u)
                        * match act {
                            Gate::GeluTanh => {
                                0.5 * x64
                                    * (1.0
                                        + ((2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3))).tanh())
                            }
                            Gate::Silu => x64 / (1.0 + (-x64).exp()),
                        };
                    let err = (f64::from(got) - want).abs();
                    assert!(err <= 2e-6 * want.abs().max(1.0), "{} {act:?}({x}) * {u}: {got} vs {want}", isa.name());
                }
            }
        }
    }

    #[test]
    fn mismatched_lengths_are_named() {
        let mut out = vec![0.0; 3];
        let err = gated(&Rayon, Isa::portable(), Gate::Silu, &[1.0; 3], &[1.0; 2], &mut out).unwrap_err();
        assert!(err.to_string().contains("`up`: expected 3 values, found 2"), "{err}");
        let err = gated(&Rayon, Isa::portable(), Gate::Silu, &[1.0; 3], &[1.0; 3], &mut out[..1]).unwrap_err();
        assert!(err.to_string().contains("output"), "{err}");
    }
}
