//! Hearth's CPU kernels: `y = x · Wᵀ` for GGUF-quantized weight matrices `W`.
//!
//! The activations `x` are quantized to 8 bits per block (as ggml does), the dot products run
//! on integers, and each block's integer sum is scaled once. The SIMD path (AVX2 + FMA + F16C
//! on x86-64) is chosen at run time from the CPU's features, never from compile-time flags, so
//! one binary runs on any x86-64 machine; other CPUs use the portable path.
//!
//! The matmul is tiled for reuse: the weight rows are split across threads, each weight row
//! is unpacked once per block and multiplied with four activation rows at a time, and the
//! activation rows are walked in tiles that stay in cache. One pass over the weights serves a
//! whole prompt chunk or a whole decode batch, instead of one pass per row.

mod activations;
pub mod amx;
pub mod attention;
pub mod blocks;
pub mod encoder;
pub mod gated;
mod portable;
mod tiles;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_quantize;

use std::borrow::Cow;
use std::sync::{Mutex, PoisonError};

use rayon::prelude::*;

pub use activations::QuantizedActivations;
use activations::Row;
pub use blocks::{ActivationBlocks, WeightType};

/// Why a matrix could not be built or multiplied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    /// The columns are not whole blocks of the weight type.
    #[error("{ty} needs a multiple of {block} columns, found {cols}")]
    Columns {
        /// The weight type's name.
        ty: &'static str,
        /// Weights per block.
        block: usize,
        /// The matrix's columns.
        cols: usize,
    },
    /// The data is not `rows * cols / block` blocks.
    #[error("a {rows} x {cols} {ty} matrix takes {expected} bytes, found {found}")]
    Size {
        /// The weight type's name.
        ty: &'static str,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// Bytes expected.
        expected: usize,
        /// Bytes given.
        found: usize,
    },
    /// A matrix the tiled layout cannot take.
    #[error("{0}")]
    Tiles(&'static str),
    /// Input or output of the wrong length.
    #[error("{what}: expected {expected} values, found {found}")]
    Shape {
        /// Which buffer.
        what: &'static str,
        /// Values expected.
        expected: usize,
        /// Values given.
        found: usize,
    },
}

/// Where the kernels' tasks run: rayon's global pool ([`Rayon`]) by default, or the caller's
/// own pool, so that a program whose other operators run on another pool (candle's spinning
/// barrier pool, say) does not keep two sets of threads fighting over the same cores.
pub trait Parallel: Sync {
    /// Runs `task(0)`, …, `task(tasks - 1)`, in any order and on any threads, and returns when
    /// all have finished.
    fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync));
}

/// rayon's global thread pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rayon;

impl Parallel for Rayon {
    fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// Hands each of `parts` (disjoint pieces of the caller's buffers) to `work` as one task of
/// `par`. Each part sits behind its own lock, taken once and never contended.
pub(crate) fn for_each_part<T: Send>(par: &dyn Parallel, parts: Vec<T>, work: impl Fn(usize, T) + Sync) {
    if parts.len() == 1 {
        if let Some(part) = parts.into_iter().next() {
            work(0, part);
        }
        return;
    }
    let slots: Vec<Mutex<Option<T>>> = parts.into_iter().map(|p| Mutex::new(Some(p))).collect();
    par.run(slots.len(), &|i| {
        let part = slots[i].lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(part) = part {
            work(i, part);
        }
    });
}

/// The instruction set the kernels run with. Only [`Isa::detect`] and [`Isa::portable`] make
/// one, so holding an `Isa` that names a SIMD path proves the CPU supports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isa(IsaKind);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IsaKind {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Isa {
    /// The fastest path this CPU supports (read once, then cached).
    pub fn detect() -> Self {
        static DETECTED: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if x86::available() {
                return Isa(IsaKind::Avx2);
            }
            Isa(IsaKind::Portable)
        })
    }

    /// The portable path, on any CPU.
    pub fn portable() -> Self {
        Isa(IsaKind::Portable)
    }

    /// A short name for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self.0 {
            IsaKind::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            IsaKind::Avx2 => "avx2+fma+f16c",
        }
    }

    #[inline]
    fn dot<const R: usize>(self, ty: WeightType, w: &[u8], rows: &[Row<'_>; R]) -> [f32; R] {
        match self.0 {
            IsaKind::Portable => portable::dot(ty, w, rows),
            // SAFETY: an `Isa` naming AVX2 exists only after `x86::available()` said yes.
            #[cfg(target_arch = "x86_64")]
            #[allow(unsafe_code)]
            IsaKind::Avx2 => unsafe { x86::dot(ty, w, rows) },
        }
    }
}

/// A quantized weight matrix `[rows, cols]` (one output per row), in GGUF's block layout.
#[derive(Clone)]
pub struct QuantizedMatrix {
    ty: WeightType,
    rows: usize,
    cols: usize,
    /// The GGUF blocks, row after row (empty once `tiled` holds the weights).
    data: Vec<u8>,
    /// The weights in 16-row tiles instead (Q8_0, Q4_K and Q6_K on AVX-512 VNNI; see `tiles`).
    tiled: Option<tiles::Tiles>,
}

impl std::fmt::Debug for QuantizedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantizedMatrix")
            .field("ty", &self.ty)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

/// Weight rows handed to one task.
const ROWS_PER_TASK: usize = 16;
/// Bytes of quantized activations walked per tile (kept in L2 while a task's rows pass over it).
const TILE_BYTES: usize = 96 * 1024;

impl QuantizedMatrix {
    /// Wraps `data`: `rows` rows of `cols / block_values` blocks each.
    pub fn new(ty: WeightType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self, KernelError> {
        Self::check(ty, rows, cols, data.len())?;
        Ok(Self { ty, rows, cols, data, tiled: None })
    }

    fn check(ty: WeightType, rows: usize, cols: usize, bytes: usize) -> Result<(), KernelError> {
        if cols == 0 || !cols.is_multiple_of(ty.block_values()) {
            return Err(KernelError::Columns { ty: ty.name(), block: ty.block_values(), cols });
        }
        let expected = rows * cols / ty.block_values() * ty.block_bytes();
        if bytes != expected {
            return Err(KernelError::Size { ty: ty.name(), rows, cols, expected, found: bytes });
        }
        Ok(())
    }

    /// The same matrix in 16-row tiles (Q8_0, Q4_K or Q6_K, rows a multiple of 16), whatever
    /// the CPU: AVX-512 VNNI multiplies them several times faster than the row layout; elsewhere
    /// a scalar loop does, slowly. [`into_fastest`](Self::into_fastest) tiles only where it pays.
    pub fn into_tiled(self) -> Result<Self, KernelError> {
        tiles::Tiles::refusal(self.ty, self.rows).map_or_else(|| Ok(self.tile()), |why| Err(KernelError::Tiles(why)))
    }

    /// Whether a `ty` matrix of `rows` rows gets tiles on this CPU ([`into_fastest`](Self::into_fastest)).
    pub fn tiles_pay(ty: WeightType, rows: usize) -> bool {
        tiles::Tiles::refusal(ty, rows).is_none() && tiles::Tiles::accelerated()
    }

    fn tile(self) -> Self {
        if self.tiled.is_some() {
            return self;
        }
        let tiled = tiles::Tiles::from_blocks(self.ty, self.rows, self.cols, &self.data);
        Self { data: Vec::new(), tiled: Some(tiled), ..self }
    }

    /// The fastest layout for this CPU: tiled when it has AVX-512 VNNI and the matrix can be
    /// tiled, unchanged otherwise.
    pub fn into_fastest(self) -> Self {
        if Self::tiles_pay(self.ty, self.rows) { self.tile() } else { self }
    }

    /// [`new`](Self::new) then [`into_fastest`](Self::into_fastest): a matrix that gets tiles
    /// is built from `data` directly (borrowed blocks are never copied); otherwise `data` is
    /// kept as it is, copied only if it was borrowed.
    pub fn new_fastest(ty: WeightType, rows: usize, cols: usize, data: Cow<'_, [u8]>) -> Result<Self, KernelError> {
        if !Self::tiles_pay(ty, rows) {
            return Self::new(ty, rows, cols, data.into_owned());
        }
        Self::check(ty, rows, cols, data.len())?;
        let tiled = tiles::Tiles::from_blocks(ty, rows, cols, &data);
        Ok(Self { ty, rows, cols, data: Vec::new(), tiled: Some(tiled) })
    }

    /// Whether this CPU multiplies tiled matrices with AVX-512 VNNI.
    pub fn tiles_accelerated() -> bool {
        tiles::Tiles::accelerated()
    }

    /// Whether the weights are in 16-row tiles.
    pub fn is_tiled(&self) -> bool {
        self.tiled.is_some()
    }

    /// The weight type.
    pub fn weight_type(&self) -> WeightType {
        self.ty
    }

    /// Rows (outputs).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (inputs).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of weights.
    pub fn bytes(&self) -> usize {
        self.tiled.as_ref().map_or(self.data.len(), tiles::Tiles::bytes)
    }

    fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_values() * self.ty.block_bytes()
    }

    fn row(&self, i: usize) -> &[u8] {
        let n = self.row_bytes();
        &self.data[i * n..(i + 1) * n]
    }

    /// Row `i` dequantized into `out` (`cols` floats): an embedding lookup.
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) -> Result<(), KernelError> {
        if i >= self.rows {
            return Err(KernelError::Shape { what: "row index", expected: self.rows, found: i });
        }
        if out.len() != self.cols {
            return Err(KernelError::Shape { what: "row output", expected: self.cols, found: out.len() });
        }
        match &self.tiled {
            Some(tiled) => tiled.dequantize_row(i, out),
            None => blocks::dequantize_row(self.ty, self.row(i), out),
        }
        Ok(())
    }

    /// `out = x · Wᵀ` for `x` of `m` rows (`[m, cols]`, row-major) into `out` (`[m, rows]`),
    /// on the rayon pool, with the fastest path this CPU has.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<(), KernelError> {
        self.matmul_with(Isa::detect(), x, m, out)
    }

    /// [`matmul`](Self::matmul) on a chosen instruction set.
    pub fn matmul_with(&self, isa: Isa, x: &[f32], m: usize, out: &mut [f32]) -> Result<(), KernelError> {
        self.matmul_on(&Rayon, isa, x, m, out)
    }

    /// [`matmul`](Self::matmul) with the tasks on `par` and a chosen instruction set.
    pub fn matmul_on(
        &self,
        par: &dyn Parallel,
        isa: Isa,
        x: &[f32],
        m: usize,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        if x.len() != m * self.cols {
            return Err(KernelError::Shape { what: "matmul input", expected: m * self.cols, found: x.len() });
        }
        if out.len() != m * self.rows {
            return Err(KernelError::Shape { what: "matmul output", expected: m * self.rows, found: out.len() });
        }
        if m == 0 {
            return Ok(());
        }
        let acts = QuantizedActivations::quantize_on(par, x, m, self.cols, self.ty.activation_blocks());
        self.multiply(par, isa, &acts, out);
        Ok(())
    }

    /// `outs[j] = x · W_jᵀ` for matrices `mats` of the same columns (a layer's q, k and v
    /// projections, or its gate and up): the activations are quantized once per block form and
    /// the tiled matrices' tasks run as one parallel pass on `par` (one synchronization instead
    /// of one per matrix); matrices without tiles are multiplied one after another.
    pub fn matmul_group_on(
        par: &dyn Parallel,
        isa: Isa,
        x: &[f32],
        m: usize,
        mats: &[&QuantizedMatrix],
        outs: &mut [&mut [f32]],
    ) -> Result<(), KernelError> {
        if mats.len() != outs.len() {
            return Err(KernelError::Shape { what: "matmul group outputs", expected: mats.len(), found: outs.len() });
        }
        for (matrix, out) in mats.iter().zip(outs.iter()) {
            if x.len() != m * matrix.cols {
                return Err(KernelError::Shape { what: "matmul input", expected: m * matrix.cols, found: x.len() });
            }
            if out.len() != m * matrix.rows {
                return Err(KernelError::Shape { what: "matmul output", expected: m * matrix.rows, found: out.len() });
            }
        }
        let Some(cols) = mats.first().map(|w| w.cols) else {
            return Ok(());
        };
        if m == 0 {
            return Ok(());
        }
        let mut quantized: Vec<QuantizedActivations> = Vec::with_capacity(2);
        for matrix in mats {
            let blocks = matrix.ty.activation_blocks();
            if !quantized.iter().any(|a| a.blocks() == blocks) {
                quantized.push(QuantizedActivations::quantize_on(par, x, m, cols, blocks));
            }
        }
        let acts_for = |matrix: &QuantizedMatrix| -> &QuantizedActivations {
            let blocks = matrix.ty.activation_blocks();
            quantized.iter().find(|a| a.blocks() == blocks).unwrap_or(&quantized[0])
        };
        let mut jobs = Vec::with_capacity(mats.len());
        let mut tiled_outs = Vec::with_capacity(mats.len());
        for (matrix, out) in mats.iter().zip(outs.iter_mut()) {
            match &matrix.tiled {
                Some(tiles) => {
                    jobs.push((tiles, acts_for(matrix)));
                    tiled_outs.push(&mut **out);
                }
                None => matrix.multiply(par, isa, acts_for(matrix), out),
            }
        }
        tiles::multiply_group(par, isa != Isa::portable(), &jobs, &mut tiled_outs);
        Ok(())
    }

    /// `out = acts · Wᵀ` for activations quantized already (`acts.k() == cols`).
    pub fn matmul_quantized(&self, isa: Isa, acts: &QuantizedActivations, out: &mut [f32]) -> Result<(), KernelError> {
        if acts.k() != self.cols || acts.blocks() != self.ty.activation_blocks() {
            return Err(KernelError::Shape {
                what: "quantized activations (columns)",
                expected: self.cols,
                found: acts.k(),
            });
        }
        if out.len() != acts.rows() * self.rows {
            return Err(KernelError::Shape {
                what: "matmul output",
                expected: acts.rows() * self.rows,
                found: out.len(),
            });
        }
        self.multiply(&Rayon, isa, acts, out);
        Ok(())
    }

    fn multiply(&self, par: &dyn Parallel, isa: Isa, acts: &QuantizedActivations, out: &mut [f32]) {
        if let Some(tiled) = &self.tiled {
            tiled.multiply(par, isa != Isa::portable(), acts, out);
            return;
        }
        let m = acts.rows();
        let rows: Vec<Row<'_>> = (0..m).map(|i| acts.row(i)).collect();
        if m == 1 {
            // One activation row: outputs are contiguous per task already.
            let row = [rows[0]];
            let parts: Vec<&mut [f32]> = out.chunks_mut(4 * ROWS_PER_TASK).collect();
            for_each_part(par, parts, |task, dst| {
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = isa.dot(self.ty, self.row(task * 4 * ROWS_PER_TASK + j), &row)[0];
                }
            });
            return;
        }
        // Each task owns ROWS_PER_TASK weight rows and writes their outputs for every activation
        // row into its part of a transposed buffer ([rows, m]), so tasks never share memory.
        let per_activation_row = self.cols + self.cols / acts.blocks().values() * 6;
        let tile = (TILE_BYTES / per_activation_row).max(4) / 4 * 4;
        let mut transposed = vec![0.0f32; self.rows * m];
        let parts: Vec<&mut [f32]> = transposed.chunks_mut(ROWS_PER_TASK * m).collect();
        for_each_part(par, parts, |task, dst| {
            let first = task * ROWS_PER_TASK;
            for start in (0..m).step_by(tile) {
                let end = (start + tile).min(m);
                for (j, dst) in dst.chunks_exact_mut(m).enumerate() {
                    let w = self.row(first + j);
                    let mut i = start;
                    while i + 4 <= end {
                        let four = [rows[i], rows[i + 1], rows[i + 2], rows[i + 3]];
                        dst[i..i + 4].copy_from_slice(&isa.dot(self.ty, w, &four));
                        i += 4;
                    }
                    for i in i..end {
                        dst[i] = isa.dot(self.ty, w, &[rows[i]])[0];
                    }
                }
            }
        });
        let parts: Vec<&mut [f32]> = out.chunks_mut(self.rows).collect();
        for_each_part(par, parts, |i, out| {
            for (j, o) in out.iter_mut().enumerate() {
                *o = transposed[j * m + i];
            }
        });
    }
}

#[cfg(test)]
mod tests;
