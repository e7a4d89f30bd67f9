//! Quantized matmul: Hearth's kernels against candle 0.11's `QMatMul` (the peer) on the same
//! weights, at the shapes of Gemma 3 270M and Qwen2.5 1.5B, for one row (decode), 8 rows (a
//! decode batch) and 256 rows (a prompt chunk).
//!
//! `cargo bench -p hearth-kernels --bench matmul [-- --quick] [-- --only Q8_0]`
//! Prints, per case, the median time of each, weight bytes streamed per second, and the ratio.
//! Both sides run on candle's barrier pool (as in hearth-server, where Hearth's kernels share
//! candle's threads): a second pool would fight candle's spinning workers for the cores.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::borrow::Cow;
use std::time::Duration;

use common::{CandlePool, time};

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};
use hearth_kernels::{Isa, QuantizedMatrix, WeightType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random_weights(ty: WeightType, rows: usize, cols: usize, rng: &mut StdRng) -> Vec<u8> {
    let mut data = vec![0u8; rows * cols / ty.block_values() * ty.block_bytes()];
    rng.fill(&mut data[..]);
    let scale = half::f16::from_f32(0.01).to_bits().to_le_bytes();
    for block in data.chunks_exact_mut(ty.block_bytes()) {
        let at = if ty == WeightType::Q6K { 208 } else { 0 };
        block[at..at + 2].copy_from_slice(&scale);
        if matches!(ty, WeightType::Q4_1 | WeightType::Q4K) {
            block[2..4].copy_from_slice(&scale);
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let budget = Duration::from_millis(if quick { 300 } else { 1500 });
    let cases = [
        ("gemma3 output (tied embedding)", WeightType::Q8_0, 262_144, 640),
        ("gemma3 ffn_gate/up", WeightType::Q5_0, 2048, 640),
        ("gemma3 ffn_gate/up widened to Q8_0", WeightType::Q8_0, 2048, 640),
        ("gemma3 attn_output", WeightType::Q4K, 640, 1024),
        ("gemma3 ffn_down", WeightType::Q6K, 640, 2048),
        ("smollm2 ffn_gate/up", WeightType::Q4_1, 1536, 576),
        ("qwen2.5-1.5b ffn_gate/up", WeightType::Q4K, 8960, 1536),
        ("qwen2.5-1.5b ffn_down", WeightType::Q6K, 1536, 8960),
        ("qwen2.5-1.5b attn_q/output", WeightType::Q4K, 1536, 1536),
        ("qwen2.5-1.5b output", WeightType::Q6K, 151_936, 1536),
        ("a Q4_K output of qwen2.5-1.5b size", WeightType::Q4K, 151_936, 1536),
    ];
    let threads = candle_core::utils::get_num_threads();
    let isa = Isa::detect();
    println!("hearth-kernels matmul vs candle 0.11 QMatMul; {threads} thread(s); Hearth path: {}", isa.name());
    println!(
        "{:<32} {:>5} {:>5} {:>11} {:>11} {:>9} {:>9} {:>7}  candle on the re-encoded type ms (ratio)",
        "case", "type", "m", "hearth ms", "candle ms", "hearth GB/s", "candle GB/s", "ratio"
    );
    let mut rng = StdRng::seed_from_u64(1);
    for (name, ty, rows, cols) in cases {
        if only.as_deref().is_some_and(|o| o != ty.name()) {
            continue;
        }
        let data = random_weights(ty, rows, cols, &mut rng);
        let bytes = data.len() as f64;
        let ours = QuantizedMatrix::new(ty, rows, cols, data.clone()).unwrap();
        let storage = QStorage::from_data(Cow::Owned(data), &Device::Cpu, candle_type(ty)).unwrap();
        let theirs = QMatMul::from_qtensor(QTensor::new(storage, (rows, cols)).unwrap()).unwrap();
        // What hearth-server ran before these kernels: Q5_0 re-encoded to Q8_0 (exact), Q4_1 to
        // Q4_0 (plus a 32x smaller offset matmul, left out here, so candle's figure is a floor).
        let reencoded = match ty {
            WeightType::Q5_0 => Some((GgmlDType::Q8_0, WeightType::Q8_0)),
            WeightType::Q4_1 => Some((GgmlDType::Q4_0, WeightType::Q4_0)),
            _ => None,
        }
        .map(|(dtype, as_ty)| {
            let data = random_weights(as_ty, rows, cols, &mut rng);
            let storage = QStorage::from_data(Cow::Owned(data), &Device::Cpu, dtype).unwrap();
            (dtype, QMatMul::from_qtensor(QTensor::new(storage, (rows, cols)).unwrap()).unwrap())
        });
        let tiled = QuantizedMatrix::tiles_accelerated().then(|| ours.clone().into_tiled().ok()).flatten();
        for m in [1usize, 8, 256] {
            if quick && m == 256 && rows > 100_000 {
                continue;
            }
            let x: Vec<f32> = (0..m * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let mut out = vec![0.0f32; m * rows];
            let t_ours = time(budget, || ours.matmul_on(&CandlePool, isa, &x, m, &mut out).unwrap());
            let input = Tensor::from_vec(x.clone(), (m, cols), &Device::Cpu).unwrap();
            let t_theirs = time(budget, || {
                theirs.forward(&input).unwrap();
            });
            // The 16-row tiled layout (AVX-512 VNNI), where the type and shape allow it.
            let tiled_text = match &tiled {
                Some(tiled) => {
                    let t = time(budget, || tiled.matmul_on(&CandlePool, isa, &x, m, &mut out).unwrap());
                    format!("  tiled {:.3} ms ({:.2}x hearth, {:.2}x candle)", t * 1e3, t_ours / t, t_theirs / t)
                }
                None => String::new(),
            };
            let reencoded_text = match &reencoded {
                Some((dtype, peer)) => {
                    let t = time(budget, || {
                        peer.forward(&input).unwrap();
                    });
                    format!("{:>8.3} ({dtype:?}, {:.2}x)", t * 1e3, t / t_ours)
                }
                None => String::from("-"),
            };
            println!(
                "{:<32} {:>5} {:>5} {:>11.3} {:>11.3} {:>9.1} {:>9.1} {:>6.2}x  {}{}",
                name,
                ty.name(),
                m,
                t_ours * 1e3,
                t_theirs * 1e3,
                bytes / t_ours / 1e9,
                bytes / t_theirs / 1e9,
                t_theirs / t_ours,
                reencoded_text,
                tiled_text
            );
        }
    }
}
