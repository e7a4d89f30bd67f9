//! Timing of the embedded store: upsert N random 384-dimension points with sparse vectors, then
//! dense, sparse and hybrid query latency (p50/p99), and the cost of reopening.
//!
//! `cargo bench -p hearth-server --bench kb_store -- [points] [queries]` (defaults 10000 and 300).

use std::time::{Duration, Instant};

use hearth_knowledge::embedded::EmbeddedStore;
use hearth_knowledge::store::{Distance, Point, Query, QueryMode, SparseVector, StoreError, VectorStore};
use hearth_testkit::store_suite::{SplitMix, point, spec};

const DIM: usize = 384;
const VOCABULARY: f64 = 30_000.0;

/// A sparse vector of `terms` distinct term ids, log-uniform over the vocabulary (a few frequent
/// terms, many rare ones), like BM25 term weights of a chunk.
fn sparse(rng: &mut SplitMix, terms: usize) -> SparseVector {
    let mut ids: Vec<u32> = (0..terms)
        .map(|_| {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            VOCABULARY.powf(u) as u32
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let values = ids.iter().map(|_| 0.5 + rng.next_f32().abs()).collect();
    SparseVector::new(ids, values)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn time_queries(store: &EmbeddedStore, queries: &[Query]) -> Result<(Duration, Duration), StoreError> {
    let mut times = Vec::with_capacity(queries.len());
    for q in queries {
        let t = Instant::now();
        let hits = store.query("bench", q).await?;
        times.push(t.elapsed());
        assert!(!hits.is_empty());
    }
    times.sort_unstable();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), StoreError> {
    let mut args = std::env::args().skip(1);
    let n: u128 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let n_queries: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(300);
    let dir = tempfile::tempdir().map_err(|e| StoreError::Backend(e.to_string()))?;
    let store = EmbeddedStore::open(dir.path())?;
    store.ensure_collection(&spec("bench", DIM, Distance::Cosine)).await?;

    let mut rng = SplitMix::new(42);
    let batch = 256u128;
    let mut upsert_time = Duration::ZERO;
    let mut start = 0;
    while start < n {
        let end = (start + batch).min(n);
        let points: Vec<Point> = (start..end)
            .map(|i| {
                let terms = 30 + (rng.next_u64() % 60) as usize;
                let s = sparse(&mut rng, terms);
                point(i, &format!("doc-{}", i / 20), rng.vector(DIM), s)
            })
            .collect();
        let t = Instant::now();
        store.upsert("bench", points).await?;
        upsert_time += t.elapsed();
        start = end;
    }
    // The database file plus its write-ahead log.
    let db_bytes: u64 = std::fs::read_dir(dir.path())
        .map_err(|e| StoreError::Backend(e.to_string()))?
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "upsert: {n} points in batches of {batch}: {:.2} s, {:.0} points/s (database {:.1} MB)",
        upsert_time.as_secs_f64(),
        n as f64 / upsert_time.as_secs_f64(),
        db_bytes as f64 / 1e6
    );

    let t = Instant::now();
    let first = Query { dense: Some(rng.vector(DIM)), mode: QueryMode::Dense, top_k: 5, ..Query::default() };
    store.query("bench", &first).await?;
    println!("first query (loads the in-memory index): {:.1} ms", t.elapsed().as_secs_f64() * 1e3);

    let queries: Vec<Query> = (0..n_queries)
        .map(|_| Query {
            dense: Some(rng.vector(DIM)),
            sparse: Some(sparse(&mut rng, 8)),
            mode: QueryMode::Hybrid,
            top_k: 5,
            score_threshold: None,
            sources: None,
        })
        .collect();
    for mode in [QueryMode::Dense, QueryMode::Sparse, QueryMode::Hybrid] {
        let qs: Vec<Query> = queries.iter().map(|q| Query { mode, ..q.clone() }).collect();
        let (p50, p99) = time_queries(&store, &qs).await?;
        println!(
            "{mode:?} top-5 over {n}: p50 {:.2} ms, p99 {:.2} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    let filtered: Vec<Query> = queries
        .iter()
        .map(|q| Query { sources: Some((0..10).map(|d| format!("doc-{d}")).collect()), ..q.clone() })
        .collect();
    let (p50, p99) = time_queries(&store, &filtered).await?;
    println!(
        "Hybrid top-5 filtered to 10 sources: p50 {:.2} ms, p99 {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );

    let t = Instant::now();
    let deleted = store.delete_source("bench", "doc-3").await?;
    println!("delete_source ({deleted} points): {:.1} ms", t.elapsed().as_secs_f64() * 1e3);

    drop(store);
    let t = Instant::now();
    let store = EmbeddedStore::open(dir.path())?;
    let opened = t.elapsed();
    store.query("bench", &first).await?;
    println!(
        "reopen: {:.1} ms, then first query with index load: {:.1} ms",
        opened.as_secs_f64() * 1e3,
        (t.elapsed() - opened).as_secs_f64() * 1e3
    );
    Ok(())
}
