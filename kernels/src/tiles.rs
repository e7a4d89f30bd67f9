//! Weights re-laid out in tiles of 16 rows for AVX-512 VNNI: one `vpdpbusd` multiplies four
//! weights of each of 16 rows by the same four activations, so each activation load serves 16
//! output rows instead of one (the row-at-a-time kernels in `x86` load every activation once per
//! weight row). `Q8_0`, `Q5_0`, `Q4_K` and `Q6_K` are tiled; each takes as many bytes as in GGUF (`Q4_K`
//! 4 bytes more per row and 256 weights, its scales unpacked to whole bytes), so a tiled matrix
//! replaces its blocks instead of sitting beside them.
//!
//! The weights of tile `t` (rows `16t..16t + 16`) and block `b` (one GGUF block's columns) form
//! one unit of `unit_bytes` bytes at `(t * blocks + b) * unit_bytes`, read front to back:
//!
//! - **`Q8_0`** (32 columns, 544 bytes): `[0, 512)` quants, byte `64g + 4r + j` = weight
//!   `4g + j` of row `r` plus 128 (unsigned, as `vpdpbusd` wants; `Σ (q + 128)·a = Σ q·a +
//!   128 Σ a`, and the activation block's sum is at hand); `[512, 544)` the 16 rows' f16 scales.
//! - **`Q5_0`** (32 columns, 352 bytes): `[0, 256)` the low four bits of each quant, packed as
//!   `Q4_K`'s below; `[256, 320)` the fifth bits, one 64-bit mask per group of four columns
//!   `g` at `256 + 8g` whose bit `4r + j` belongs to weight `4g + j` of row `r` (AVX-512BW
//!   turns a mask into bytes in one instruction); `[320, 352)` the rows' f16 `d`.
//!   Weight = `d·(q − 16)`.
//! - **`Q4_K`** (256 columns, 2368 bytes): `[0, 2048)` quants, byte `64p + 4r + j` holds weight
//!   `8p + j` of row `r` in its low nibble and weight `8p + 4 + j` in its high nibble (one load,
//!   two `vpdpbusd` operands); `[2048, 2176)` the six-bit scale of sub-block `s` (32 weights)
//!   of row `r` at `16s + r`; `[2176, 2304)` the mins, that of sub-block `s` of row `r` at
//!   `32 (s / 2) + 2r + s % 2` (pairs for `vpdpwssd`); `[2304, 2336)` the rows' f16
//!   `d`, `[2336, 2368)` their f16 `dmin`. Weight = `d·scale·q − dmin·min`.
//! - **`Q6_K`** (256 columns, 3360 bytes): `[0, 2048)` the low four bits of each six-bit quant,
//!   packed as `Q4_K`'s quants; `[2048, 3072)` the high two bits: byte `64p + 4r + j`, bits
//!   `2i..2i + 2`, belong to weight `16p + 4i + j`; `[3072, 3328)` the signed scale of sub-block
//!   `s` (16 weights) of row `r` at `16s + r`; `[3328, 3360)` the rows' f16 `d`.
//!   Weight = `d·scale·(q − 32)`.
//!
//! [`crate::QuantizedMatrix::into_fastest`] switches a matrix to this layout where the CPU has
//! AVX-512 VNNI; elsewhere a scalar loop over the same layout keeps it correct (and testable).

use crate::activations::{QuantizedActivations, Row};
use crate::blocks::{WeightType, f16_at, q4k_scale_min, quant32};
use rayon::prelude::*;

use crate::{Parallel, for_each_part};

/// Rows per tile.
pub(crate) const TILE_ROWS: usize = 16;
/// Tiles handed to one task.
const TILES_PER_TASK: usize = 4;

const Q4K_SCALES: usize = 2048;
const Q4K_MINS: usize = 2176;
const Q4K_D: usize = 2304;
const Q4K_DMIN: usize = 2336;
const Q6K_HIGH: usize = 2048;
const Q6K_SCALES: usize = 3072;
const Q6K_D: usize = 3328;
const Q5_0_HIGH: usize = 256;
const Q5_0_D: usize = 320;

/// Bytes of one tile's unit for one block of `ty` (a type [`Tiles::refusal`] accepts).
const fn unit_bytes(ty: WeightType) -> usize {
    match ty {
        WeightType::Q4K => 2368,
        WeightType::Q6K => 3360,
        WeightType::Q5_0 => 352,
        _ => 544,
    }
}

/// Where the packed byte holding four weights `4g..4g + 4` (in the `vpdpbusd` group order of
/// the module docs) of row `r` sits within a unit, for a 64-byte vector index `v`.
#[inline]
const fn lane(v: usize, r: usize, j: usize) -> usize {
    64 * v + 4 * r + j
}

/// A quantized matrix in 16-row tiles.
#[derive(Clone, Debug)]
pub(crate) struct Tiles {
    ty: WeightType,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl Tiles {
    /// Why a `ty` matrix of `rows` rows cannot be tiled, if it cannot.
    pub(crate) fn refusal(ty: WeightType, rows: usize) -> Option<&'static str> {
        if !matches!(ty, WeightType::Q8_0 | WeightType::Q5_0 | WeightType::Q4K | WeightType::Q6K) {
            Some("only Q8_0, Q5_0, Q4_K and Q6_K matrices are tiled")
        } else if !rows.is_multiple_of(TILE_ROWS) {
            Some("tiles need a multiple of 16 rows")
        } else {
            None
        }
    }

    /// Re-lays out a matrix (`rows` a multiple of 16, `data` its GGUF blocks row after row, a
    /// type [`refusal`](Self::refusal) accepts; the caller checks all three).
    pub(crate) fn from_blocks(ty: WeightType, rows: usize, cols: usize, data: &[u8]) -> Self {
        let blocks = cols / ty.block_values();
        debug_assert!(Self::refusal(ty, rows).is_none() && data.len() == rows * blocks * ty.block_bytes());
        let unit = unit_bytes(ty);
        let mut tiled = vec![0u8; rows / TILE_ROWS * blocks * unit];
        // Tiles are independent: one rayon task each (loading Qwen2.5-1.5B packs 1.3 G weights).
        let row_bytes = blocks * ty.block_bytes();
        tiled.par_chunks_mut(blocks * unit).zip(data.par_chunks(TILE_ROWS * row_bytes)).for_each(|(tile, source)| {
            for (r, row_blocks) in source.chunks_exact(row_bytes).enumerate() {
                for (b, block) in row_blocks.chunks_exact(ty.block_bytes()).enumerate() {
                    pack(ty, block, r, &mut tile[b * unit..(b + 1) * unit]);
                }
            }
        });
        Self { ty, rows, cols, data: tiled }
    }

    /// Bytes of weights and scales.
    pub(crate) fn bytes(&self) -> usize {
        self.data.len()
    }

    fn blocks(&self) -> usize {
        self.cols / self.ty.block_values()
    }

    /// Tile `t`'s units, block after block.
    fn tile(&self, t: usize) -> &[u8] {
        let n = self.blocks() * unit_bytes(self.ty);
        &self.data[t * n..(t + 1) * n]
    }

    /// Row `i` dequantized into `out` (`cols` floats).
    pub(crate) fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        let (t, r) = (i / TILE_ROWS, i % TILE_ROWS);
        let unit = unit_bytes(self.ty);
        for (u, out) in self.tile(t).chunks_exact(unit).zip(out.chunks_exact_mut(self.ty.block_values())) {
            match self.ty {
                WeightType::Q4K => {
                    let (d, dmin) = (f16_at(u, Q4K_D + 2 * r), f16_at(u, Q4K_DMIN + 2 * r));
                    for (k, o) in out.iter_mut().enumerate() {
                        let s = k / 32;
                        let (sc, m) = (f32::from(u[Q4K_SCALES + 16 * s + r]), f32::from(u[q4k_min_at(s, r)]));
                        *o = d * sc * nibble(u, r, k) as f32 - dmin * m;
                    }
                }
                WeightType::Q6K => {
                    let d = f16_at(u, Q6K_D + 2 * r);
                    for (k, o) in out.iter_mut().enumerate() {
                        let sc = f32::from(u[Q6K_SCALES + 16 * (k / 16) + r] as i8);
                        *o = d * sc * (q6k_tiled_quant(u, r, k) - 32) as f32;
                    }
                }
                WeightType::Q5_0 => {
                    let d = f16_at(u, Q5_0_D + 2 * r);
                    for (k, o) in out.iter_mut().enumerate() {
                        *o = d * (q5_0_tiled_quant(u, r, k) - 16) as f32;
                    }
                }
                _ => {
                    let d = f16_at(u, 512 + 2 * r);
                    for (k, o) in out.iter_mut().enumerate() {
                        *o = d * (i32::from(u[lane(k / 4, r, k % 4)]) - 128) as f32;
                    }
                }
            }
        }
    }

    /// Whether this CPU runs the VNNI kernels (otherwise a scalar loop over the same layout).
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

    /// `out = acts · Wᵀ` (`[m, rows]`), tasks on `par`, with the VNNI kernels when
    /// `accelerated` and the CPU has them, the scalar loop otherwise. The caller checks shapes.
    pub(crate) fn multiply(&self, par: &dyn Parallel, accelerated: bool, acts: &QuantizedActivations, out: &mut [f32]) {
        multiply_group(par, accelerated, &[(self, acts)], &mut [out]);
    }
}

/// One task's share of a group: `tiles` tiles of matrix `job` from tile `first`.
struct Task {
    job: usize,
    first: usize,
    tiles: usize,
}

/// `outs[j] = acts_j · W_jᵀ` for every `(W_j, acts_j)` of `jobs`, all of their tasks in one
/// parallel run: one synchronization for the whole group (a layer's q, k and v projections,
/// say) instead of one per matrix. Each task computes its tiles for every activation row into
/// its own stretch of one buffer (`[m, tiles * 16]`), copied to the outputs at the end, so
/// tasks never share memory. The caller checks shapes.
pub(crate) fn multiply_group(
    par: &dyn Parallel,
    accelerated: bool,
    jobs: &[(&Tiles, &QuantizedActivations)],
    outs: &mut [&mut [f32]],
) {
    let accelerated = accelerated && Tiles::accelerated();
    let mut tasks = Vec::new();
    for (job, (tiles, _)) in jobs.iter().enumerate() {
        let count = tiles.rows / TILE_ROWS;
        for first in (0..count).step_by(TILES_PER_TASK) {
            tasks.push(Task { job, first, tiles: (count - first).min(TILES_PER_TASK) });
        }
    }
    let width = |task: &Task| jobs[task.job].1.rows() * task.tiles * TILE_ROWS;
    let mut buffer = vec![0.0f32; tasks.iter().map(width).sum()];
    let mut parts = Vec::with_capacity(tasks.len());
    let mut rest = &mut buffer[..];
    for task in &tasks {
        let (part, tail) = rest.split_at_mut(width(task));
        parts.push((task, part));
        rest = tail;
    }
    let rows: Vec<Vec<Row<'_>>> =
        jobs.iter().map(|(_, acts)| (0..acts.rows()).map(|i| acts.row(i)).collect()).collect();
    for_each_part(par, parts, |_, (task, part)| {
        let (matrix, rows) = (jobs[task.job].0, &rows[task.job]);
        let (m, width) = (rows.len(), task.tiles * TILE_ROWS);
        for local in 0..task.tiles {
            let tile = matrix.tile(task.first + local);
            let mut i = 0;
            while i < m {
                let take = (m - i).min(4);
                let mut got = [[0.0f32; TILE_ROWS]; 4];
                tile_dot(matrix.ty, accelerated, tile, &rows[i..i + take], &mut got[..take]);
                for (k, values) in got[..take].iter().enumerate() {
                    let at = (i + k) * width + local * TILE_ROWS;
                    part[at..at + TILE_ROWS].copy_from_slice(values);
                }
                i += take;
            }
        }
    });
    let mut at = 0;
    for task in &tasks {
        let (matrix, out) = (jobs[task.job].0, &mut outs[task.job]);
        let (width, first) = (task.tiles * TILE_ROWS, task.first * TILE_ROWS);
        let part = &buffer[at..at + width * rows[task.job].len()];
        for (i, values) in part.chunks_exact(width).enumerate() {
            out[i * matrix.rows + first..i * matrix.rows + first + width].copy_from_slice(values);
        }
        at += part.len();
    }
}

/// Writes row `r`'s share of one GGUF `block` into its tile `unit`: the block's quants are
/// decoded into one array first (loops the compiler vectorises), then written a byte at a time.
fn pack(ty: WeightType, block: &[u8], r: usize, unit: &mut [u8]) {
    match ty {
        WeightType::Q4K => {
            unit[Q4K_D + 2 * r..Q4K_D + 2 * r + 2].copy_from_slice(&block[0..2]);
            unit[Q4K_DMIN + 2 * r..Q4K_DMIN + 2 * r + 2].copy_from_slice(&block[2..4]);
            for s in 0..8 {
                let (sc, m) = q4k_scale_min(s, &block[4..16]);
                unit[Q4K_SCALES + 16 * s + r] = sc;
                unit[q4k_min_at(s, r)] = m;
            }
            // GGUF: byte 32c + l holds weight 64c + l (low nibble) and 64c + 32 + l (high).
            let mut q = [0u8; 256];
            for (c, bytes) in block[16..144].chunks_exact(32).enumerate() {
                for (l, &byte) in bytes.iter().enumerate() {
                    q[64 * c + l] = byte & 0x0F;
                    q[64 * c + 32 + l] = byte >> 4;
                }
            }
            pack_nibbles(&q, r, unit);
        }
        WeightType::Q6K => {
            unit[Q6K_D + 2 * r..Q6K_D + 2 * r + 2].copy_from_slice(&block[208..210]);
            for s in 0..16 {
                unit[Q6K_SCALES + 16 * s + r] = block[192 + s];
            }
            // GGUF: per 128 weights, 64 bytes of low nibbles and 32 of high bit pairs (ggml's
            // `dequantize_row_q6_K`; the same as `blocks::q6k_quant`).
            let mut q = [0u8; 256];
            for half in 0..2 {
                let (ql, qh) = (&block[64 * half..64 * half + 64], &block[128 + 32 * half..160 + 32 * half]);
                for l in 0..32 {
                    let at = 128 * half + l;
                    q[at] = (ql[l] & 0x0F) | (qh[l] & 3) << 4;
                    q[at + 32] = (ql[l + 32] & 0x0F) | ((qh[l] >> 2) & 3) << 4;
                    q[at + 64] = (ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4;
                    q[at + 96] = (ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4;
                }
            }
            pack_nibbles(&q, r, unit);
            for p in 0..16 {
                for j in 0..4 {
                    let high = (0..4).fold(0u8, |acc, i| acc | (q[16 * p + 4 * i + j] >> 4) << (2 * i));
                    unit[Q6K_HIGH + lane(p, r, j)] = high;
                }
            }
        }
        WeightType::Q5_0 => {
            unit[Q5_0_D + 2 * r..Q5_0_D + 2 * r + 2].copy_from_slice(&block[0..2]);
            let mut q = [0u8; 32];
            for (k, v) in q.iter_mut().enumerate() {
                *v = quant32(WeightType::Q5_0, block, k) as u8;
            }
            pack_nibbles(&q, r, unit);
            for k in 0..32 {
                let bit = 4 * r + k % 4;
                unit[Q5_0_HIGH + 8 * (k / 4) + bit / 8] |= (q[k] >> 4) << (bit % 8);
            }
        }
        _ => {
            unit[512 + 2 * r..512 + 2 * r + 2].copy_from_slice(&block[0..2]);
            for (k, &q) in block[2..34].iter().enumerate() {
                unit[lane(k / 4, r, k % 4)] = (q as i8 as i16 + 128) as u8;
            }
        }
    }
}

/// The low four bits of weights `8p + j` and `8p + 4 + j` of `q` (one block's quants) into
/// byte `64p + 4r + j` of the nibble area.
fn pack_nibbles(q: &[u8], r: usize, unit: &mut [u8]) {
    for p in 0..q.len() / 8 {
        for j in 0..4 {
            unit[lane(p, r, j)] = (q[8 * p + j] & 0x0F) | (q[8 * p + 4 + j] & 0x0F) << 4;
        }
    }
}

fn nibble(unit: &[u8], r: usize, k: usize) -> i32 {
    let byte = unit[lane(k / 8, r, k % 4)];
    i32::from(if k % 8 < 4 { byte & 0x0F } else { byte >> 4 })
}

/// Where the min of sub-block `s` of row `r` sits in a `Q4_K` unit: the mins of sub-blocks
/// `2q` and `2q + 1` side by side per row, so that widened to i16 they form one `vpdpwssd` pair.
const fn q4k_min_at(s: usize, r: usize) -> usize {
    Q4K_MINS + 32 * (s / 2) + 2 * r + s % 2
}

/// Weight `k` of row `r` of a tiled `Q6_K` unit as its six-bit quant (0..64, offset not removed).
fn q6k_tiled_quant(unit: &[u8], r: usize, k: usize) -> i32 {
    let (p, i, j) = (k / 16, k % 16 / 4, k % 4);
    let high = (unit[Q6K_HIGH + lane(p, r, j)] >> (2 * i)) & 3;
    nibble(unit, r, k) | i32::from(high) << 4
}

/// Weight `k` (0..32) of row `r` of a tiled `Q5_0` unit (0..32, offset not removed).
fn q5_0_tiled_quant(unit: &[u8], r: usize, k: usize) -> i32 {
    let bit = 4 * r + k % 4;
    let high = (unit[Q5_0_HIGH + 8 * (k / 4) + bit / 8] >> (bit % 8)) & 1;
    nibble(unit, r, k) | i32::from(high) << 4
}

/// One tile against up to four activation rows.
fn tile_dot(ty: WeightType, accelerated: bool, tile: &[u8], rows: &[Row<'_>], out: &mut [[f32; TILE_ROWS]]) {
    #[cfg(target_arch = "x86_64")]
    if accelerated {
        // SAFETY: `accelerated` is `vnni::available()`.
        #[allow(unsafe_code)]
        unsafe {
            match (ty, rows.len()) {
                (WeightType::Q4K, 4) => vnni::q4k::<4>(tile, rows, out),
                (WeightType::Q4K, 3) => vnni::q4k::<3>(tile, rows, out),
                (WeightType::Q4K, 2) => vnni::q4k::<2>(tile, rows, out),
                (WeightType::Q4K, _) => vnni::q4k::<1>(tile, rows, out),
                (WeightType::Q6K, 4) => vnni::q6k::<4>(tile, rows, out),
                (WeightType::Q6K, 3) => vnni::q6k::<3>(tile, rows, out),
                (WeightType::Q6K, 2) => vnni::q6k::<2>(tile, rows, out),
                (WeightType::Q6K, _) => vnni::q6k::<1>(tile, rows, out),
                (WeightType::Q5_0, 4) => vnni::q5_0::<4>(tile, rows, out),
                (WeightType::Q5_0, 3) => vnni::q5_0::<3>(tile, rows, out),
                (WeightType::Q5_0, 2) => vnni::q5_0::<2>(tile, rows, out),
                (WeightType::Q5_0, _) => vnni::q5_0::<1>(tile, rows, out),
                (_, 4) => vnni::q8_0::<4>(tile, rows, out),
                (_, 3) => vnni::q8_0::<3>(tile, rows, out),
                (_, 2) => vnni::q8_0::<2>(tile, rows, out),
                (_, _) => vnni::q8_0::<1>(tile, rows, out),
            }
        }
        return;
    }
    let _ = accelerated;
    let unit = unit_bytes(ty);
    for (row, out) in rows.iter().zip(out.iter_mut()) {
        *out = [0.0; TILE_ROWS];
        for (b, u) in tile.chunks_exact(unit).enumerate() {
            for (r, o) in out.iter_mut().enumerate() {
                *o += scalar_unit(ty, u, r, row, b);
            }
        }
    }
}

/// Row `r` of one unit (block `b`) times the activation row: the plain reference of the kernels.
fn scalar_unit(ty: WeightType, u: &[u8], r: usize, row: &Row<'_>, b: usize) -> f32 {
    let a = |k: usize| i32::from(row.qs[ty.block_values() * b + k]);
    match ty {
        WeightType::Q4K => {
            let (mut scaled, mut mins) = (0i32, 0i32);
            for s in 0..8 {
                let sum: i32 = (32 * s..32 * s + 32).map(|k| nibble(u, r, k) * a(k)).sum();
                scaled += sum * i32::from(u[Q4K_SCALES + 16 * s + r]);
                let asum = i32::from(row.sums[16 * b + 2 * s]) + i32::from(row.sums[16 * b + 2 * s + 1]);
                mins += asum * i32::from(u[q4k_min_at(s, r)]);
            }
            let (d, dmin) = (f16_at(u, Q4K_D + 2 * r), f16_at(u, Q4K_DMIN + 2 * r));
            row.scales[b] * (d * scaled as f32 - dmin * mins as f32)
        }
        WeightType::Q6K => {
            let mut total = 0i32;
            for s in 0..16 {
                let sum: i32 = (16 * s..16 * s + 16).map(|k| q6k_tiled_quant(u, r, k) * a(k)).sum();
                let sc = i32::from(u[Q6K_SCALES + 16 * s + r] as i8);
                total += sc * (sum - 32 * i32::from(row.sums[16 * b + s]));
            }
            row.scales[b] * f16_at(u, Q6K_D + 2 * r) * total as f32
        }
        WeightType::Q5_0 => {
            let sum: i32 = (0..32).map(|k| q5_0_tiled_quant(u, r, k) * a(k)).sum();
            let sum = sum - 16 * i32::from(row.sums[b]);
            f16_at(u, Q5_0_D + 2 * r) * row.scales[b] * sum as f32
        }
        _ => {
            let sum: i32 = (0..32).map(|k| i32::from(u[lane(k / 4, r, k % 4)]) * a(k)).sum();
            let sum = sum - 128 * i32::from(row.sums[b]);
            f16_at(u, 512 + 2 * r) * row.scales[b] * sum as f32
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod vnni {
    use std::arch::x86_64::*;

    use super::{Q4K_D, Q4K_DMIN, Q4K_MINS, Q4K_SCALES, Q5_0_D, Q5_0_HIGH, Q6K_D, Q6K_HIGH, Q6K_SCALES, TILE_ROWS};
    use crate::activations::Row;

    /// How many units ahead of the one being multiplied the k-quant kernels prefetch (the Q8_0
    /// kernel, with units a fifth the size, four times as many): 5-7 KB.
    const PREFETCH_UNITS: usize = 6;

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }

    /// The four activation bytes `qs[at..at + 4]` in every 32-bit lane. Unchecked: bounds checks
    /// in the inner loops cost the prompt-sized matmuls a third of their time.
    ///
    /// # Safety
    /// `at + 4 <= qs.len()`, and the CPU has AVX512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn broadcast4(qs: &[i8], at: usize) -> __m512i {
        debug_assert!(at + 4 <= qs.len());
        // SAFETY: the caller keeps `at..at + 4` within `qs`; the read is unaligned.
        _mm512_set1_epi32(unsafe { std::ptr::read_unaligned(qs.as_ptr().add(at).cast::<i32>()) })
    }

    /// 64 bytes of `bytes` from `at`, unchecked (see [`broadcast4`]).
    ///
    /// # Safety
    /// `at + 64 <= bytes.len()`, and the CPU has AVX512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load64(bytes: &[u8], at: usize) -> __m512i {
        debug_assert!(at + 64 <= bytes.len());
        // SAFETY: the caller keeps `at..at + 64` within `bytes`; the load is unaligned.
        unsafe { _mm512_loadu_si512(bytes.as_ptr().add(at).cast()) }
    }

    /// Asks for the cache line at `bytes + at` (which may lie past the slice: the next tile's
    /// weights follow this one's, and a prefetch never faults). Decode streams every weight
    /// from memory once per token; the hardware prefetchers alone leave the loads waiting.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn prefetch(bytes: &[u8], at: usize) {
        // A prefetch reads nothing the program sees and cannot fault, whatever the address.
        _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().wrapping_add(at).cast())
    }

    /// Whether every activation row holds the `values` columns a tile multiplies: what makes
    /// the kernels' unchecked activation reads sound.
    fn rows_cover(rows: &[Row<'_>], values: usize) -> bool {
        rows.iter().all(|row| row.qs.len() >= values)
    }

    /// 16 bytes widened to 16 `i32` lanes (`signed`: as `i8`, else as `u8`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn widen16(bytes: &[u8], at: usize, signed: bool) -> __m512i {
        let chunk = &bytes[at..at + 16];
        // SAFETY: `chunk` is 16 readable bytes; the load is unaligned.
        let v = unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) };
        if signed { _mm512_cvtepi8_epi32(v) } else { _mm512_cvtepu8_epi32(v) }
    }

    /// 32 bytes widened to 32 `i16` (as `u8`): an i16 pair per 32-bit lane.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn widen32(bytes: &[u8], at: usize) -> __m512i {
        let chunk = &bytes[at..at + 32];
        // SAFETY: `chunk` is 32 readable bytes; the load is unaligned.
        _mm512_cvtepu8_epi16(unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) })
    }

    /// The 16 rows' f16 values at `bytes[at..at + 32]`, as f32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn halves16(bytes: &[u8], at: usize) -> __m512 {
        let chunk = &bytes[at..at + 32];
        // SAFETY: `chunk` is 32 readable bytes; the load is unaligned.
        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) })
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn store(out: &mut [[f32; TILE_ROWS]], acc: &[__m512]) {
        for (o, a) in out.iter_mut().zip(acc) {
            // SAFETY: `o` is 16 floats.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *a) };
        }
    }

    /// # Safety
    /// The CPU must have AVX512F, AVX512BW and AVX512-VNNI ([`available`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn q8_0<const R: usize>(tile: &[u8], rows: &[Row<'_>], out: &mut [[f32; TILE_ROWS]]) {
        assert!(rows_cover(rows, tile.len() / 544 * 32), "activation rows shorter than the tile's columns");
        // SAFETY: every unchecked read below is at an offset below the 544 bytes of its unit
        // (`chunks_exact`) or below the activation row's length (checked above); the caller
        // guarantees the CPU features.
        unsafe {
            let mut acc = [_mm512_setzero_ps(); R];
            for (b, unit) in tile.chunks_exact(544).enumerate() {
                for line in 0..9 {
                    prefetch(unit, 4 * PREFETCH_UNITS * 544 + 64 * line);
                }
                // Two accumulators per row, so the dpbusd chains are half as long.
                let mut even = [_mm512_setzero_si512(); R];
                let mut odd = [_mm512_setzero_si512(); R];
                for g in (0..8).step_by(2) {
                    let (w0, w1) = (load64(unit, 64 * g), load64(unit, 64 * g + 64));
                    for r in 0..R {
                        even[r] = _mm512_dpbusd_epi32(even[r], w0, broadcast4(rows[r].qs, 32 * b + 4 * g));
                        odd[r] = _mm512_dpbusd_epi32(odd[r], w1, broadcast4(rows[r].qs, 32 * b + 4 * g + 4));
                    }
                }
                let weight_scales = halves16(unit, 512);
                for r in 0..R {
                    let sum = _mm512_sub_epi32(
                        _mm512_add_epi32(even[r], odd[r]),
                        _mm512_set1_epi32(128 * i32::from(rows[r].sums[b])),
                    );
                    let scale = _mm512_mul_ps(weight_scales, _mm512_set1_ps(rows[r].scales[b]));
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc[r]);
                }
            }
            store(out, &acc);
        }
    }

    /// # Safety
    /// The CPU must have AVX512F, AVX512BW and AVX512-VNNI ([`available`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn q5_0<const R: usize>(tile: &[u8], rows: &[Row<'_>], out: &mut [[f32; TILE_ROWS]]) {
        assert!(rows_cover(rows, tile.len() / 352 * 32), "activation rows shorter than the tile's columns");
        // SAFETY: every unchecked read below is at an offset below the 352 bytes of its unit
        // (`chunks_exact`) or below the activation row's length (checked above); the caller
        // guarantees the CPU features.
        unsafe {
            let (low, fifth) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x10));
            let mut acc = [_mm512_setzero_ps(); R];
            for (b, unit) in tile.chunks_exact(352).enumerate() {
                if b % 4 == 0 {
                    for line in 0..22 {
                        prefetch(unit, 4 * PREFETCH_UNITS * 352 + 64 * line);
                    }
                }
                let mask = |g: usize| {
                    let m = &unit[Q5_0_HIGH + 8 * g..Q5_0_HIGH + 8 * g + 8];
                    _mm512_and_si512(
                        _mm512_movm_epi8(u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7]])),
                        fifth,
                    )
                };
                // The offset of 16 starts the even sums: Σ (q - 16)·a = Σ q·a - 16 Σ a.
                let mut even: [__m512i; R] =
                    std::array::from_fn(|r| _mm512_set1_epi32(-16 * i32::from(rows[r].sums[b])));
                let mut odd = [_mm512_setzero_si512(); R];
                for p in 0..4 {
                    let v = load64(unit, 64 * p);
                    let q0 = _mm512_or_si512(_mm512_and_si512(v, low), mask(2 * p));
                    let q1 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(v), low), mask(2 * p + 1));
                    for r in 0..R {
                        even[r] = _mm512_dpbusd_epi32(even[r], q0, broadcast4(rows[r].qs, 32 * b + 8 * p));
                        odd[r] = _mm512_dpbusd_epi32(odd[r], q1, broadcast4(rows[r].qs, 32 * b + 8 * p + 4));
                    }
                }
                let d = halves16(unit, Q5_0_D);
                for r in 0..R {
                    let scale = _mm512_mul_ps(d, _mm512_set1_ps(rows[r].scales[b]));
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(even[r], odd[r])), scale, acc[r]);
                }
            }
            store(out, &acc);
        }
    }

    /// # Safety
    /// The CPU must have AVX512F, AVX512BW and AVX512-VNNI ([`available`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn q4k<const R: usize>(tile: &[u8], rows: &[Row<'_>], out: &mut [[f32; TILE_ROWS]]) {
        assert!(rows_cover(rows, tile.len() / 2368 * 256), "activation rows shorter than the tile's columns");
        // SAFETY: every unchecked read below is at an offset below the 2368 bytes of its unit
        // (`chunks_exact`) or below the activation row's length (checked above); the caller
        // guarantees the CPU features.
        unsafe {
            let (low, high) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(-16));
            let mut acc = [_mm512_setzero_ps(); R];
            for (b, unit) in tile.chunks_exact(2368).enumerate() {
                // Per row: 16 Σ scale · (quants · activations) in f32 (integer terms below 2^26,
                // rounded to 24 bits as candle's and ggml's float sums are), and Σ min · (activation
                // sums), exact.
                let mut scaled = [_mm512_setzero_ps(); R];
                let mut mins = [_mm512_setzero_si512(); R];
                for s in 0..8 {
                    for line in 0..5 {
                        prefetch(unit, PREFETCH_UNITS * 2368 + 64 * (5 * s + line));
                    }
                    // The high nibbles are multiplied in place (16 times their value): one shift per
                    // sub-block and row instead of one per vector.
                    let (mut lo, mut hi) = ([_mm512_setzero_si512(); R], [_mm512_setzero_si512(); R]);
                    for p in 4 * s..4 * s + 4 {
                        let v = load64(unit, 64 * p);
                        let (low_nibbles, high_nibbles) = (_mm512_and_si512(v, low), _mm512_and_si512(v, high));
                        for r in 0..R {
                            lo[r] = _mm512_dpbusd_epi32(lo[r], low_nibbles, broadcast4(rows[r].qs, 256 * b + 8 * p));
                            hi[r] =
                                _mm512_dpbusd_epi32(hi[r], high_nibbles, broadcast4(rows[r].qs, 256 * b + 8 * p + 4));
                        }
                    }
                    let scale = _mm512_cvtepi32_ps(widen16(unit, Q4K_SCALES + 16 * s, false));
                    for r in 0..R {
                        let sixteen_times = _mm512_add_epi32(_mm512_slli_epi32::<4>(lo[r]), hi[r]);
                        scaled[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sixteen_times), scale, scaled[r]);
                    }
                }
                // Mins of sub-blocks 2q and 2q + 1 as an i16 pair per row, against the pair of
                // activation sums: one vpdpwssd per pair.
                for q in 0..4 {
                    let pair = widen32(unit, Q4K_MINS + 32 * q);
                    for r in 0..R {
                        let sums = &rows[r].sums[16 * b + 4 * q..16 * b + 4 * q + 4];
                        let (first, second) = (sums[0] + sums[1], sums[2] + sums[3]);
                        let both = _mm512_set1_epi32(i32::from(first as u16) | i32::from(second) << 16);
                        mins[r] = _mm512_dpwssd_epi32(mins[r], pair, both);
                    }
                }
                let (d, dmin) = (halves16(unit, Q4K_D), halves16(unit, Q4K_DMIN));
                for r in 0..R {
                    let a = _mm512_set1_ps(rows[r].scales[b]);
                    acc[r] =
                        _mm512_fmadd_ps(scaled[r], _mm512_mul_ps(d, _mm512_set1_ps(rows[r].scales[b] / 16.0)), acc[r]);
                    acc[r] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mins[r]), _mm512_mul_ps(dmin, a), acc[r]);
                }
            }
            store(out, &acc);
        }
    }

    /// # Safety
    /// The CPU must have AVX512F, AVX512BW and AVX512-VNNI ([`available`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn q6k<const R: usize>(tile: &[u8], rows: &[Row<'_>], out: &mut [[f32; TILE_ROWS]]) {
        assert!(rows_cover(rows, tile.len() / 3360 * 256), "activation rows shorter than the tile's columns");
        // SAFETY: every unchecked read below is at an offset below the 3360 bytes of its unit
        // (`chunks_exact`) or below the activation row's length (checked above); the caller
        // guarantees the CPU features.
        unsafe {
            let (low, top) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x30));
            let mut acc = [_mm512_setzero_ps(); R];
            for (b, unit) in tile.chunks_exact(3360).enumerate() {
                // Per row: Σ scale · (quants · activations − 32 · activation sum), in f32 (integer
                // terms below 2^25).
                let mut total = [_mm512_setzero_ps(); R];
                for s in 0..16 {
                    for line in 0..4 {
                        prefetch(unit, PREFETCH_UNITS * 3360 + 64 * (4 * s + line));
                    }
                    let (v0, v1, h) =
                        (load64(unit, 128 * s), load64(unit, 128 * s + 64), load64(unit, Q6K_HIGH + 64 * s));
                    let q = [
                        _mm512_or_si512(_mm512_and_si512(v0, low), _mm512_and_si512(_mm512_slli_epi16::<4>(h), top)),
                        _mm512_or_si512(
                            _mm512_and_si512(_mm512_srli_epi16::<4>(v0), low),
                            _mm512_and_si512(_mm512_slli_epi16::<2>(h), top),
                        ),
                        _mm512_or_si512(_mm512_and_si512(v1, low), _mm512_and_si512(h, top)),
                        _mm512_or_si512(
                            _mm512_and_si512(_mm512_srli_epi16::<4>(v1), low),
                            _mm512_and_si512(_mm512_srli_epi16::<2>(h), top),
                        ),
                    ];
                    let scale = _mm512_cvtepi32_ps(widen16(unit, Q6K_SCALES + 16 * s, true));
                    for r in 0..R {
                        let at = 256 * b + 16 * s;
                        let qs = rows[r].qs;
                        let even = _mm512_dpbusd_epi32(
                            _mm512_set1_epi32(-32 * i32::from(rows[r].sums[16 * b + s])),
                            q[0],
                            broadcast4(qs, at),
                        );
                        let odd = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[1], broadcast4(qs, at + 4));
                        let even = _mm512_dpbusd_epi32(even, q[2], broadcast4(qs, at + 8));
                        let odd = _mm512_dpbusd_epi32(odd, q[3], broadcast4(qs, at + 12));
                        total[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(even, odd)), scale, total[r]);
                    }
                }
                let d = halves16(unit, Q6K_D);
                for r in 0..R {
                    let a = _mm512_set1_ps(rows[r].scales[b]);
                    acc[r] = _mm512_fmadd_ps(total[r], _mm512_mul_ps(d, a), acc[r]);
                }
            }
            store(out, &acc);
        }
    }
}
