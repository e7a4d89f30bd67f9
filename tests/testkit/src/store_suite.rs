//! Behaviour suite every [`VectorStore`] must pass, generic over the implementation: run each
//! function from a `#[tokio::test]` with a fresh store (embedded) or a live one (Qdrant). Each
//! function uses its own collection, deletes it first, and panics with a message on failure.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use hearth_knowledge::store::{
    ChunkPayload, CollectionSpec, Distance, Point, Query, QueryMode, RRF_K, SparseVector, StoreError, VectorStore,
};

/// A small deterministic generator (SplitMix64), so the suite needs no random-number crate.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator with this seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float uniform in [-1, 1).
    pub fn next_f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// A vector of `dim` floats uniform in [-1, 1).
    pub fn vector(&mut self, dim: usize) -> Vec<f32> {
        (0..dim).map(|_| self.next_f32()).collect()
    }
}

/// A collection spec with typical parameters.
pub fn spec(name: &str, dimension: usize, distance: Distance) -> CollectionSpec {
    CollectionSpec {
        name: name.to_string(),
        dimension,
        distance,
        hnsw_m: 16,
        ef_construct: 100,
        int8_quantization: false,
    }
}

/// The deterministic id of test point `n`.
pub fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x4845_4152_5448_0000_0000_0000_0000_0000 | n)
}

/// A point with a payload derived from its number and source.
pub fn point(n: u128, source: &str, dense: Vec<f32>, sparse: SparseVector) -> Point {
    Point {
        id: id(n),
        dense,
        sparse,
        payload: ChunkPayload {
            text: format!("chunk {n} of {source}"),
            source: source.to_string(),
            chunk_index: n as usize,
            start: n as usize * 100,
            end: n as usize * 100 + 100,
            headings: vec!["Title".to_string(), format!("Section {n}")],
            content_hash: format!("{n:064x}"),
        },
    }
}

/// A dense-only query.
pub fn dense_query(vector: Vec<f32>, top_k: usize) -> Query {
    Query { dense: Some(vector), mode: QueryMode::Dense, top_k, ..Query::default() }
}

/// A sparse-only query.
pub fn sparse_query(vector: SparseVector, top_k: usize) -> Query {
    Query { sparse: Some(vector), mode: QueryMode::Sparse, top_k, ..Query::default() }
}

async fn fresh<S: VectorStore>(store: &S, spec: &CollectionSpec) {
    store.delete_collection(&spec.name).await.expect("delete_collection before the test");
    store.ensure_collection(spec).await.expect("ensure_collection");
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// Creating returns the spec's parameters; ensuring again returns what exists; another dimension
/// is `DimensionMismatch` and leaves the collection as it was.
pub async fn creates_collection_and_rejects_dimension_mismatch<S: VectorStore>(store: &S) {
    let spec = spec("suite-create", 8, Distance::Cosine);
    store.delete_collection(&spec.name).await.expect("delete");
    let info = store.ensure_collection(&spec).await.expect("create");
    assert_eq!((info.name.as_str(), info.dimension, info.points), ("suite-create", 8, 0));
    assert_eq!((info.distance, info.hnsw_m, info.ef_construct), (Distance::Cosine, 16, 100));
    assert!(info.differences(&spec).is_empty(), "{:?}", info.differences(&spec));

    store.upsert(&spec.name, vec![point(1, "a", vec![1.0; 8], SparseVector::default())]).await.expect("upsert");
    let again = store.ensure_collection(&spec).await.expect("ensure existing");
    assert_eq!(again.points, 1);

    let mut other = spec.clone();
    other.hnsw_m = 32;
    let existing = store.ensure_collection(&other).await.expect("differing hnsw is not an error");
    assert_eq!(existing.hnsw_m, 16, "returns what exists");
    assert_eq!(existing.differences(&other), vec!["hnsw m: 16 -> 32".to_string()]);

    let mut wider = spec.clone();
    wider.dimension = 16;
    match store.ensure_collection(&wider).await {
        Err(StoreError::DimensionMismatch { collection, existing, wanted }) => {
            assert_eq!((collection.as_str(), existing, wanted), ("suite-create", 8, 16))
        }
        other => panic!("expected DimensionMismatch, got {other:?}"),
    }
    assert_eq!(store.count(&spec.name).await.expect("count"), 1, "mismatch must not re-create");

    assert!(store.delete_collection(&spec.name).await.expect("delete"));
    assert!(!store.delete_collection(&spec.name).await.expect("delete again"));
    match store.count(&spec.name).await {
        Err(StoreError::NoCollection(name)) => assert_eq!(name, "suite-create"),
        other => panic!("expected NoCollection, got {other:?}"),
    }
}

/// Upserted points are counted; re-upserting the same ids replaces them (payload included).
pub async fn upsert_counts_and_replaces_by_id<S: VectorStore>(store: &S) {
    let spec = spec("suite-upsert", 4, Distance::Cosine);
    fresh(store, &spec).await;
    let mut rng = SplitMix::new(1);
    let points: Vec<Point> =
        (0..50).map(|n| point(n, "doc", rng.vector(4), SparseVector::new(vec![n as u32], vec![1.0]))).collect();
    store.upsert(&spec.name, points.clone()).await.expect("upsert");
    assert_eq!(store.count(&spec.name).await.expect("count"), 50);

    let mut changed = points.clone();
    for p in &mut changed {
        p.payload.text = format!("changed {}", p.payload.chunk_index);
    }
    store.upsert(&spec.name, changed).await.expect("re-upsert");
    assert_eq!(store.count(&spec.name).await.expect("count"), 50, "same ids must not duplicate");
    let hits = store.query(&spec.name, &dense_query(points[7].dense.clone(), 1)).await.expect("query");
    assert_eq!(hits[0].id, id(7));
    assert_eq!(hits[0].payload.text, "changed 7");
    assert_eq!(hits[0].payload.headings, vec!["Title".to_string(), "Section 7".to_string()]);

    store.upsert(&spec.name, Vec::new()).await.expect("empty upsert is fine");
    assert_eq!(store.count(&spec.name).await.expect("count"), 50);
}

/// An upsert with one bad point stores none of the batch, and names the problem.
pub async fn rejects_bad_point_and_stores_nothing<S: VectorStore>(store: &S) {
    let spec = spec("suite-bad-point", 4, Distance::Cosine);
    fresh(store, &spec).await;
    let points = vec![
        point(1, "a", vec![1.0, 0.0, 0.0, 0.0], SparseVector::default()),
        point(2, "a", vec![1.0, 0.0, 0.0], SparseVector::default()),
    ];
    match store.upsert(&spec.name, points).await {
        Err(StoreError::InvalidPoint(msg)) => {
            assert!(msg.contains("expected 4") && msg.contains("got 3"), "{msg}")
        }
        other => panic!("expected InvalidPoint, got {other:?}"),
    }
    assert_eq!(store.count(&spec.name).await.expect("count"), 0);
    match store.upsert("suite-no-such-collection", vec![]).await {
        Err(StoreError::NoCollection(name)) => assert_eq!(name, "suite-no-such-collection"),
        other => panic!("expected NoCollection, got {other:?}"),
    }
}

/// Deleting a source removes exactly its points; deleting ids removes those that exist.
pub async fn delete_source_removes_only_that_source<S: VectorStore>(store: &S) {
    let spec = spec("suite-delete-source", 4, Distance::Cosine);
    fresh(store, &spec).await;
    let mut rng = SplitMix::new(2);
    let points: Vec<Point> = (0..30)
        .map(|n| {
            let source = ["a.md", "b.md", "c.md"][n as usize % 3];
            point(n, source, rng.vector(4), SparseVector::new(vec![7], vec![1.0]))
        })
        .collect();
    store.upsert(&spec.name, points).await.expect("upsert");
    assert_eq!(store.delete_source(&spec.name, "b.md").await.expect("delete b"), 10);
    assert_eq!(store.delete_source(&spec.name, "b.md").await.expect("delete b again"), 0);
    assert_eq!(store.count(&spec.name).await.expect("count"), 20);
    let sources = store.source_points(&spec.name).await.expect("source_points");
    assert_eq!(sources.keys().collect::<Vec<_>>(), vec!["a.md", "c.md"]);

    let hits = store.query(&spec.name, &sparse_query(SparseVector::new(vec![7], vec![1.0]), 100)).await.expect("query");
    assert_eq!(hits.len(), 20);
    assert!(hits.iter().all(|h| h.payload.source != "b.md"), "deleted points must not be found");

    let deleted =
        store.delete_points(&spec.name, &[id(0), id(3), id(1), Uuid::from_u128(12345)]).await.expect("delete ids");
    assert_eq!(deleted, 2, "id(1) was in b.md and the last id never existed");
    assert_eq!(store.count(&spec.name).await.expect("count"), 18);
}

/// `source_points` lists every source with exactly its point ids.
pub async fn source_points_lists_every_source<S: VectorStore>(store: &S) {
    let spec = spec("suite-source-points", 4, Distance::Dot);
    fresh(store, &spec).await;
    assert!(store.source_points(&spec.name).await.expect("empty").is_empty());
    let points: Vec<Point> =
        (0..12).map(|n| point(n, &format!("doc-{}", n % 4), vec![n as f32; 4], SparseVector::default())).collect();
    store.upsert(&spec.name, points).await.expect("upsert");
    let got = store.source_points(&spec.name).await.expect("source_points");
    let mut want: BTreeMap<String, BTreeSet<Uuid>> = BTreeMap::new();
    for n in 0..12u128 {
        want.entry(format!("doc-{}", n % 4)).or_default().insert(id(n));
    }
    assert_eq!(got, want);
}

/// Dense top-k (cosine) returns the brute-force order and similarities.
pub async fn dense_top_k_matches_brute_force<S: VectorStore>(store: &S) {
    let spec = spec("suite-dense", 16, Distance::Cosine);
    fresh(store, &spec).await;
    let mut rng = SplitMix::new(3);
    let points: Vec<Point> = (0..300).map(|n| point(n, "doc", rng.vector(16), SparseVector::default())).collect();
    store.upsert(&spec.name, points.clone()).await.expect("upsert");
    for _ in 0..5 {
        let q = rng.vector(16);
        let mut want: Vec<(f32, Uuid)> = points.iter().map(|p| (cosine(&q, &p.dense), p.id)).collect();
        want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let hits = store.query(&spec.name, &dense_query(q, 10)).await.expect("query");
        assert_eq!(hits.len(), 10);
        for (hit, (score, id)) in hits.iter().zip(&want) {
            assert_eq!(hit.id, *id, "order differs from brute force");
            assert!((hit.score - score).abs() < 1e-4, "score {} vs {}", hit.score, score);
        }
    }
}

/// Dot and Euclid collections order by their own measure (Euclid: smallest distance first, and
/// the score is the distance).
pub async fn dot_and_euclid_order_correctly<S: VectorStore>(store: &S) {
    for (name, distance) in [("suite-dot", Distance::Dot), ("suite-euclid", Distance::Euclid)] {
        let spec = spec(name, 2, distance);
        fresh(store, &spec).await;
        let points = vec![
            point(1, "d", vec![1.0, 0.0], SparseVector::default()),
            point(2, "d", vec![3.0, 0.0], SparseVector::default()),
            point(3, "d", vec![-2.0, 0.0], SparseVector::default()),
        ];
        store.upsert(name, points).await.expect("upsert");
        let hits = store.query(name, &dense_query(vec![1.0, 0.0], 3)).await.expect("query");
        let order: Vec<Uuid> = hits.iter().map(|h| h.id).collect();
        let scores: Vec<f32> = hits.iter().map(|h| h.score).collect();
        match distance {
            Distance::Dot => {
                assert_eq!(order, vec![id(2), id(1), id(3)]);
                assert_eq!(scores, vec![3.0, 1.0, -2.0]);
            }
            _ => {
                assert_eq!(order, vec![id(1), id(2), id(3)]);
                assert_eq!(scores, vec![0.0, 2.0, 3.0]);
            }
        }
    }
}

/// With the IDF modifier a match on a rare term outranks a heavier match on a term every point
/// has, and the score is Σ query weight × document weight × idf.
pub async fn sparse_idf_ranks_rare_term_higher<S: VectorStore>(store: &S) {
    let spec = spec("suite-sparse-idf", 4, Distance::Cosine);
    fresh(store, &spec).await;
    const COMMON: u32 = 1;
    const RARE: u32 = 999;
    let mut points: Vec<Point> =
        (0..19).map(|n| point(n, "doc", vec![1.0; 4], SparseVector::new(vec![COMMON], vec![1.0]))).collect();
    points[5].sparse = SparseVector::new(vec![COMMON], vec![2.0]);
    points.push(point(19, "doc", vec![1.0; 4], SparseVector::new(vec![COMMON, RARE], vec![0.5, 1.0])));
    store.upsert(&spec.name, points).await.expect("upsert");
    let query = SparseVector::new(vec![COMMON, RARE], vec![1.0, 1.0]);
    let hits = store.query(&spec.name, &sparse_query(query, 3)).await.expect("query");
    assert_eq!(hits[0].id, id(19), "the rare-term match must rank first: {hits:?}");
    assert_eq!(hits[1].id, id(5), "then the heavier common-term match");

    let idf = |n: f32, df: f32| (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
    let want = 0.5 * idf(20.0, 20.0) + idf(20.0, 1.0);
    assert!((hits[0].score - want).abs() < 1e-4, "score {} vs {want}", hits[0].score);
    let want = 2.0 * idf(20.0, 20.0);
    assert!((hits[1].score - want).abs() < 1e-4, "score {} vs {want}", hits[1].score);
}

/// Hybrid search finds an exact rare-keyword match that dense search misses.
pub async fn hybrid_finds_keyword_match_dense_misses<S: VectorStore>(store: &S) {
    let spec = spec("suite-hybrid", 8, Distance::Cosine);
    fresh(store, &spec).await;
    let mut rng = SplitMix::new(4);
    let query_dense = vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    // Distractors point roughly along the query; the target points away from it.
    let mut points: Vec<Point> = (0..60)
        .map(|n| {
            let mut v = rng.vector(8);
            v[0] += 3.0;
            point(n, "manual", v, SparseVector::new(vec![20 + (n as u32 % 5)], vec![1.0]))
        })
        .collect();
    let target = 60;
    points.push(point(
        target,
        "errata",
        vec![-1.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        SparseVector::new(vec![20, 4242], vec![1.0, 1.0]),
    ));
    store.upsert(&spec.name, points).await.expect("upsert");
    // Only the target has the rare token, so it tops the sparse prefetch.
    let query_sparse = SparseVector::new(vec![4242], vec![1.0]);

    let dense = store.query(&spec.name, &dense_query(query_dense.clone(), 5)).await.expect("dense");
    assert!(dense.iter().all(|h| h.id != id(target)), "dense must miss the keyword match");

    let hybrid = Query {
        dense: Some(query_dense),
        sparse: Some(query_sparse),
        mode: QueryMode::Hybrid,
        top_k: 5,
        ..Query::default()
    };
    let hits = store.query(&spec.name, &hybrid).await.expect("hybrid");
    assert_eq!(hits.len(), 5);
    let found = hits.iter().find(|h| h.id == id(target));
    let found = found.unwrap_or_else(|| panic!("hybrid must find the keyword match: {hits:?}"));
    // Ranked first by the sparse prefetch only: 1 / (k + 0).
    assert!((found.score - 1.0 / RRF_K as f32).abs() < 1e-6, "fused score {}", found.score);
    let best = 2.0 / RRF_K as f32;
    assert!(hits.iter().all(|h| h.score > 0.0 && h.score <= best + 1e-6), "RRF scores: {hits:?}");
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score), "sorted best first");
}

/// A source filter restricts every mode to the listed sources.
pub async fn source_filter_restricts_hits<S: VectorStore>(store: &S) {
    let spec = spec("suite-filter", 4, Distance::Cosine);
    fresh(store, &spec).await;
    let mut rng = SplitMix::new(5);
    let points: Vec<Point> = (0..40)
        .map(|n| {
            let source = ["x", "y", "z", "w"][n as usize % 4];
            point(n, source, rng.vector(4), SparseVector::new(vec![1, 2], vec![1.0, 0.5]))
        })
        .collect();
    store.upsert(&spec.name, points).await.expect("upsert");
    for mode in [QueryMode::Dense, QueryMode::Sparse, QueryMode::Hybrid] {
        let query = Query {
            dense: Some(rng.vector(4)),
            sparse: Some(SparseVector::new(vec![1], vec![1.0])),
            mode,
            top_k: 40,
            score_threshold: None,
            sources: Some(vec!["y".to_string(), "w".to_string()]),
        };
        let hits = store.query(&spec.name, &query).await.expect("query");
        assert_eq!(hits.len(), 20, "{mode:?}");
        assert!(hits.iter().all(|h| h.payload.source == "y" || h.payload.source == "w"), "{mode:?}");
        let none = Query { sources: Some(vec!["nowhere".to_string()]), ..query };
        assert!(store.query(&spec.name, &none).await.expect("query").is_empty(), "{mode:?}");
    }
}

/// The score threshold keeps exactly the hits at or above it (dense, sparse) and applies to the
/// fused score in hybrid mode.
pub async fn score_threshold_filters_by_mode<S: VectorStore>(store: &S) {
    let spec = spec("suite-threshold", 8, Distance::Cosine);
    fresh(store, &spec).await;
    let mut rng = SplitMix::new(6);
    let points: Vec<Point> = (0..100)
        .map(|n| point(n, "doc", rng.vector(8), SparseVector::new(vec![n as u32 % 10], vec![1.0 + n as f32 / 100.0])))
        .collect();
    store.upsert(&spec.name, points.clone()).await.expect("upsert");
    let q = rng.vector(8);
    let above = points.iter().filter(|p| cosine(&q, &p.dense) >= 0.5).count();
    let query = Query { score_threshold: Some(0.5), ..dense_query(q.clone(), 100) };
    let hits = store.query(&spec.name, &query).await.expect("dense");
    assert_eq!(hits.len(), above);
    assert!(hits.iter().all(|h| h.score >= 0.5));

    let sparse = Query { score_threshold: Some(3.0), ..sparse_query(SparseVector::new(vec![3], vec![1.5]), 100) };
    let hits = store.query(&spec.name, &sparse).await.expect("sparse");
    // Term 3 is in 10 of 100 points: idf = ln(1 + 90.5 / 10.5) ≈ 2.264; 1.5 × w × idf ≥ 3 ⇔ w ≥ 0.883.
    assert_eq!(hits.len(), 10);
    let sparse = Query { score_threshold: Some(3.9), ..sparse };
    let hits = store.query(&spec.name, &sparse).await.expect("sparse");
    assert!(!hits.is_empty() && hits.len() < 10, "{hits:?}");
    assert!(hits.iter().all(|h| h.score >= 3.9));

    let hybrid = Query {
        dense: Some(q),
        sparse: Some(SparseVector::new(vec![3], vec![1.0])),
        mode: QueryMode::Hybrid,
        top_k: 10,
        score_threshold: Some(1.0 / (RRF_K as f32 + 5.0)),
        sources: None,
    };
    let hits = store.query(&spec.name, &hybrid).await.expect("hybrid");
    assert!(!hits.is_empty());
    assert!(hits.iter().all(|h| h.score >= 1.0 / (RRF_K as f32 + 5.0)));
    let none = Query { score_threshold: Some(2.0 / RRF_K as f32 + 0.001), ..hybrid };
    assert!(store.query(&spec.name, &none).await.expect("hybrid").is_empty());
}

/// Malformed queries are `InvalidQuery` with a message naming what was expected and found.
pub async fn invalid_queries_are_rejected<S: VectorStore>(store: &S) {
    let spec = spec("suite-invalid", 8, Distance::Cosine);
    fresh(store, &spec).await;
    let expect_invalid = |result: Result<Vec<_>, StoreError>, needles: &[&str]| match result {
        Err(StoreError::InvalidQuery(msg)) => {
            for needle in needles {
                assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
            }
        }
        other => panic!("expected InvalidQuery, got {other:?}"),
    };
    expect_invalid(store.query(&spec.name, &dense_query(vec![1.0; 3], 5)).await, &["expected 8", "got 3"]);
    let hybrid_without_sparse = Query { mode: QueryMode::Hybrid, ..dense_query(vec![1.0; 8], 5) };
    expect_invalid(store.query(&spec.name, &hybrid_without_sparse).await, &["sparse"]);
    let sparse_without_vector = Query { mode: QueryMode::Sparse, top_k: 5, ..Query::default() };
    expect_invalid(store.query(&spec.name, &sparse_without_vector).await, &["sparse"]);
    expect_invalid(store.query(&spec.name, &dense_query(vec![1.0; 8], 0)).await, &["top_k"]);
    match store.query("suite-missing", &dense_query(vec![1.0; 8], 5)).await {
        Err(StoreError::NoCollection(name)) => assert_eq!(name, "suite-missing"),
        other => panic!("expected NoCollection, got {other:?}"),
    }
}

/// Runs every behaviour in turn (for a quick check against one live store).
pub async fn run_all<S: VectorStore>(store: &S) {
    creates_collection_and_rejects_dimension_mismatch(store).await;
    upsert_counts_and_replaces_by_id(store).await;
    rejects_bad_point_and_stores_nothing(store).await;
    delete_source_removes_only_that_source(store).await;
    source_points_lists_every_source(store).await;
    dense_top_k_matches_brute_force(store).await;
    dot_and_euclid_order_correctly(store).await;
    sparse_idf_ranks_rare_term_higher(store).await;
    hybrid_finds_keyword_match_dense_misses(store).await;
    source_filter_restricts_hits(store).await;
    score_threshold_filters_by_mode(store).await;
    invalid_queries_are_rejected(store).await;
}

/// One `#[tokio::test]` per check of this suite, for a store implementation's test file:
/// `vector_store_tests!(|guard| setup_expression, store_expression_using_guard);` — the guard
/// (a temp dir, a server) lives for the whole test. New checks are listed here once.
#[macro_export]
macro_rules! vector_store_tests {
    (|$guard:ident| $setup:expr, $store:expr) => {
        $crate::vector_store_tests!(@each |$guard| $setup, $store;
            creates_collection_and_rejects_dimension_mismatch,
            upsert_counts_and_replaces_by_id,
            rejects_bad_point_and_stores_nothing,
            delete_source_removes_only_that_source,
            source_points_lists_every_source,
            dense_top_k_matches_brute_force,
            dot_and_euclid_order_correctly,
            sparse_idf_ranks_rare_term_higher,
            hybrid_finds_keyword_match_dense_misses,
            source_filter_restricts_hits,
            score_threshold_filters_by_mode,
            invalid_queries_are_rejected,
        );
    };
    (@each |$guard:ident| $setup:expr, $store:expr; $($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let $guard = $setup;
            $crate::store_suite::$name(&$store).await;
        }
    )*};
}
