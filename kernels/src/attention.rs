//! Scaled dot-product attention over f32 key/value caches, for every sequence of a step at once.
//!
//! A decode step of eight sequences is eight single-row attentions against eight caches: as
//! separate tensor operations each costs more to dispatch than to compute. Here one call covers
//! them all, the tasks split by (sequence, query rows), and the caches are read in place.
//!
//! Layouts (row-major f32):
//! - queries `[heads, total, head_dim]`, where `total` is every sequence's rows together;
//! - each cache `[positions, kv_heads, head_dim]`, position-major, so appending a token is one
//!   contiguous copy and growing the cache never moves what is stored;
//! - the output `[total, heads * head_dim]`, the layout the output projection reads.
//!
//! Query head `h` reads key head `h / (heads / kv_heads)` (grouped-query attention). A query at
//! position `p` sees keys `0..=p`, or with a sliding window `w` only those with `p - key < w`.

use crate::{Isa, KernelError, Parallel, for_each_part};

/// Query rows handed to one task.
const ROWS_PER_TASK: usize = 4;

/// The head counts and size of one attention layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (`heads` is a multiple of it).
    pub kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
}

/// One sequence's query rows and its cache.
#[derive(Clone, Copy, Debug)]
pub struct Sequence<'a> {
    /// Its query rows (they follow the previous sequence's in the query buffer and the output).
    pub rows: usize,
    /// The position of its first query row; the cache holds positions `0..start + rows`.
    pub start: usize,
    /// Keys, `[positions, kv_heads, head_dim]` (longer is fine: only `start + rows` are read).
    pub keys: &'a [f32],
    /// Values, laid out as the keys.
    pub values: &'a [f32],
}

/// `out = softmax(scale · q·Kᵀ) · V` per sequence and head, with causal (and optional sliding
/// window) visibility; see the module's layouts. Tasks run on `par`.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    par: &dyn Parallel,
    isa: Isa,
    heads: Heads,
    scale: f32,
    window: Option<usize>,
    queries: &[f32],
    sequences: &[Sequence<'_>],
    out: &mut [f32],
) -> Result<(), KernelError> {
    let Heads { heads: h, kv_heads, head_dim } = heads;
    if h == 0 || kv_heads == 0 || head_dim == 0 || !h.is_multiple_of(kv_heads) {
        return Err(KernelError::Shape {
            what: "query heads (a non-zero multiple of kv_heads)",
            expected: kv_heads,
            found: h,
        });
    }
    if window == Some(0) {
        return Err(KernelError::Shape { what: "sliding window", expected: 1, found: 0 });
    }
    let total: usize = sequences.iter().map(|s| s.rows).sum();
    if queries.len() != h * total * head_dim {
        return Err(KernelError::Shape {
            what: "attention queries",
            expected: h * total * head_dim,
            found: queries.len(),
        });
    }
    if out.len() != total * h * head_dim {
        return Err(KernelError::Shape { what: "attention output", expected: total * h * head_dim, found: out.len() });
    }
    for s in sequences {
        let needed = (s.start + s.rows) * kv_heads * head_dim;
        if s.keys.len() < needed || s.values.len() < needed {
            return Err(KernelError::Shape {
                what: "cached keys/values",
                expected: needed,
                found: s.keys.len().min(s.values.len()),
            });
        }
    }

    // Tasks: (sequence, its rows first..first + n, the output rows they own).
    let mut tasks = Vec::new();
    let mut rest = out;
    let mut row = 0;
    for (index, s) in sequences.iter().enumerate() {
        let mut first = 0;
        while first < s.rows {
            let n = (s.rows - first).min(ROWS_PER_TASK);
            let (mine, tail) = rest.split_at_mut(n * h * head_dim);
            tasks.push((index, row + first, s.start + first, n, mine));
            rest = tail;
            first += n;
        }
        row += s.rows;
    }
    let longest = sequences.iter().map(|s| s.start + s.rows).max().unwrap_or(0);
    let groups = h / kv_heads;
    for_each_part(par, tasks, |_, (index, row, position, n, out)| {
        let s = &sequences[index];
        let mut scores = vec![0.0f32; longest];
        for i in 0..n {
            let p = position + i;
            let first = window.map_or(0, |w| (p + 1).saturating_sub(w));
            for head in 0..h {
                let q = &queries[(head * total + row + i) * head_dim..][..head_dim];
                let o = &mut out[(i * h + head) * head_dim..][..head_dim];
                let view = Head { keys: s.keys, values: s.values, kv_heads, head_dim, kv_head: head / groups };
                view.attend(isa, q, first, p, scale, &mut scores[..p + 1 - first], o);
            }
        }
    });
    Ok(())
}

/// One key/value head of one cache.
struct Head<'a> {
    keys: &'a [f32],
    values: &'a [f32],
    kv_heads: usize,
    head_dim: usize,
    kv_head: usize,
}

impl Head<'_> {
    fn key(&self, position: usize) -> &[f32] {
        &self.keys[(position * self.kv_heads + self.kv_head) * self.head_dim..][..self.head_dim]
    }

    fn value(&self, position: usize) -> &[f32] {
        &self.values[(position * self.kv_heads + self.kv_head) * self.head_dim..][..self.head_dim]
    }

    /// `out = Σ softmax(scale · q·k)·v` over positions `first..=last`; `scores` has one slot each.
    #[allow(clippy::too_many_arguments)]
    fn attend(&self, isa: Isa, q: &[f32], first: usize, last: usize, scale: f32, scores: &mut [f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::portable() {
            // SAFETY: an `Isa` other than the portable one exists only on CPUs with AVX2 and FMA.
            #[allow(unsafe_code)]
            unsafe {
                simd::attend(self, q, first, last, scale, scores, out)
            };
            return;
        }
        let _ = isa;
        self.attend_with(q, first, last, scale, scores, out, portable_dot, portable_axpy);
    }

    /// The shared body; `dot` and `axpy` are the vector primitives of one instruction set.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn attend_with(
        &self,
        q: &[f32],
        first: usize,
        last: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
        dot: impl Fn(&[f32], &[f32]) -> f32,
        axpy: impl Fn(f32, &[f32], &mut [f32]),
    ) {
        let mut max = f32::NEG_INFINITY;
        for (s, position) in scores.iter_mut().zip(first..=last) {
            *s = dot(q, self.key(position)) * scale;
            max = max.max(*s);
        }
        let mut sum = 0.0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        out.fill(0.0);
        let norm = 1.0 / sum;
        for (&s, position) in scores.iter().zip(first..=last) {
            axpy(s * norm, self.value(position), out);
        }
    }
}

fn portable_dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums, as the SIMD path keeps, so both round alike.
    let mut acc = [0.0f32; 8];
    let (chunks, tail) = (a.len() / 8, a.len() % 8);
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[8 * c + l] * b[8 * c + l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in a.len() - tail..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

fn portable_axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod simd {
    use std::arch::x86_64::*;

    use super::Head;

    /// [`Head::attend`] with AVX2 and FMA.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn attend(
        head: &Head<'_>,
        q: &[f32],
        first: usize,
        last: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        // The closures inherit this function's target features, so they call the AVX2 primitives
        // (and inline them) directly.
        head.attend_with(q, first, last, scale, scores, out, |a, b| dot(a, b), |alpha, x, y| axpy(alpha, x, y));
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pair = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: `i + 16 <= n`, both slices hold `n` floats; the loads are unaligned.
            unsafe {
                even = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)), even);
                odd = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                    _mm256_loadu_ps(b.as_ptr().add(i + 8)),
                    odd,
                );
            }
            i += 16;
        }
        let mut sum = hsum(_mm256_add_ps(even, odd));
        for j in i..n {
            sum += a[j] * b[j];
        }
        sum
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        let a = _mm256_set1_ps(alpha);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n`, both slices hold `n` floats; the accesses are unaligned.
            unsafe {
                let at = y.as_mut_ptr().add(i);
                _mm256_storeu_ps(at, _mm256_fmadd_ps(a, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(at)));
            }
            i += 8;
        }
        for j in i..n {
            y[j] += alpha * x[j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rayon;

    /// A plain reference: scores in f64, softmax, weighted sum, for one sequence.
    fn reference(
        heads: Heads,
        scale: f32,
        window: Option<usize>,
        q: &[f32],
        total: usize,
        row: usize,
        s: &Sequence<'_>,
    ) -> Vec<f32> {
        let Heads { heads: h, kv_heads, head_dim: d } = heads;
        let mut out = vec![0.0f32; s.rows * h * d];
        for i in 0..s.rows {
            let p = s.start + i;
            for head in 0..h {
                let g = head / (h / kv_heads);
                let visible: Vec<usize> = (0..=p).filter(|&k| window.is_none_or(|w| p - k < w)).collect();
                let scores: Vec<f64> = visible
                    .iter()
                    .map(|&k| {
                        (0..d)
                            .map(|j| {
                                f64::from(q[(head * total + row + i) * d + j])
                                    * f64::from(s.keys[(k * kv_heads + g) * d + j])
                            })
                            .sum::<f64>()
                            * f64::from(scale)
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = exps.iter().sum();
                for j in 0..d {
                    let v: f64 = visible
                        .iter()
                        .zip(&exps)
                        .map(|(&k, e)| e * f64::from(s.values[(k * kv_heads + g) * d + j]))
                        .sum();
                    out[(i * h + head) * d + j] = (v / sum) as f32;
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn check(isa: Isa, heads: Heads, window: Option<usize>, shape: &[(usize, usize)]) {
        let Heads { heads: h, kv_heads, head_dim: d } = heads;
        let total: usize = shape.iter().map(|&(rows, _)| rows).sum();
        let q = values(h * total * d, 7);
        let caches: Vec<(Vec<f32>, Vec<f32>)> = shape
            .iter()
            .enumerate()
            .map(|(i, &(rows, start))| {
                // Longer than needed, as a grown cache is.
                let len = (start + rows + 3) * kv_heads * d;
                (values(len, 100 + i as u32), values(len, 200 + i as u32))
            })
            .collect();
        let sequences: Vec<Sequence<'_>> = shape
            .iter()
            .zip(&caches)
            .map(|(&(rows, start), (k, v))| Sequence { rows, start, keys: k, values: v })
            .collect();
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![f32::NAN; total * h * d];
        attend(&Rayon, isa, heads, scale, window, &q, &sequences, &mut out).unwrap();
        let mut row = 0;
        for s in &sequences {
            let want = reference(heads, scale, window, &q, total, row, s);
            let got = &out[row * h * d..(row + s.rows) * h * d];
            for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 + 1e-4 * w.abs(),
                    "{} {heads:?} {window:?} {shape:?}: value {j}: {g} vs {w}",
                    isa.name()
                );
            }
            row += s.rows;
        }
    }

    fn isas() -> Vec<Isa> {
        let mut all = vec![Isa::portable()];
        if Isa::detect() != Isa::portable() {
            all.push(Isa::detect());
        }
        all
    }

    #[test]
    fn matches_a_plain_softmax_for_decode_prefill_and_mixed_steps() {
        for isa in isas() {
            for heads in [
                Heads { heads: 4, kv_heads: 1, head_dim: 256 },
                Heads { heads: 6, kv_heads: 2, head_dim: 20 },
                Heads { heads: 3, kv_heads: 3, head_dim: 9 },
            ] {
                for window in [None, Some(1), Some(5)] {
                    // Eight decode rows at different positions; a prompt chunk after a prefix;
                    // a fresh prompt beside decode rows.
                    check(isa, heads, window, &[(1, 0), (1, 3), (1, 17), (1, 8), (1, 1), (1, 30), (1, 2), (1, 9)]);
                    check(isa, heads, window, &[(11, 6)]);
                    check(isa, heads, window, &[(1, 4), (7, 0), (1, 12)]);
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_named() {
        let (k, v) = (vec![0.0; 8], vec![0.0; 8]);
        let s = [Sequence { rows: 1, start: 1, keys: &k, values: &v }];
        let heads = Heads { heads: 2, kv_heads: 1, head_dim: 4 };
        let q = vec![0.0; 8];
        let mut out = vec![0.0; 8];
        assert!(attend(&Rayon, Isa::portable(), heads, 1.0, None, &q, &s, &mut out).is_ok());
        let err = attend(&Rayon, Isa::portable(), heads, 1.0, None, &q[..4], &s, &mut out).unwrap_err();
        assert!(err.to_string().contains("attention queries"), "{err}");
        let short = [Sequence { rows: 1, start: 2, keys: &k, values: &v }];
        let err = attend(&Rayon, Isa::portable(), heads, 1.0, None, &q, &short, &mut out).unwrap_err();
        assert!(err.to_string().contains("cached keys/values: expected 12"), "{err}");
        let odd = Heads { heads: 3, kv_heads: 2, head_dim: 4 };
        assert!(attend(&Rayon, Isa::portable(), odd, 1.0, None, &q, &s, &mut out).is_err());
        assert!(attend(&Rayon, Isa::portable(), heads, 1.0, Some(0), &q, &s, &mut out).is_err());
    }
}
