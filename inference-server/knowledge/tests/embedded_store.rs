//! The embedded store: the shared behaviour suite, plus persistence, crash safety and
//! determinism specific to it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hearth_knowledge::embedded::EmbeddedStore;
use hearth_knowledge::store::{Distance, Point, Query, QueryMode, SparseVector, StoreError, VectorStore};
use hearth_testkit::store_suite::{self as suite, SplitMix, dense_query, id, point, spec};

fn open(dir: &Path) -> EmbeddedStore {
    EmbeddedStore::open(dir).expect("open store")
}

hearth_testkit::vector_store_tests!(|dir| tempfile::tempdir().expect("tempdir"), open(dir.path()));

#[tokio::test]
async fn whole_suite_runs_twice_on_one_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    suite::run_all(&store).await;
    suite::run_all(&store).await;
}

fn hybrid(dense: Vec<f32>, sparse: SparseVector, top_k: usize) -> Query {
    Query { dense: Some(dense), sparse: Some(sparse), mode: QueryMode::Hybrid, top_k, ..Query::default() }
}

fn random_points(rng: &mut SplitMix, range: std::ops::Range<u128>, dim: usize) -> Vec<Point> {
    range
        .map(|n| {
            let terms: Vec<u32> = {
                let mut t: Vec<u32> = (0..6).map(|_| (rng.next_u64() % 50) as u32).collect();
                t.sort_unstable();
                t.dedup();
                t
            };
            let weights = terms.iter().map(|_| 1.0 + rng.next_f32().abs()).collect();
            point(n, &format!("doc-{}", n % 7), rng.vector(dim), SparseVector::new(terms, weights))
        })
        .collect()
}

#[tokio::test]
async fn data_survives_drop_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = SplitMix::new(11);
    let points = random_points(&mut rng, 0..200, 16);
    let queries: Vec<Query> =
        (0..5).map(|_| hybrid(rng.vector(16), SparseVector::new(vec![3, 17], vec![1.0, 0.5]), 10)).collect();
    let (info, before) = {
        let store = open(dir.path());
        let info = store.ensure_collection(&spec("kb", 16, Distance::Cosine)).await.expect("create");
        store.ensure_collection(&spec("other", 4, Distance::Dot)).await.expect("create");
        store.upsert("kb", points).await.expect("upsert");
        store.delete_source("kb", "doc-3").await.expect("delete source");
        let mut before = Vec::new();
        for q in &queries {
            before.push(store.query("kb", q).await.expect("query"));
        }
        (info, before)
    };
    let store = open(dir.path());
    assert_eq!(store.count("kb").await.expect("count"), 200 - 29);
    assert_eq!(store.count("other").await.expect("count"), 0);
    let again = store.ensure_collection(&spec("kb", 16, Distance::Cosine)).await.expect("ensure");
    assert_eq!(again.points, 171);
    assert_eq!((again.dimension, again.distance, again.hnsw_m), (info.dimension, info.distance, info.hnsw_m));
    for (q, want) in queries.iter().zip(&before) {
        assert_eq!(&store.query("kb", q).await.expect("query"), want);
    }
}

#[tokio::test]
async fn live_index_matches_index_rebuilt_from_disk() {
    // Writes before and after the in-memory index is first loaded must leave it identical to one
    // rebuilt from the database.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = SplitMix::new(12);
    let queries: Vec<Query> = (0..8)
        .map(|i| {
            let q = hybrid(rng.vector(8), SparseVector::new(vec![i, 20 + i], vec![1.0, 0.7]), 15);
            Query { mode: [QueryMode::Dense, QueryMode::Sparse, QueryMode::Hybrid][i as usize % 3], ..q }
        })
        .collect();
    let live = {
        let store = open(dir.path());
        store.ensure_collection(&spec("kb", 8, Distance::Cosine)).await.expect("create");
        store.upsert("kb", random_points(&mut rng, 0..100, 8)).await.expect("upsert");
        store.query("kb", &queries[0]).await.expect("load index");
        store.upsert("kb", random_points(&mut rng, 50..150, 8)).await.expect("overwrite half, add 50");
        store.delete_source("kb", "doc-2").await.expect("delete");
        store.delete_points("kb", &[id(0), id(1), id(149)]).await.expect("delete ids");
        store.upsert("kb", random_points(&mut rng, 200..230, 8)).await.expect("reuse freed slots");
        let mut out = Vec::new();
        for q in &queries {
            out.push(store.query("kb", q).await.expect("query"));
        }
        out
    };
    let store = open(dir.path());
    for (q, want) in queries.iter().zip(&live) {
        assert_eq!(&store.query("kb", q).await.expect("query"), want, "{:?}", q.mode);
    }
}

#[tokio::test]
async fn ties_are_ordered_by_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.ensure_collection(&spec("kb", 4, Distance::Cosine)).await.expect("create");
    // Inserted in descending id order; identical vectors and sparse vectors tie exactly.
    let points: Vec<Point> =
        (0..30u128).rev().map(|n| point(n, "d", vec![0.5; 4], SparseVector::new(vec![1], vec![1.0]))).collect();
    store.upsert("kb", points).await.expect("upsert");
    for q in [
        dense_query(vec![1.0; 4], 10),
        suite::sparse_query(SparseVector::new(vec![1], vec![1.0]), 10),
        hybrid(vec![1.0; 4], SparseVector::new(vec![1], vec![1.0]), 10),
    ] {
        let ids: Vec<_> = store.query("kb", &q).await.expect("query").iter().map(|h| h.id).collect();
        assert_eq!(ids, (0..10).map(id).collect::<Vec<_>>(), "{:?}", q.mode);
    }
}

#[tokio::test]
async fn second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open(dir.path());
    match EmbeddedStore::open(dir.path()) {
        Err(StoreError::Backend(msg)) => assert!(msg.contains("already open"), "{msg}"),
        other => panic!("expected the second open to fail, got {other:?}"),
    }
    drop(first);
    open(dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_queries_and_writes_do_not_interfere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.ensure_collection(&spec("kb", 8, Distance::Cosine)).await.expect("create");
    let mut rng = SplitMix::new(13);
    store.upsert("kb", random_points(&mut rng, 0..100, 8)).await.expect("upsert");
    let mut tasks = Vec::new();
    for t in 0..8u128 {
        let store = store.clone();
        let mut rng = SplitMix::new(100 + t as u64);
        tasks.push(tokio::spawn(async move {
            for i in 0..20u128 {
                let n = 1000 + t * 100 + i;
                store.upsert("kb", random_points(&mut rng, n..n + 1, 8)).await.expect("upsert");
                let hits = store.query("kb", &dense_query(rng.vector(8), 5)).await.expect("query");
                assert_eq!(hits.len(), 5);
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    assert_eq!(store.count("kb").await.expect("count"), 100 + 8 * 20);
}

const CRASH_DIR_ENV: &str = "KBSTORE_CRASH_CHILD_DIR";
const CRASH_BATCH: usize = 300;

/// Not a test of its own: the body of the child process that `upsert_killed_mid_write_keeps_whole_batches`
/// starts and kills. It upserts batches of one source each until killed, reporting each commit.
#[tokio::test]
async fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_DIR_ENV) else {
        return;
    };
    let store = open(Path::new(&dir));
    store.ensure_collection(&spec("kb", 384, Distance::Cosine)).await.expect("create");
    let start: u128 = store.count("kb").await.expect("count").into();
    let mut rng = SplitMix::new(start as u64);
    for batch in 0u128.. {
        let first = start + batch * CRASH_BATCH as u128;
        let points: Vec<Point> = (first..first + CRASH_BATCH as u128)
            .map(|n| {
                let sparse = SparseVector::new(vec![(n % 97) as u32, 1000 + (n % 13) as u32], vec![1.0, 2.0]);
                point(n, &format!("batch-{first}"), rng.vector(384), sparse)
            })
            .collect();
        println!("begin {first}");
        store.upsert("kb", points).await.expect("upsert");
        println!("committed {first}");
    }
}

#[test]
fn upsert_killed_mid_write_keeps_whole_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test executable");
    let mut committed_total = 0usize;
    let mut killed_mid_batch = 0;
    for round in 0..4u64 {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CRASH_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start child");
        let stdout = child.stdout.take().expect("child stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut committed = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while committed.len() < 3 + round as usize && Instant::now() < deadline {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(first) = line.strip_prefix("committed ") {
                        committed.push(first.to_string());
                    }
                }
                _ => break,
            }
        }
        assert!(committed.len() >= 3, "child made no progress in round {round}");
        // Let the next batch get under way, at a different point each round.
        std::thread::sleep(Duration::from_millis(3 + 7 * round));
        child.kill().expect("SIGKILL child");
        child.wait().expect("reap child");
        // What the child wrote before it died is still in the pipe.
        let mut in_flight = None;
        for line in lines.map_while(Result::ok) {
            if let Some(first) = line.strip_prefix("committed ") {
                committed.push(first.to_string());
                in_flight = None;
            } else if let Some(first) = line.strip_prefix("begin ") {
                in_flight = Some(first.to_string());
            }
        }
        killed_mid_batch += usize::from(in_flight.is_some());

        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let store = open(dir.path());
        let sources = runtime.block_on(store.source_points("kb")).expect("source_points");
        for first in &committed {
            assert!(sources.contains_key(&format!("batch-{first}")), "committed batch {first} lost");
        }
        for (source, ids) in &sources {
            assert_eq!(ids.len(), CRASH_BATCH, "{source} is partial after a kill");
        }
        let count = runtime.block_on(store.count("kb")).expect("count") as usize;
        assert_eq!(count, sources.len() * CRASH_BATCH);
        assert!(count >= committed_total + committed.len() * CRASH_BATCH);
        if let Some(first) = &in_flight {
            // Killed during this batch's upsert: it either committed whole or left nothing.
            let got = sources.get(&format!("batch-{first}")).map_or(0, |ids| ids.len());
            assert!(got == 0 || got == CRASH_BATCH, "in-flight batch {first} has {got} points");
        }
        committed_total = count;
        let hits = runtime
            .block_on(store.query("kb", &hybrid(vec![0.1; 384], SparseVector::new(vec![5], vec![1.0]), 5)))
            .expect("query after crash");
        assert_eq!(hits.len(), 5);
    }
    assert!(killed_mid_batch > 0, "no kill landed during an upsert; the test proved nothing");
}
