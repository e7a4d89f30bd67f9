//! Q8_0 weights re-laid out in tiles of 16 rows for AVX-512 VNNI: one `vpdpbusd` multiplies
//! four weights of each of 16 rows by the same four activations, so each activation load serves
//! 16 output rows instead of one (the row-at-a-time kernels in `x86` load every activation once
//! per weight row).
//!
//! Layout of tile `t` (rows `16t..16t + 16`), block `b` (columns `32b..32b + 32`):
//! - `scales[(t * blocks + b) * 16 + r]`: row `r`'s block scale, as f32;
//! - `quants[((t * blocks + b) * 8 + g) * 64 + 4r + j]`: weight `32b + 4g + j` of row `r`, plus
//!   128 (so it is unsigned, as `vpdpbusd` wants); `Σ (q + 128)·a = Σ q·a + 128 Σ a`, and the
//!   activation block's sum is at hand.
//!
//! [`crate::QuantizedMatrix::into_fastest`] switches a matrix to this layout where the CPU has
//! AVX-512 VNNI; elsewhere a scalar loop over the same layout keeps it correct (and testable).

use crate::activations::{QuantizedActivations, Row};
use crate::blocks::{WeightType, f16_at};
use crate::{Parallel, for_each_part};

/// Rows per tile.
pub(crate) const TILE_ROWS: usize = 16;
/// Tiles handed to one task.
const TILES_PER_TASK: usize = 4;

/// Where weight `k` (0..32) of row `r` (0..16) of block `block` (`tile * blocks + b`) sits in
/// `quants` (see the module's layout); the block's 512 bytes start at `quant_at(block, 0, 0)`.
#[inline]
fn quant_at(block: usize, r: usize, k: usize) -> usize {
    (block * 8 + k / 4) * 64 + 4 * r + k % 4
}

/// A Q8_0 matrix in 16-row tiles.
#[derive(Clone, Debug)]
pub(crate) struct TiledQ8 {
    rows: usize,
    cols: usize,
    scales: Vec<f32>,
    quants: Vec<u8>,
}

impl TiledQ8 {
    /// Why a `ty` matrix of `rows` rows cannot be tiled, if it cannot.
    pub(crate) fn refusal(ty: WeightType, rows: usize) -> Option<&'static str> {
        if ty != WeightType::Q8_0 {
            Some("only Q8_0 matrices are tiled")
        } else if !rows.is_multiple_of(TILE_ROWS) {
            Some("tiles need a multiple of 16 rows")
        } else {
            None
        }
    }

    /// Re-lays out a Q8_0 matrix (`rows` a multiple of 16, `data` its GGUF blocks row after
    /// row; the caller checks both).
    pub(crate) fn from_blocks(rows: usize, cols: usize, data: &[u8]) -> Self {
        debug_assert!(rows.is_multiple_of(TILE_ROWS) && data.len() == rows * cols / 32 * 34);
        let blocks = cols / 32;
        let mut scales = vec![0.0f32; rows * blocks];
        let mut quants = vec![0u8; rows * cols];
        for row in 0..rows {
            let (t, r) = (row / TILE_ROWS, row % TILE_ROWS);
            for (b, block) in data[row * cols / 32 * 34..(row + 1) * cols / 32 * 34].chunks_exact(34).enumerate() {
                scales[(t * blocks + b) * TILE_ROWS + r] = f16_at(block, 0);
                for (k, &q) in block[2..].iter().enumerate() {
                    quants[quant_at(t * blocks + b, r, k)] = (q as i8 as i16 + 128) as u8;
                }
            }
        }
        Self { rows, cols, scales, quants }
    }

    /// Bytes of weights and scales.
    pub(crate) fn bytes(&self) -> usize {
        self.quants.len() + 4 * self.scales.len()
    }

    /// Row `i` dequantized into `out` (`cols` floats).
    pub(crate) fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        let (t, r, blocks) = (i / TILE_ROWS, i % TILE_ROWS, self.cols / 32);
        for (b, out) in out.chunks_exact_mut(32).enumerate() {
            let d = self.scales[(t * blocks + b) * TILE_ROWS + r];
            for (k, o) in out.iter_mut().enumerate() {
                let q = i32::from(self.quants[quant_at(t * blocks + b, r, k)]) - 128;
                *o = d * q as f32;
            }
        }
    }

    /// Whether this CPU runs the VNNI kernel (otherwise a scalar loop over the same layout).
    pub(crate) fn accelerated() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            vnni::available()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// `out = acts · Wᵀ` (`[m, rows]`), tasks on `par`, with the VNNI kernel when
    /// `accelerated` and the CPU has it, the scalar loop otherwise. The caller checks shapes.
    pub(crate) fn multiply(&self, par: &dyn Parallel, accelerated: bool, acts: &QuantizedActivations, out: &mut [f32]) {
        let m = acts.rows();
        let rows: Vec<Row<'_>> = (0..m).map(|i| acts.row(i)).collect();
        let tiles = self.rows / TILE_ROWS;
        let blocks = self.cols / 32;
        // Each task computes its tiles for every activation row into its own [m, tiles * 16].
        let tasks = tiles.div_ceil(TILES_PER_TASK);
        let mut parts: Vec<Vec<f32>> = (0..tasks)
            .map(|task| vec![0.0f32; m * TILE_ROWS * (tiles - task * TILES_PER_TASK).min(TILES_PER_TASK)])
            .collect();
        let accelerated = accelerated && Self::accelerated();
        for_each_part(par, parts.iter_mut().collect(), |task, part: &mut Vec<f32>| {
            let width = part.len() / m;
            for local in 0..width / TILE_ROWS {
                let t = task * TILES_PER_TASK + local;
                let quants = &self.quants[t * blocks * 512..(t + 1) * blocks * 512];
                let scales = &self.scales[t * blocks * TILE_ROWS..(t + 1) * blocks * TILE_ROWS];
                let mut i = 0;
                while i < m {
                    let take = (m - i).min(4);
                    let mut got = [[0.0f32; TILE_ROWS]; 4];
                    tile_dot(accelerated, quants, scales, &rows[i..i + take], &mut got[..take]);
                    for (k, values) in got[..take].iter().enumerate() {
                        let at = (i + k) * width + local * TILE_ROWS;
                        part[at..at + TILE_ROWS].copy_from_slice(values);
                    }
                    i += take;
                }
            }
        });
        for (task, part) in parts.iter().enumerate() {
            let width = part.len() / m;
            let first = task * TILES_PER_TASK * TILE_ROWS;
            for (i, values) in part.chunks_exact(width).enumerate() {
                out[i * self.rows + first..i * self.rows + first + width].copy_from_slice(values);
            }
        }
    }
}

/// One tile against up to four activation rows.
fn tile_dot(accelerated: bool, quants: &[u8], scales: &[f32], rows: &[Row<'_>], out: &mut [[f32; TILE_ROWS]]) {
    #[cfg(target_arch = "x86_64")]
    if accelerated {
        // SAFETY: `accelerated` is `vnni::available()`.
        #[allow(unsafe_code)]
        unsafe {
            match rows.len() {
                4 => vnni::tile::<4>(quants, scales, rows, out),
                3 => vnni::tile::<3>(quants, scales, rows, out),
                2 => vnni::tile::<2>(quants, scales, rows, out),
                _ => vnni::tile::<1>(quants, scales, rows, out),
            }
        }
        return;
    }
    let _ = accelerated;
    let blocks = scales.len() / TILE_ROWS;
    for (row, out) in rows.iter().zip(out.iter_mut()) {
        *out = [0.0; TILE_ROWS];
        for b in 0..blocks {
            for (r, o) in out.iter_mut().enumerate() {
                let mut sum = 0i32;
                for k in 0..32 {
                    sum += i32::from(quants[quant_at(b, r, k)]) * i32::from(row.qs[32 * b + k]);
                }
                sum -= 128 * i32::from(row.sums[b]);
                *o += scales[b * TILE_ROWS + r] * row.scales[b] * sum as f32;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod vnni {
    use std::arch::x86_64::*;

    use super::TILE_ROWS;
    use crate::activations::Row;

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }

    /// The four activation bytes `qs[at..at + 4]` in every 32-bit lane.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn broadcast4(qs: &[i8], at: usize) -> __m512i {
        let four = &qs[at..at + 4];
        _mm512_set1_epi32(i32::from_le_bytes([four[0] as u8, four[1] as u8, four[2] as u8, four[3] as u8]))
    }

    /// # Safety
    /// The CPU must have AVX512F, AVX512BW and AVX512-VNNI ([`available`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile<const R: usize>(
        quants: &[u8],
        scales: &[f32],
        rows: &[Row<'_>],
        out: &mut [[f32; TILE_ROWS]],
    ) {
        let blocks = scales.len() / TILE_ROWS;
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..blocks {
            let block = &quants[b * 512..b * 512 + 512];
            // Two accumulators per row, so the dpbusd chains are half as long.
            let mut even = [_mm512_setzero_si512(); R];
            let mut odd = [_mm512_setzero_si512(); R];
            for g in (0..8).step_by(2) {
                // SAFETY: `block` holds 512 bytes; each load reads 64 of them, unaligned.
                let (w0, w1) = unsafe {
                    (
                        _mm512_loadu_si512(block[64 * g..].as_ptr().cast()),
                        _mm512_loadu_si512(block[64 * g + 64..].as_ptr().cast()),
                    )
                };
                for r in 0..R {
                    even[r] = _mm512_dpbusd_epi32(even[r], w0, broadcast4(rows[r].qs, 32 * b + 4 * g));
                    odd[r] = _mm512_dpbusd_epi32(odd[r], w1, broadcast4(rows[r].qs, 32 * b + 4 * g + 4));
                }
            }
            let row_scales = &scales[b * TILE_ROWS..b * TILE_ROWS + TILE_ROWS];
            // SAFETY: 16 floats, unaligned.
            let weight_scales = unsafe { _mm512_loadu_ps(row_scales.as_ptr()) };
            for r in 0..R {
                let sum = _mm512_sub_epi32(
                    _mm512_add_epi32(even[r], odd[r]),
                    _mm512_set1_epi32(128 * i32::from(rows[r].sums[b])),
                );
                let scale = _mm512_mul_ps(weight_scales, _mm512_set1_ps(rows[r].scales[b]));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc[r]);
            }
        }
        for r in 0..R {
            // SAFETY: `out[r]` is 16 floats.
            unsafe { _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]) };
        }
    }
}
