//! Dense bf16 matrix multiplication on Intel AMX tiles, for f32 models (the BERT encoder).
//!
//! `y = x · Wᵀ` with `W` an `n × k` f32 weight matrix (PyTorch's `Linear` layout) stored as
//! bf16 in AMX's pair-interleaved ("VNNI") tile layout, and `x` converted to bf16 rows once per
//! call. Products accumulate in f32 inside the tiles. On CPUs with AMX-BF16 (Intel Xeon 4th
//! generation and later) one `tdpbf16ps` does 16 × 16 × 32 multiply-adds; there is no other way
//! on these machines to multiply f32 weights anywhere near as fast.
//!
//! The same packed matrix multiplies without AMX through a plain loop ([`Bf16Matrix::matmul`]
//! with `amx = false`): slow, but it gives identical inputs the same rounding (bf16 operands,
//! f32 sums), so tests check the tile kernel against it everywhere AMX exists, and the model code
//! built on it runs (slowly) on any CPU.
//!
//! AMX instructions are written as inline assembly: Rust has no stable AMX intrinsics. The
//! kernel runs only after [`available`] has confirmed the CPU's AMX-TILE and AMX-BF16 bits and
//! Linux has granted this process the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`).
#![allow(unsafe_code)]

use crate::{KernelError, Parallel, for_each_part};

/// Rows and columns of the 16 × 16 f32 accumulator tiles; a weight tile covers 32 inputs.
const TILE: usize = 16;
/// Inputs (bf16 values) per tile row: 64 bytes.
const DEPTH: usize = 32;
/// bf16 values in one packed weight tile (16 pair-rows × 32 values, 1 KiB).
const TILE_VALUES: usize = TILE * DEPTH;
/// Activation row pairs (of 16 rows) per parallel task.
const ROW_PAIRS_PER_TASK: usize = 4;
/// Output rows per parallel task of [`Bf16Matrix::matmul_then`] (128).
pub const TASK_ROWS: usize = ROW_PAIRS_PER_TASK * 2 * TILE;

/// Whether the AMX tile kernel can run here (CPU bits, and the OS's permission, asked once).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // CPUID.(EAX=7, ECX=0):EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
    let leaf0 = __cpuid_count(0, 0);
    if leaf0.eax < 7 {
        return false;
    }
    let features = __cpuid_count(7, 0);
    let bf16 = features.edx & (1 << 22) != 0;
    let tile = features.edx & (1 << 24) != 0;
    if !(bf16 && tile) {
        return false;
    }
    if std::env::var_os("HEARTH_NO_AMX").is_some() {
        return false;
    }
    // Linux hands out the 8 KiB tile state only on request (kernel 5.16 and later).
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) only changes which register state the
    // kernel lets this process use; it reads and writes no memory of ours.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// An f32 value rounded to bf16 (to nearest, ties to even), as the hardware's own conversions do.
#[inline]
pub fn bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x40;
    }
    let rounding = ((bits >> 16) & 1) + 0x7fff;
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// The f32 value of a bf16.
#[inline]
pub fn bf16_to_f32(x: u16) -> f32 {
    f32::from_bits(u32::from(x) << 16)
}

/// A weight matrix (`rows` outputs × `cols` inputs) in bf16 AMX tiles.
#[derive(Clone, Debug)]
pub struct Bf16Matrix {
    rows: usize,
    cols: usize,
    /// Tile `(j, t)` (outputs `16j..16j+16`, inputs `32t..32t+32`) at `(j · cols/32 + t) · 512`;
    /// inside it, pair-row `p`, column `c` holds inputs `32t+2p` and `32t+2p+1` of output `16j+c`.
    tiles: Vec<u16>,
}

impl Bf16Matrix {
    /// Packs a row-major `rows × cols` f32 matrix. Both dimensions must be multiples of 32.
    pub fn pack(weights: &[f32], rows: usize, cols: usize) -> Result<Self, KernelError> {
        if !cols.is_multiple_of(DEPTH) {
            return Err(KernelError::Columns { ty: "bf16 tiles", block: DEPTH, cols });
        }
        if !rows.is_multiple_of(2 * TILE) {
            return Err(KernelError::Tiles("bf16 tiles need a multiple of 32 rows"));
        }
        if weights.len() != rows * cols {
            return Err(KernelError::Shape { what: "bf16 weights", expected: rows * cols, found: weights.len() });
        }
        let depth_tiles = cols / DEPTH;
        let mut tiles = vec![0u16; rows * cols];
        for (index, tile) in tiles.chunks_exact_mut(TILE_VALUES).enumerate() {
            let (j, t) = (index / depth_tiles, index % depth_tiles);
            for p in 0..TILE {
                for c in 0..TILE {
                    let row = &weights[(j * TILE + c) * cols + t * DEPTH..];
                    tile[p * DEPTH + 2 * c] = bf16(row[2 * p]);
                    tile[p * DEPTH + 2 * c + 1] = bf16(row[2 * p + 1]);
                }
            }
        }
        Ok(Self { rows, cols, tiles })
    }

    /// Outputs per input row.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Inputs per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `out = x · Wᵀ`: `x` holds bf16 rows of `cols` values ([`Bf16Rows`]), `out` gets
    /// `x.rows() × rows` f32 values, row-major. With `amx` (which needs [`available`]) the tile
    /// kernel runs on `par`'s threads; otherwise a plain loop, same operands and rounding.
    pub fn matmul(&self, par: &dyn Parallel, amx: bool, x: &Bf16Rows, out: &mut [f32]) -> Result<(), KernelError> {
        let tasks = x.rows.div_ceil(TASK_ROWS);
        self.matmul_then(par, amx, x, out, vec![(); tasks], |_, ()| {})
    }

    /// [`matmul`](Self::matmul), then `then(rows, extra)` on each block of [`TASK_ROWS`] output
    /// rows (the last may be shorter) in the task that computed it, while the block is still in
    /// that core's cache. `extras` holds one value per block, in order (the caller's pieces of
    /// its other buffers for those rows, say).
    pub fn matmul_then<T: Send>(
        &self,
        par: &dyn Parallel,
        amx: bool,
        x: &Bf16Rows,
        out: &mut [f32],
        extras: Vec<T>,
        then: impl Fn(&mut [f32], T) + Sync,
    ) -> Result<(), KernelError> {
        if x.cols != self.cols {
            return Err(KernelError::Shape { what: "bf16 input row", expected: self.cols, found: x.cols });
        }
        if out.len() != x.rows * self.rows {
            return Err(KernelError::Shape {
                what: "bf16 matmul output",
                expected: x.rows * self.rows,
                found: out.len(),
            });
        }
        if extras.len() != x.rows.div_ceil(TASK_ROWS) {
            return Err(KernelError::Shape {
                what: "bf16 matmul row blocks",
                expected: x.rows.div_ceil(TASK_ROWS),
                found: extras.len(),
            });
        }
        if amx {
            assert!(available(), "Bf16Matrix::matmul: AMX requested on a CPU or OS without it");
            self.matmul_amx(par, x, out, extras, &then);
        } else {
            self.matmul_plain(x, out);
            for (block, extra) in out.chunks_mut(TASK_ROWS * self.rows).zip(extras) {
                then(block, extra);
            }
        }
        Ok(())
    }

    /// The portable loop: bf16 operands, f32 products summed in input order.
    fn matmul_plain(&self, x: &Bf16Rows, out: &mut [f32]) {
        let depth_tiles = self.cols / DEPTH;
        let mut column = vec![0f32; self.cols];
        for n in 0..self.rows {
            let (j, c) = (n / TILE, n % TILE);
            for t in 0..depth_tiles {
                let tile = &self.tiles[(j * depth_tiles + t) * TILE_VALUES..][..TILE_VALUES];
                for p in 0..TILE {
                    column[t * DEPTH + 2 * p] = bf16_to_f32(tile[p * DEPTH + 2 * c]);
                    column[t * DEPTH + 2 * p + 1] = bf16_to_f32(tile[p * DEPTH + 2 * c + 1]);
                }
            }
            for m in 0..x.rows {
                let row = &x.data[m * x.cols..][..x.cols];
                let sum: f32 = row.iter().zip(&column).map(|(&a, &w)| bf16_to_f32(a) * w).sum();
                out[m * self.rows + n] = sum;
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn matmul_amx<T: Send>(
        &self,
        par: &dyn Parallel,
        x: &Bf16Rows,
        out: &mut [f32],
        extras: Vec<T>,
        then: &(impl Fn(&mut [f32], T) + Sync),
    ) {
        let pairs = x.padded_rows() / (2 * TILE);
        let n = self.rows;
        let parts: Vec<(&mut [f32], T)> = out.chunks_mut(TASK_ROWS * n).zip(extras).collect();
        for_each_part(par, parts, |task, (part, extra)| {
            let first_pair = task * ROW_PAIRS_PER_TASK;
            let last_pair = (first_pair + ROW_PAIRS_PER_TASK).min(pairs);
            let real_rows = part.len() / n;
            let full = (last_pair - first_pair) * 2 * TILE;
            let input = &x.data[first_pair * 2 * TILE * x.cols..][..full * x.cols];
            if real_rows == full {
                // SAFETY: AMX is available (checked by the caller); `input` holds `full` rows of
                // `cols` values and `part` `full × n` outputs, the sizes `amx_rows` needs.
                unsafe { amx_rows(&self.tiles, self.cols, n, input, part) };
            } else {
                // The tiles store whole 32-row blocks: the last block's padding rows go to scratch.
                let mut scratch = vec![0f32; full * n];
                // SAFETY: as above, with `scratch` as the `full × n` output.
                unsafe { amx_rows(&self.tiles, self.cols, n, input, &mut scratch) };
                part.copy_from_slice(&scratch[..part.len()]);
            }
            then(part, extra);
        });
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn matmul_amx<T: Send>(
        &self,
        _par: &dyn Parallel,
        _x: &Bf16Rows,
        _out: &mut [f32],
        _extras: Vec<T>,
        _then: &(impl Fn(&mut [f32], T) + Sync),
    ) {
        unreachable!("AMX exists only on x86-64, and `available` says so")
    }
}

/// Activation rows converted to bf16, padded with zero rows to whole 32-row blocks.
#[derive(Clone, Debug, Default)]
pub struct Bf16Rows {
    rows: usize,
    cols: usize,
    data: Vec<u16>,
}

impl Bf16Rows {
    /// An empty buffer; [`Bf16Rows::fill`] sizes it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Converts `rows × cols` f32 values (row-major) into this buffer, reusing its memory.
    pub fn fill(&mut self, values: &[f32], cols: usize) {
        assert!(
            cols > 0 && values.len().is_multiple_of(cols),
            "Bf16Rows::fill: {} values are not rows of {cols}",
            values.len()
        );
        self.reset(values.len() / cols, cols);
        for (b, &v) in self.values_mut().iter_mut().zip(values) {
            *b = bf16(v);
        }
    }

    /// Sizes the buffer for `rows × cols` values to be written through
    /// [`values_mut`](Self::values_mut); the padding rows are zero.
    pub fn reset(&mut self, rows: usize, cols: usize) {
        assert!(cols > 0, "Bf16Rows::reset: rows of 0 values");
        self.rows = rows;
        self.cols = cols;
        let padded = self.padded_rows() * cols;
        self.data.clear();
        self.data.resize(padded, 0);
    }

    /// The `rows × cols` values (padding excluded), row-major, to fill in place.
    pub fn values_mut(&mut self) -> &mut [u16] {
        &mut self.data[..self.rows * self.cols]
    }

    /// Rows held (without padding).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    fn padded_rows(&self) -> usize {
        self.rows.div_ceil(2 * TILE) * 2 * TILE
    }
}

/// Tile configuration: palette 1; tmm0–3 accumulate 16 × 16 f32, tmm4–5 hold 16 activation rows
/// × 32 bf16, tmm6–7 one weight tile each (16 pair-rows × 64 bytes). All 16 rows × 64 bytes.
#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

#[cfg(target_arch = "x86_64")]
impl TileConfig {
    fn new() -> Self {
        let mut bytes = [0u8; 64];
        bytes[0] = 1;
        for t in 0..8 {
            bytes[16 + 2 * t] = 64;
            bytes[48 + t] = TILE as u8;
        }
        Self(bytes)
    }
}

/// `out = x · Wᵀ` for `x.len() / cols` rows (a multiple of 32), two 16-row blocks by two
/// 16-output blocks at a time, the four accumulators in tmm0–3.
///
/// # Safety
/// AMX-TILE and AMX-BF16 must be usable ([`available`]); `x.len()` must be a multiple of
/// `32 · cols`, `tiles.len() == n · cols`, `out.len() == x.len() / cols · n`, and `n` and `cols`
/// multiples of 32.
#[cfg(target_arch = "x86_64")]
unsafe fn amx_rows(tiles: &[u16], cols: usize, n: usize, x: &[u16], out: &mut [f32]) {
    use std::arch::asm;
    let rows = x.len() / cols;
    assert!(rows.is_multiple_of(2 * TILE) && n.is_multiple_of(2 * TILE) && cols.is_multiple_of(DEPTH));
    assert!(tiles.len() == n * cols && out.len() == rows * n);
    let config = TileConfig::new();
    let depth_tiles = cols / DEPTH;
    let x_stride = cols * 2; // bytes between activation rows
    let out_stride = n * 4; // bytes between output rows
    let weight_stride = 64usize; // bytes between pair-rows of a weight tile
    let tile_bytes = TILE_VALUES * 2;
    // SAFETY (for every asm block below): the caller guarantees AMX; `ldtilecfg` reads the
    // 64-byte config; the loads read 16 rows inside `x` and `tiles` (bounds by the asserts:
    // row blocks `i, i+1 < rows/16`, weight blocks `j, j+1 < n/16`, depth tiles `< cols/32`);
    // the stores write 16 rows × 16 values inside `out` at row blocks `i, i+1`, columns
    // `16j..16j+32`.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
        for i in (0..rows / TILE).step_by(2) {
            for j in (0..n / TILE).step_by(2) {
                let a0 = x.as_ptr().add(i * TILE * cols);
                let a1 = a0.add(TILE * cols);
                let b0 = tiles.as_ptr().add(j * depth_tiles * TILE_VALUES);
                let b1 = b0.add(depth_tiles * TILE_VALUES);
                let c0 = out.as_mut_ptr().add(i * TILE * n + j * TILE);
                let c1 = c0.add(TILE * n);
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    "2:",
                    "tileloadd tmm4, [{a0} + {xs}*1]",
                    "tileloadd tmm6, [{b0} + {ws}*1]",
                    "tileloadd tmm5, [{a1} + {xs}*1]",
                    "tileloadd tmm7, [{b1} + {ws}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    "add {a0}, 64",
                    "add {a1}, 64",
                    "add {b0}, {tb}",
                    "add {b1}, {tb}",
                    "dec {k}",
                    "jnz 2b",
                    "tilestored [{c0} + {os}*1], tmm0",
                    "tilestored [{c1} + {os}*1], tmm2",
                    "add {c0}, 64",
                    "add {c1}, 64",
                    "tilestored [{c0} + {os}*1], tmm1",
                    "tilestored [{c1} + {os}*1], tmm3",
                    a0 = inout(reg) a0 => _,
                    a1 = inout(reg) a1 => _,
                    b0 = inout(reg) b0 => _,
                    b1 = inout(reg) b1 => _,
                    c0 = inout(reg) c0 => _,
                    c1 = inout(reg) c1 => _,
                    k = inout(reg) depth_tiles => _,
                    xs = in(reg) x_stride,
                    ws = in(reg) weight_stride,
                    os = in(reg) out_stride,
                    tb = in(reg) tile_bytes,
                    options(nostack),
                );
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rayon;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random(len: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// f64 sums of the bf16-rounded operands: what both kernels approximate in f32.
    fn reference(w: &[f32], x: &[f32], n: usize, k: usize) -> Vec<f64> {
        let m = x.len() / k;
        let mut out = vec![0f64; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k)
                    .map(|i| f64::from(bf16_to_f32(bf16(x[r * k + i]))) * f64::from(bf16_to_f32(bf16(w[c * k + i]))))
                    .sum();
            }
        }
        out
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16(1.0), 0x3f80);
        assert_eq!(bf16_to_f32(bf16(-2.5)), -2.5);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even mantissa (1.0).
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to 1 + 2^-6.
        assert_eq!(bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16(1.0 + 1.0 / 256.0 + 1.0 / 65536.0), 0x3f81);
        assert!(bf16_to_f32(bf16(f32::NAN)).is_nan());
        assert_eq!(bf16(f32::INFINITY), 0x7f80);
    }

    #[test]
    fn packing_rejects_shapes_the_tiles_cannot_take() {
        assert!(matches!(Bf16Matrix::pack(&[0.0; 32 * 40], 32, 40), Err(KernelError::Columns { .. })));
        assert!(matches!(Bf16Matrix::pack(&[0.0; 16 * 32], 16, 32), Err(KernelError::Tiles(_))));
        assert!(matches!(Bf16Matrix::pack(&[0.0; 10], 32, 32), Err(KernelError::Shape { .. })));
    }

    #[test]
    fn plain_loop_matches_the_reference() {
        let mut rng = StdRng::seed_from_u64(7);
        let (n, k) = (64, 96);
        let w = random(n * k, &mut rng);
        let matrix = Bf16Matrix::pack(&w, n, k).expect("pack");
        for m in [1, 5, 33] {
            let x = random(m * k, &mut rng);
            let mut rows = Bf16Rows::new();
            rows.fill(&x, k);
            let mut out = vec![0f32; m * n];
            matrix.matmul(&Rayon, false, &rows, &mut out).expect("matmul");
            for (got, want) in out.iter().zip(reference(&w, &x, n, k)) {
                assert!((f64::from(*got) - want).abs() < 1e-4, "m={m}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn amx_tiles_match_the_plain_loop() {
        if !available() {
            eprintln!("skipped: this CPU or OS has no AMX-BF16");
            return;
        }
        let mut rng = StdRng::seed_from_u64(11);
        for (n, k) in [(32, 32), (64, 384), (96, 160)] {
            let w = random(n * k, &mut rng);
            let matrix = Bf16Matrix::pack(&w, n, k).expect("pack");
            // Rows across one and several tasks, with and without a partial last block.
            for m in [1, 16, 31, 32, 64, 100, 128, 129, 300] {
                let x = random(m * k, &mut rng);
                let mut rows = Bf16Rows::new();
                rows.fill(&x, k);
                let (mut tiled, mut plain) = (vec![f32::NAN; m * n], vec![0f32; m * n]);
                matrix.matmul(&Rayon, true, &rows, &mut tiled).expect("amx");
                matrix.matmul(&Rayon, false, &rows, &mut plain).expect("plain");
                let want = reference(&w, &x, n, k);
                for i in 0..m * n {
                    let (t, p, r) = (f64::from(tiled[i]), f64::from(plain[i]), want[i]);
                    assert!((t - r).abs() < 1e-4, "{n}x{k}, m={m}, element {i}: AMX {t} vs {r}");
                    assert!((t - p).abs() < 2e-4, "{n}x{k}, m={m}, element {i}: AMX {t} vs plain {p}");
                }
            }
        }
    }
}
