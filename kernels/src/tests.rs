#![allow(clippy::unwrap_used)]

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// Random blocks of `ty` with finite, moderate f16 scales and random quants.
fn random_blocks(ty: WeightType, blocks: usize, rng: &mut StdRng) -> Vec<u8> {
    let mut data = vec![0u8; blocks * ty.block_bytes()];
    rng.fill(&mut data[..]);
    let scale = |rng: &mut StdRng| half::f16::from_f32(rng.random_range(-0.05f32..0.05)).to_bits().to_le_bytes();
    for block in data.chunks_exact_mut(ty.block_bytes()) {
        match ty {
            WeightType::Q4_0 | WeightType::Q5_0 | WeightType::Q8_0 => block[0..2].copy_from_slice(&scale(rng)),
            WeightType::Q4_1 | WeightType::Q4K => {
                block[0..2].copy_from_slice(&scale(rng));
                block[2..4].copy_from_slice(&scale(rng));
            }
            WeightType::Q6K => block[208..210].copy_from_slice(&scale(rng)),
        }
    }
    data
}

fn candle_type(ty: WeightType) -> GgmlDType {
    match ty {
        WeightType::Q4_0 => GgmlDType::Q4_0,
        WeightType::Q4_1 => GgmlDType::Q4_1,
        WeightType::Q5_0 => GgmlDType::Q5_0,
        WeightType::Q8_0 => GgmlDType::Q8_0,
        WeightType::Q4K => GgmlDType::Q4K,
        WeightType::Q6K => GgmlDType::Q6K,
    }
}

fn random_activations(len: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-2.0f32..2.0) * if rng.random_bool(0.05) { 8.0 } else { 1.0 }).collect()
}

#[test]
fn dequantization_matches_candle_for_every_type() {
    let mut rng = StdRng::seed_from_u64(7);
    for ty in WeightType::ALL {
        let blocks = 8;
        let data = random_blocks(ty, blocks, &mut rng);
        let n = blocks * ty.block_values();
        let mut ours = vec![0.0f32; n];
        blocks::dequantize_row(ty, &data, &mut ours);
        let storage = QStorage::from_data(Cow::Owned(data), &candle_core::Device::Cpu, candle_type(ty)).unwrap();
        let theirs = QTensor::new(storage, (1, n)).unwrap().dequantize(&candle_core::Device::Cpu).unwrap();
        let theirs = theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{}: weight {i}: ours {a}, candle {b}", ty.name());
        }
    }
}

#[test]
fn quantized_activations_round_to_within_half_a_step_and_keep_their_sums() {
    let mut rng = StdRng::seed_from_u64(3);
    let x = random_activations(2 * 512, &mut rng);
    for blocks in [ActivationBlocks::Of32, ActivationBlocks::Of256] {
        let acts = QuantizedActivations::quantize(&x, 2, 512, blocks);
        for r in 0..2 {
            let back = acts.dequantize_row(r);
            let row = acts.row(r);
            for (j, (&v, &b)) in x[r * 512..(r + 1) * 512].iter().zip(&back).enumerate() {
                let step = row.scales[j / blocks.values()].abs();
                // Blocks of 32 quantize with the exact scale and store it rounded to f16
                // (as ggml does): up to 127 quants times half an f16 ulp on top.
                let stored = if blocks == ActivationBlocks::Of32 { 127.0 * step * 2f32.powi(-11) } else { 0.0 };
                assert!(
                    (v - b).abs() <= 0.5 * step * 1.001 + stored + 1e-7,
                    "{blocks:?} row {r} value {j}: {v} came back {b}"
                );
            }
            let per_sum = row.qs.len() / row.sums.len();
            for (s, qs) in row.sums.iter().zip(row.qs.chunks(per_sum)) {
                assert_eq!(i32::from(*s), qs.iter().map(|&q| i32::from(q)).sum::<i32>());
            }
        }
    }
    // All zeros: zero scales, zero quants, no NaN.
    let zeros = QuantizedActivations::quantize(&[0.0; 256], 1, 256, ActivationBlocks::Of256);
    assert!(zeros.dequantize_row(0).iter().all(|&v| v == 0.0));
}

/// The exact dot product of the dequantized weights with the dequantized activations, and
/// the sum of the absolute terms (the scale for a tolerance).
fn reference_dot(ty: WeightType, w: &[u8], acts: &QuantizedActivations, r: usize) -> (f64, f64) {
    let mut weights = vec![0.0f32; acts.k()];
    blocks::dequantize_row(ty, w, &mut weights);
    let a = acts.dequantize_row(r);
    let exact = weights.iter().zip(&a).map(|(&w, &a)| f64::from(w) * f64::from(a)).sum();
    let magnitude = weights.iter().zip(&a).map(|(&w, &a)| (f64::from(w) * f64::from(a)).abs()).sum();
    (exact, magnitude)
}

fn isas() -> Vec<Isa> {
    let mut isas = vec![Isa::portable()];
    if Isa::detect() != Isa::portable() {
        isas.push(Isa::detect());
    } else {
        eprintln!("no SIMD path on this CPU: only the portable kernels are tested");
    }
    isas
}

#[test]
fn every_kernel_matches_the_dequantized_reference_on_random_blocks() {
    let mut rng = StdRng::seed_from_u64(11);
    for isa in isas() {
        for ty in WeightType::ALL {
            for cols in [256, 1024, 2560] {
                let w = random_blocks(ty, cols / ty.block_values(), &mut rng);
                let x = random_activations(5 * cols, &mut rng);
                let acts = QuantizedActivations::quantize(&x, 5, cols, ty.activation_blocks());
                let rows: Vec<Row<'_>> = (0..5).map(|i| acts.row(i)).collect();
                let four = isa.dot(ty, &w, &[rows[0], rows[1], rows[2], rows[3]]);
                let one = isa.dot(ty, &w, &[rows[4]]);
                for (r, got) in four.iter().chain(&one).enumerate() {
                    let (exact, magnitude) = reference_dot(ty, &w, &acts, r);
                    let error = (f64::from(*got) - exact).abs();
                    assert!(
                        error <= 1e-5 * magnitude + 1e-6,
                        "{} {} cols {cols} row {r}: got {got}, exact {exact} (error {error:e}, terms {magnitude:e})",
                        isa.name(),
                        ty.name()
                    );
                }
            }
        }
    }
}

#[test]
fn the_simd_path_agrees_with_the_portable_path_on_extreme_quants() {
    // All-max and all-min quants and scales stress the i16 and i32 intermediate sums.
    let isa = Isa::detect();
    if isa == Isa::portable() {
        eprintln!("no SIMD path on this CPU: nothing to compare");
        return;
    }
    for ty in WeightType::ALL {
        for fill in [0x00u8, 0xFF, 0x80, 0x7F] {
            let cols = 512;
            let mut w = vec![fill; cols / ty.block_values() * ty.block_bytes()];
            for block in w.chunks_exact_mut(ty.block_bytes()) {
                let at = if ty == WeightType::Q6K { 208 } else { 0 };
                block[at..at + 2].copy_from_slice(&half::f16::from_f32(0.01).to_bits().to_le_bytes());
                if matches!(ty, WeightType::Q4_1 | WeightType::Q4K) {
                    block[2..4].copy_from_slice(&half::f16::from_f32(-0.02).to_bits().to_le_bytes());
                }
            }
            for value in [127.0f32, -127.0] {
                let acts = QuantizedActivations::quantize(&vec![value; cols], 1, cols, ty.activation_blocks());
                let (simd, portable) =
                    (isa.dot(ty, &w, &[acts.row(0)])[0], Isa::portable().dot(ty, &w, &[acts.row(0)])[0]);
                let (exact, magnitude) = reference_dot(ty, &w, &acts, 0);
                for got in [simd, portable] {
                    assert!(
                        (f64::from(got) - exact).abs() <= 1e-5 * magnitude + 1e-6,
                        "{} fill {fill:#x} value {value}: got {got} (simd {simd}, portable {portable}), exact {exact}",
                        ty.name()
                    );
                }
                // The same row 16 times, in tiles (for the types that have them).
                if let Ok(tiled) = QuantizedMatrix::new(ty, 16, cols, w.repeat(16)).unwrap().into_tiled() {
                    for isa in [isa, Isa::portable()] {
                        let mut out = [0.0f32; 16];
                        tiled.matmul_quantized(isa, &acts, &mut out).unwrap();
                        for got in out {
                            assert!(
                                (f64::from(got) - exact).abs() <= 1e-5 * magnitude + 1e-6,
                                "tiled {} on {} fill {fill:#x} value {value}: got {got}, exact {exact}",
                                ty.name(),
                                isa.name()
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_matches_row_by_row_products_across_tiles_and_remainders() {
    let mut rng = StdRng::seed_from_u64(5);
    for isa in isas() {
        for (ty, rows, cols, m) in [
            (WeightType::Q8_0, 37, 4096, 45),
            (WeightType::Q4K, 20, 2048, 6),
            (WeightType::Q6K, 65, 512, 1),
            (WeightType::Q5_0, 33, 640, 9),
            (WeightType::Q4_1, 17, 576, 4),
            (WeightType::Q4_0, 3, 64, 2),
        ] {
            let data = random_blocks(ty, rows * cols / ty.block_values(), &mut rng);
            let matrix = QuantizedMatrix::new(ty, rows, cols, data).unwrap();
            let x = random_activations(m * cols, &mut rng);
            let mut out = vec![f32::NAN; m * rows];
            matrix.matmul_with(isa, &x, m, &mut out).unwrap();
            let acts = QuantizedActivations::quantize(&x, m, cols, ty.activation_blocks());
            for i in 0..m {
                for j in 0..rows {
                    let (exact, magnitude) = reference_dot(ty, matrix.row(j), &acts, i);
                    let got = out[i * rows + j];
                    assert!(
                        (f64::from(got) - exact).abs() <= 1e-5 * magnitude + 1e-6,
                        "{} {} [{i}, {j}]: got {got}, exact {exact}",
                        isa.name(),
                        ty.name()
                    );
                }
            }
        }
    }
}

#[test]
fn quantized_matmul_stays_close_to_the_float_product() {
    // Activation quantization costs accuracy, but little: within 2% of the f32 product's scale.
    let mut rng = StdRng::seed_from_u64(9);
    for ty in WeightType::ALL {
        let (rows, cols) = (8, 1024);
        let data = random_blocks(ty, rows * cols / ty.block_values(), &mut rng);
        let matrix = QuantizedMatrix::new(ty, rows, cols, data).unwrap();
        let x = random_activations(cols, &mut rng);
        let mut out = vec![0.0; rows];
        matrix.matmul(&x, 1, &mut out).unwrap();
        let mut weights = vec![0.0f32; cols];
        for (j, got) in out.iter().enumerate() {
            matrix.dequantize_row(j, &mut weights).unwrap();
            let exact: f64 = weights.iter().zip(&x).map(|(&w, &x)| f64::from(w) * f64::from(x)).sum();
            let magnitude: f64 = weights.iter().zip(&x).map(|(&w, &x)| (f64::from(w) * f64::from(x)).abs()).sum();
            assert!((f64::from(*got) - exact).abs() <= 0.02 * magnitude, "{} row {j}: {got} vs {exact}", ty.name());
        }
    }
}

#[test]
fn bad_shapes_are_errors_naming_what_was_expected() {
    let err = QuantizedMatrix::new(WeightType::Q4K, 2, 300, vec![]).unwrap_err();
    assert_eq!(err.to_string(), "Q4_K needs a multiple of 256 columns, found 300");
    let err = QuantizedMatrix::new(WeightType::Q8_0, 2, 64, vec![0; 100]).unwrap_err();
    assert_eq!(err.to_string(), "a 2 x 64 Q8_0 matrix takes 136 bytes, found 100");
    let matrix = QuantizedMatrix::new(WeightType::Q8_0, 2, 64, vec![0; 136]).unwrap();
    let err = matrix.matmul(&[0.0; 63], 1, &mut [0.0; 2]).unwrap_err();
    assert_eq!(err.to_string(), "matmul input: expected 64 values, found 63");
    let err = matrix.matmul(&[0.0; 64], 1, &mut [0.0; 3]).unwrap_err();
    assert_eq!(err.to_string(), "matmul output: expected 2 values, found 3");
    assert!(matrix.dequantize_row(2, &mut [0.0; 64]).is_err());
}

/// A pool that runs the tasks on this thread, last first: results must not depend on which
/// pool runs the tasks or in what order.
struct Backwards(std::sync::atomic::AtomicUsize);

impl Parallel for Backwards {
    fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        for i in (0..tasks).rev() {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            task(i);
        }
    }
}

#[test]
fn matmul_on_another_pool_gives_the_same_result() {
    let mut rng = StdRng::seed_from_u64(9);
    for (ty, rows, cols, m) in
        [(WeightType::Q8_0, 300, 256, 1), (WeightType::Q4K, 40, 512, 7), (WeightType::Q5_0, 70, 640, 1)]
    {
        let matrix =
            QuantizedMatrix::new(ty, rows, cols, random_blocks(ty, rows * cols / ty.block_values(), &mut rng)).unwrap();
        let x = random_activations(m * cols, &mut rng);
        let (mut on_rayon, mut on_pool) = (vec![0.0; m * rows], vec![f32::NAN; m * rows]);
        matrix.matmul(&x, m, &mut on_rayon).unwrap();
        let pool = Backwards(std::sync::atomic::AtomicUsize::new(0));
        matrix.matmul_on(&pool, Isa::detect(), &x, m, &mut on_pool).unwrap();
        assert_eq!(on_rayon, on_pool, "{}", ty.name());
        assert!(pool.0.into_inner() > 1, "{}: the pool ran no tasks", ty.name());
    }
}

#[test]
fn every_batch_size_gives_each_row_what_it_gets_alone() {
    let mut rng = StdRng::seed_from_u64(11);
    for (ty, rows, cols) in [
        (WeightType::Q4_1, 53, 576),
        (WeightType::Q8_0, 53, 576),
        (WeightType::Q5_0, 21, 640),
        (WeightType::Q4K, 19, 512),
    ] {
        let matrix =
            QuantizedMatrix::new(ty, rows, cols, random_blocks(ty, rows * cols / ty.block_values(), &mut rng)).unwrap();
        for m in 1..=70 {
            let x = random_activations(m * cols, &mut rng);
            let mut batched = vec![f32::NAN; m * rows];
            matrix.matmul(&x, m, &mut batched).unwrap();
            for i in 0..m {
                let mut alone = vec![f32::NAN; rows];
                matrix.matmul(&x[i * cols..(i + 1) * cols], 1, &mut alone).unwrap();
                assert_eq!(&batched[i * rows..(i + 1) * rows], &alone[..], "{} m = {m}, row {i}", ty.name());
            }
        }
    }
}

#[test]
fn tiled_matrices_give_what_the_row_kernels_give() {
    eprintln!("tiled kernels accelerated (AVX-512 VNNI): {}", QuantizedMatrix::tiles_accelerated());
    let mut rng = StdRng::seed_from_u64(21);
    for (ty, rows, cols) in [
        (WeightType::Q8_0, 48, 640),
        (WeightType::Q5_0, 32, 640),
        (WeightType::Q4K, 48, 512),
        (WeightType::Q6K, 32, 768),
    ] {
        let w = random_blocks(ty, rows * cols / ty.block_values(), &mut rng);
        let w_bytes = w.clone();
        let matrix = QuantizedMatrix::new(ty, rows, cols, w).unwrap();
        let tiled = matrix.clone().into_tiled().unwrap();
        assert!(tiled.is_tiled() && !matrix.is_tiled());
        // Same bytes as GGUF, but Q4_K's six-bit scales and mins take a byte each.
        let extra = if ty == WeightType::Q4K { rows * cols / 256 * 4 } else { 0 };
        assert_eq!(tiled.bytes(), matrix.bytes() + extra, "{}", ty.name());
        let fastest = QuantizedMatrix::new_fastest(ty, rows, cols, Cow::Borrowed(&w_bytes)).unwrap();
        assert_eq!(fastest.is_tiled(), QuantizedMatrix::tiles_accelerated());
        for m in [1, 3, 4, 9] {
            let x = random_activations(m * cols, &mut rng);
            let mut expected = vec![0.0f32; m * rows];
            matrix.matmul_with(Isa::portable(), &x, m, &mut expected).unwrap();
            // The detected path (VNNI where the CPU has it) and the scalar loop over the tiles.
            for (which, isa) in [(&tiled, Isa::detect()), (&tiled, Isa::portable()), (&fastest, Isa::detect())] {
                let mut got = vec![0.0f32; m * rows];
                which.matmul_with(isa, &x, m, &mut got).unwrap();
                for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                    assert!(
                        (g - e).abs() <= 1e-4 * e.abs().max(1.0),
                        "{} m = {m}, {}, output {i}: tiled {g}, rows {e}",
                        ty.name(),
                        isa.name()
                    );
                }
            }
        }
        let (mut a, mut b) = (vec![0.0; cols], vec![0.0; cols]);
        for row in [0, 17, rows - 1] {
            matrix.dequantize_row(row, &mut a).unwrap();
            tiled.dequantize_row(row, &mut b).unwrap();
            assert_eq!(a, b, "{} row {row}", ty.name());
        }
    }
    let odd = QuantizedMatrix::new(WeightType::Q8_0, 17, 64, vec![0; 17 * 2 * 34]).unwrap();
    assert_eq!(odd.clone().into_tiled().unwrap_err().to_string(), "tiles need a multiple of 16 rows");
    assert!(!odd.into_fastest().is_tiled());
    let short =
        QuantizedMatrix::new_fastest(WeightType::Q8_0, 16, 64, Cow::Borrowed(&[0; 100])).unwrap_err().to_string();
    assert_eq!(short, "a 16 x 64 Q8_0 matrix takes 1088 bytes, found 100");
    let q4 = QuantizedMatrix::new(WeightType::Q4_0, 16, 32, vec![0; 16 * 18]).unwrap();
    assert_eq!(q4.into_tiled().unwrap_err().to_string(), "only Q8_0, Q5_0, Q4_K and Q6_K matrices are tiled");
}

#[test]
fn a_group_gives_each_matrix_what_it_gets_alone() {
    let mut rng = StdRng::seed_from_u64(31);
    let cols = 512;
    // Tiled k-quants and Q8_0 beside a Q5_0 matrix that has no tiles and a Q4_K one whose 40
    // rows are not whole tiles: activations of both block forms, both paths.
    let mats: Vec<QuantizedMatrix> = [
        (WeightType::Q4K, 48),
        (WeightType::Q6K, 32),
        (WeightType::Q8_0, 64),
        (WeightType::Q5_0, 24),
        (WeightType::Q4K, 40),
    ]
    .into_iter()
    .map(|(ty, rows)| {
        let data = random_blocks(ty, rows * cols / ty.block_values(), &mut rng);
        QuantizedMatrix::new(ty, rows, cols, data).unwrap().into_fastest()
    })
    .collect();
    let refs: Vec<&QuantizedMatrix> = mats.iter().collect();
    for m in [1, 5] {
        let x = random_activations(m * cols, &mut rng);
        let mut outs: Vec<Vec<f32>> = mats.iter().map(|w| vec![f32::NAN; m * w.rows()]).collect();
        let mut views: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
        QuantizedMatrix::matmul_group_on(&Rayon, Isa::detect(), &x, m, &refs, &mut views).unwrap();
        for (matrix, got) in mats.iter().zip(&outs) {
            let mut alone = vec![0.0f32; m * matrix.rows()];
            matrix.matmul(&x, m, &mut alone).unwrap();
            assert_eq!(got, &alone, "{} x {} m = {m}", matrix.weight_type().name(), matrix.rows());
        }
    }
    let mut short = [0.0f32; 3];
    let err =
        QuantizedMatrix::matmul_group_on(&Rayon, Isa::detect(), &[0.0; 512], 1, &refs[..1], &mut [&mut short[..]])
            .unwrap_err();
    assert_eq!(err.to_string(), "matmul output: expected 48 values, found 3");
}

#[test]
fn the_simd_quantizers_give_the_scalar_loops_values() {
    let mut rng = StdRng::seed_from_u64(41);
    let k = 1024;
    let mut rows: Vec<Vec<f32>> = (0..6).map(|_| random_activations(k, &mut rng)).collect();
    // Halves of a step (ties), zeros, one block all zero, a largest value that is negative and
    // one whose magnitude appears with both signs.
    rows.push((0..k).map(|i| (i % 255) as f32 * 0.5 - 63.5).collect());
    rows.push((0..k).map(|i| if i < 256 { 0.0 } else { (i % 7) as f32 - 3.0 }).collect());
    rows.push(
        (0..k)
            .map(|i| {
                if i % 256 == 9 {
                    -40.0
                } else if i % 256 == 10 {
                    40.0
                } else {
                    1.0
                }
            })
            .collect(),
    );
    for x in &rows {
        let (bs32, bs256) = (k / 32, k / 256);
        let (mut q, mut s, mut sums) = (vec![0i8; k], vec![0f32; bs32], vec![0i16; bs32]);
        let (mut qr, mut sr, mut sumsr) = (vec![0i8; k], vec![0f32; bs32], vec![0i16; bs32]);
        activations::quantize_row_32_scalar(x, &mut qr, &mut sr, &mut sumsr);
        let acts = QuantizedActivations::quantize(x, 1, k, ActivationBlocks::Of32);
        let row = acts.row(0);
        q.copy_from_slice(row.qs);
        s.copy_from_slice(row.scales);
        sums.copy_from_slice(row.sums);
        assert_eq!((&q, &s, &sums), (&qr, &sr, &sumsr), "blocks of 32");
        let (mut qr, mut sr, mut sumsr) = (vec![0i8; k], vec![0f32; bs256], vec![0i16; k / 16]);
        activations::quantize_row_256_scalar(x, &mut qr, &mut sr, &mut sumsr);
        let acts = QuantizedActivations::quantize(x, 1, k, ActivationBlocks::Of256);
        let row = acts.row(0);
        assert_eq!((row.qs, row.scales, row.sums), (&qr[..], &sr[..], &sumsr[..]), "blocks of 256");
    }
}
