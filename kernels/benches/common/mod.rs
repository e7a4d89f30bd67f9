//! What the kernels' benches share: a median timer and candle's thread pool.

use std::time::{Duration, Instant};

use hearth_kernels::Parallel;

/// Median seconds of `f` over repeats filling about `budget`.
pub fn time(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 3 || (start.elapsed() < budget && samples.len() < 50) {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// candle's CPU thread pool, for Hearth's kernels (what hearth-server does).
pub struct CandlePool;

impl Parallel for CandlePool {
    fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        candle_core::utils::barrier_pool().execute_chunked(tasks, |range| range.for_each(task));
    }
}
