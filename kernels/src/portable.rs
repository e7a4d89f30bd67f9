//! Portable dot products of one weight row with `R` activation rows: integer sums per block,
//! then one float multiply-add per block, the arithmetic the SIMD paths vectorize. Used on
//! CPUs without a SIMD path, and as the tests' reference for those paths.

use crate::activations::Row;
use crate::blocks::{WeightType, f16_at, q4k_scale_min, q6k_quant, quant32};

/// `R` dot products of the weight row `w` (whole blocks of `ty`) with `rows`.
pub(crate) fn dot<const R: usize>(ty: WeightType, w: &[u8], rows: &[Row<'_>; R]) -> [f32; R] {
    let mut out = [0.0f32; R];
    let bytes = ty.block_bytes();
    for (b, block) in w.chunks_exact(bytes).enumerate() {
        match ty {
            WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q5_0 | WeightType::Q8_0 => {
                let mut quants = [0i32; 32];
                for (i, q) in quants.iter_mut().enumerate() {
                    *q = quant32(ty, block, i);
                }
                let d = f16_at(block, 0);
                for (o, row) in out.iter_mut().zip(rows) {
                    let a = &row.qs[32 * b..32 * b + 32];
                    let sum: i32 = quants.iter().zip(a).map(|(&q, &a)| q * i32::from(a)).sum();
                    let asum = i32::from(row.sums[b]);
                    let ad = row.scales[b];
                    *o += match ty {
                        WeightType::Q4_0 => d * ad * (sum - 8 * asum) as f32,
                        WeightType::Q5_0 => d * ad * (sum - 16 * asum) as f32,
                        WeightType::Q4_1 => d * ad * sum as f32 + f16_at(block, 2) * ad * asum as f32,
                        _ => d * ad * sum as f32,
                    };
                }
            }
            WeightType::Q4K => {
                let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
                let (scales, qs) = (&block[4..16], &block[16..144]);
                let mut quants = [0i32; 256];
                for (i, q) in quants.iter_mut().enumerate() {
                    let (chunk, l) = (i / 64, i % 64);
                    let byte = qs[32 * chunk + l % 32];
                    *q = i32::from(if l < 32 { byte & 0x0F } else { byte >> 4 });
                }
                for (o, row) in out.iter_mut().zip(rows) {
                    let a = &row.qs[256 * b..256 * b + 256];
                    let (mut sum, mut mins) = (0i32, 0i32);
                    for j in 0..8 {
                        let (sc, m) = q4k_scale_min(j, scales);
                        let part: i32 = (32 * j..32 * j + 32).map(|i| quants[i] * i32::from(a[i])).sum();
                        sum += i32::from(sc) * part;
                        mins += i32::from(m)
                            * (i32::from(row.sums[16 * b + 2 * j]) + i32::from(row.sums[16 * b + 2 * j + 1]));
                    }
                    let ad = row.scales[b];
                    *o += d * ad * sum as f32 - dmin * ad * mins as f32;
                }
            }
            WeightType::Q6K => {
                let d = f16_at(block, 208);
                let mut quants = [0i32; 256];
                for (i, q) in quants.iter_mut().enumerate() {
                    *q = q6k_quant(block, i).0;
                }
                for (o, row) in out.iter_mut().zip(rows) {
                    let a = &row.qs[256 * b..256 * b + 256];
                    let mut sum = 0i32;
                    for g in 0..16 {
                        let part: i32 = (16 * g..16 * g + 16).map(|i| quants[i] * i32::from(a[i])).sum();
                        let offset = 32 * i32::from(row.sums[16 * b + g]);
                        sum += i32::from(block[192 + g] as i8) * (part - offset);
                    }
                    *o += d * row.scales[b] * sum as f32;
                }
            }
        }
    }
    out
}
