//! Dense f32 layers (BERT's): Hearth's bf16 AMX tiles against candle 0.11's f32 matmul (the
//! peer; the `gemm` crate's kernels) on the same weights, at all-MiniLM-L6-v2's shapes for a
//! batch of 32 texts of 64 tokens (2048 rows).
//!
//! `cargo bench -p hearth-kernels --bench dense [-- --quick]`
//! Prints, per shape, the median time of each, GFLOP/s and the ratio. Both run on candle's
//! barrier pool, as in hearth-server. Without AMX only candle's figures are printed.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{CandlePool, time};

use candle_core::{Device, Tensor};
use hearth_kernels::amx::{self, Bf16Matrix, Bf16Rows};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 400 } else { 2000 });
    let m = 2048;
    let shapes =
        [("q/k/v stacked", 1152, 384), ("attention output", 384, 384), ("ffn up", 1536, 384), ("ffn down", 384, 1536)];
    let amx = amx::available();
    println!("rows {m}, threads {}, AMX {}", candle_core::utils::get_num_threads(), if amx { "yes" } else { "no" });
    println!("{:<18} {:>11} {:>10} {:>11} {:>10} {:>7}", "shape", "candle ms", "GFLOP/s", "AMX ms", "GFLOP/s", "ratio");
    let mut rng = StdRng::seed_from_u64(1);
    for (name, n, k) in shapes {
        let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-0.1f32..0.1)).collect();
        let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let flops = 2.0 * (m * n * k) as f64;
        let wt = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap().t().unwrap();
        let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
        let candle = time(budget, || {
            std::hint::black_box(xt.matmul(&wt).unwrap());
        });
        let (amx_s, ratio) = if amx {
            let matrix = Bf16Matrix::pack(&w, n, k).unwrap();
            let mut rows = Bf16Rows::new();
            let mut out = vec![0f32; m * n];
            let s = time(budget, || {
                rows.fill(&x, k);
                matrix.matmul(&CandlePool, true, &rows, &mut out).unwrap();
            });
            (format!("{:>11.2} {:>10.0}", s * 1e3, flops / s / 1e9), format!("{:>6.2}x", candle / s))
        } else {
            (format!("{:>11} {:>10}", "-", "-"), "-".into())
        };
        println!("{name:<18} {:>11.2} {:>10.0} {amx_s} {ratio:>7}", candle * 1e3, flops / candle / 1e9);
    }
}
