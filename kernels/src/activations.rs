//! Activations quantized to 8 bits per value, as ggml does before a quantized matmul: blocks
//! of 32 (scale rounded through f16 like ggml's `Q8_0`, round half to even as its SIMD paths do) for the
//! 32-weight types, blocks of 256 (ggml's `Q8_K`: scale `max / -127`, round half to even)
//! for the k-quants. Each block also keeps the sums of its quants that the offset terms need.

use crate::blocks::ActivationBlocks;

/// `rows` activation rows of `k` values, quantized.
#[derive(Clone, Debug)]
pub struct QuantizedActivations {
    blocks: ActivationBlocks,
    k: usize,
    rows: usize,
    /// `rows * k` quants.
    qs: Vec<i8>,
    /// One scale per block.
    scales: Vec<f32>,
    /// Blocks of 32: one sum per block; of 256: one sum per 16 values.
    sums: Vec<i16>,
}

/// One quantized row, borrowed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Row<'a> {
    pub qs: &'a [i8],
    pub scales: &'a [f32],
    pub sums: &'a [i16],
}

impl ActivationBlocks {
    /// Values per scale.
    pub const fn values(self) -> usize {
        match self {
            ActivationBlocks::Of32 => 32,
            ActivationBlocks::Of256 => 256,
        }
    }

    /// Values per stored sum.
    const fn values_per_sum(self) -> usize {
        match self {
            ActivationBlocks::Of32 => 32,
            ActivationBlocks::Of256 => 16,
        }
    }
}

impl QuantizedActivations {
    /// Quantizes `x` (`rows * k` floats, row-major); `k` must be a multiple of the block size.
    pub fn quantize(x: &[f32], rows: usize, k: usize, blocks: ActivationBlocks) -> Self {
        Self::quantize_on(&crate::Rayon, x, rows, k, blocks)
    }

    /// [`quantize`](Self::quantize) with one task per row on `par`.
    pub fn quantize_on(par: &dyn crate::Parallel, x: &[f32], rows: usize, k: usize, blocks: ActivationBlocks) -> Self {
        assert_eq!(x.len(), rows * k, "activations: expected {rows} x {k} values");
        assert!(k.is_multiple_of(blocks.values()), "activations: k = {k} is not a multiple of {}", blocks.values());
        let mut this = Self {
            blocks,
            k,
            rows,
            qs: vec![0; rows * k],
            scales: vec![0.0; rows * k / blocks.values()],
            sums: vec![0; rows * k / blocks.values_per_sum()],
        };
        let (bs, ss) = (k / blocks.values(), k / blocks.values_per_sum());
        let parts: Vec<_> = x
            .chunks(k)
            .zip(this.qs.chunks_mut(k))
            .zip(this.scales.chunks_mut(bs))
            .zip(this.sums.chunks_mut(ss))
            .collect();
        crate::for_each_part(par, parts, |_, (((x, qs), scales), sums)| match blocks {
            ActivationBlocks::Of32 => quantize_row_32(x, qs, scales, sums),
            ActivationBlocks::Of256 => quantize_row_256(x, qs, scales, sums),
        });
        this
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The block form.
    pub fn blocks(&self) -> ActivationBlocks {
        self.blocks
    }

    pub(crate) fn row(&self, i: usize) -> Row<'_> {
        let (bs, ss) = (self.k / self.blocks.values(), self.k / self.blocks.values_per_sum());
        Row {
            qs: &self.qs[i * self.k..(i + 1) * self.k],
            scales: &self.scales[i * bs..(i + 1) * bs],
            sums: &self.sums[i * ss..(i + 1) * ss],
        }
    }

    /// Row `i` dequantized (what the integer kernels effectively multiply with).
    pub fn dequantize_row(&self, i: usize) -> Vec<f32> {
        let row = self.row(i);
        let per = self.blocks.values();
        row.qs.iter().enumerate().map(|(j, &q)| row.scales[j / per] * f32::from(q)).collect()
    }
}

/// Whether the AVX2 quantizers of `x86_quantize` run here (they give the scalar loops' values exactly).
#[cfg(target_arch = "x86_64")]
fn simd() -> bool {
    crate::Isa::detect() != crate::Isa::portable()
}

fn quantize_row_32(x: &[f32], qs: &mut [i8], scales: &mut [f32], sums: &mut [i16]) {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        for (((x, qs), scale), sum) in x.chunks_exact(32).zip(qs.chunks_exact_mut(32)).zip(scales).zip(sums) {
            // SAFETY: `simd()` is true only where `x86::available()` said yes.
            #[allow(unsafe_code)]
            let (d, total) = unsafe { crate::x86_quantize::quantize_block_32(x, qs) };
            *scale = half::f16::from_f32(d).to_f32();
            *sum = total;
        }
        return;
    }
    quantize_row_32_scalar(x, qs, scales, sums);
}

fn quantize_row_256(x: &[f32], qs: &mut [i8], scales: &mut [f32], sums: &mut [i16]) {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        for (((x, qs), scale), sums) in
            x.chunks_exact(256).zip(qs.chunks_exact_mut(256)).zip(scales).zip(sums.chunks_exact_mut(16))
        {
            // SAFETY: `simd()` is true only where `x86::available()` said yes.
            #[allow(unsafe_code)]
            let d = unsafe { crate::x86_quantize::quantize_block_256(x, qs, sums) };
            *scale = d;
        }
        return;
    }
    quantize_row_256_scalar(x, qs, scales, sums);
}

/// The plain loop for blocks of 32; rounds half to even, as ggml's SIMD quantizers do.
pub(crate) fn quantize_row_32_scalar(x: &[f32], qs: &mut [i8], scales: &mut [f32], sums: &mut [i16]) {
    for (((x, qs), scale), sum) in x.chunks_exact(32).zip(qs.chunks_exact_mut(32)).zip(scales).zip(sums) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut total = 0i16;
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = (v * inverse).round_ties_even() as i8;
            total += i16::from(*q);
        }
        // ggml stores this scale as f16; rounding it the same way keeps products identical.
        *scale = half::f16::from_f32(d).to_f32();
        *sum = total;
    }
}

/// The plain loop for blocks of 256 (ggml's `quantize_row_q8_K`).
pub(crate) fn quantize_row_256_scalar(x: &[f32], qs: &mut [i8], scales: &mut [f32], sums: &mut [i16]) {
    for (((x, qs), scale), sums) in
        x.chunks_exact(256).zip(qs.chunks_exact_mut(256)).zip(scales).zip(sums.chunks_exact_mut(16))
    {
        let (mut max, mut amax) = (0.0f32, 0.0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            qs.fill(0);
            sums.fill(0);
            *scale = 0.0;
            continue;
        }
        let inverse = -127.0 / max;
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = ((inverse * v).round_ties_even() as i32).min(127) as i8;
        }
        for (sum, qs) in sums.iter_mut().zip(qs.chunks_exact(16)) {
            *sum = qs.iter().map(|&q| i16::from(q)).sum();
        }
        *scale = 1.0 / inverse;
    }
}
