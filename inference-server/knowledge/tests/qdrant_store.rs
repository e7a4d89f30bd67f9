//! The Qdrant store: the shared behaviour suite over gRPC against the in-process fake server (and
//! against a real Qdrant when `QDRANT_URL` is set), plus error mapping.

use hearth_knowledge::embedded::EmbeddedStore;
use hearth_knowledge::qdrant::QdrantStore;
use hearth_knowledge::store::{Distance, SparseVector, StoreError, VectorStore};
use hearth_testkit::qdrant::{FAKE_VERSION, FakeQdrant};
use hearth_testkit::store_suite::{self as suite, dense_query, point, spec};
use qdrant_client::qdrant as pb;

/// A fake server on a fresh embedded store, and a Qdrant store connected to it.
struct Fixture {
    store: QdrantStore,
    server: FakeQdrant,
    _dir: tempfile::TempDir,
}

async fn fixture_with_key(server_key: Option<&str>, client_key: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let embedded = EmbeddedStore::open(dir.path()).expect("open embedded store");
    let server = FakeQdrant::start(embedded, server_key.map(str::to_string)).await.expect("start fake qdrant");
    let store = QdrantStore::connect(&server.url(), client_key.map(str::to_string)).expect("connect");
    Fixture { store, server, _dir: dir }
}

async fn fixture() -> Fixture {
    fixture_with_key(None, None).await
}

hearth_testkit::vector_store_tests!(|f| fixture().await, f.store);

#[tokio::test]
async fn whole_suite_runs_twice_through_one_connection() {
    let f = fixture().await;
    suite::run_all(&f.store).await;
    suite::run_all(&f.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_suite_against_a_real_qdrant_when_qdrant_url_is_set() {
    let Ok(url) = std::env::var("QDRANT_URL") else {
        println!("skipped: set QDRANT_URL (gRPC, e.g. http://localhost:6334) and optionally QDRANT_API_KEY");
        return;
    };
    let store = QdrantStore::connect(&url, std::env::var("QDRANT_API_KEY").ok()).expect("connect");
    println!("qdrant {} at {url}", store.server_version().await.expect("health check"));
    suite::run_all(&store).await;
}

#[tokio::test]
async fn missing_collection_is_no_collection_for_every_operation() {
    let f = fixture().await;
    let s = &f.store;
    let name = "no-such-collection";
    let expect = |what: &str, r: Result<(), StoreError>| match r {
        Err(StoreError::NoCollection(n)) => assert_eq!(n, name, "{what}"),
        other => panic!("{what}: expected NoCollection, got {other:?}"),
    };
    expect("query", s.query(name, &dense_query(vec![1.0; 4], 3)).await.map(drop));
    expect("count", s.count(name).await.map(drop));
    expect("upsert", s.upsert(name, vec![point(1, "a", vec![1.0; 4], SparseVector::default())]).await);
    expect("delete_points", s.delete_points(name, &[suite::id(1)]).await.map(drop));
    expect("delete_points (none)", s.delete_points(name, &[]).await.map(drop));
    expect("delete_source", s.delete_source(name, "a").await.map(drop));
    expect("source_points", s.source_points(name).await.map(drop));
    assert!(!s.delete_collection(name).await.expect("delete missing collection"));
}

#[tokio::test]
async fn server_down_is_backend_error_naming_the_url() {
    let f = fixture().await;
    let url = f.server.url();
    f.server.stop().await;
    match f.store.count("kb").await {
        Err(StoreError::Backend(msg)) => assert!(msg.contains(&url), "{msg:?} should name {url}"),
        other => panic!("expected Backend, got {other:?}"),
    }
    match f.store.ensure_collection(&spec("kb", 4, Distance::Cosine)).await {
        Err(StoreError::Backend(msg)) => assert!(msg.contains(&url), "{msg:?} should name {url}"),
        other => panic!("expected Backend, got {other:?}"),
    }
}

#[tokio::test]
async fn api_key_is_sent_and_a_wrong_one_is_backend_error() {
    let good = fixture_with_key(Some("s3cret"), Some("s3cret")).await;
    good.store.ensure_collection(&spec("kb", 4, Distance::Cosine)).await.expect("right key");
    let bad = QdrantStore::connect(&good.server.url(), Some("wrong".to_string())).expect("connect");
    match bad.count("kb").await {
        Err(StoreError::Backend(msg)) => assert!(msg.contains("Unauthenticated"), "{msg}"),
        other => panic!("expected Backend, got {other:?}"),
    }
}

#[tokio::test]
async fn server_side_rejection_maps_to_invalid_query_and_refreshes_the_cached_dimension() {
    let f = fixture().await;
    f.store.ensure_collection(&spec("kb", 4, Distance::Cosine)).await.expect("create");
    f.store.query("kb", &dense_query(vec![1.0; 4], 1)).await.expect("caches dimension 4");
    // Another client re-creates the collection with another dimension.
    let other = QdrantStore::connect(&f.server.url(), None).expect("connect");
    assert!(other.delete_collection("kb").await.expect("delete"));
    other.ensure_collection(&spec("kb", 8, Distance::Cosine)).await.expect("re-create");
    // The stale check passes on the client; the server refuses the 4-dimensional vector.
    match f.store.query("kb", &dense_query(vec![1.0; 4], 1)).await {
        Err(StoreError::InvalidQuery(msg)) => assert!(msg.contains("expected 8") && msg.contains("got 4"), "{msg}"),
        other => panic!("expected InvalidQuery, got {other:?}"),
    }
    // After the refusal the store re-reads the collection, so its own check applies again.
    match f.store.query("kb", &dense_query(vec![1.0; 4], 1)).await {
        Err(StoreError::InvalidQuery(msg)) => assert!(msg.starts_with("collection kb: dense query"), "{msg}"),
        other => panic!("expected InvalidQuery, got {other:?}"),
    }
    f.store.query("kb", &dense_query(vec![1.0; 8], 1)).await.expect("8 dimensions now");
}

#[tokio::test]
async fn created_collection_has_named_vectors_idf_and_a_source_index() {
    let f = fixture().await;
    let mut wanted = spec("kb", 16, Distance::Euclid);
    wanted.int8_quantization = true;
    wanted.hnsw_m = 32;
    let info = f.store.ensure_collection(&wanted).await.expect("create");
    assert!(info.differences(&wanted).is_empty(), "{:?}", info.differences(&wanted));
    assert_eq!(f.store.server_version().await.expect("health"), FAKE_VERSION);

    // Read it back with the plain client, as an operator would.
    let client = qdrant_client::Qdrant::from_url(&f.server.url()).skip_compatibility_check().build().expect("client");
    let got = client.collection_info("kb").await.expect("info").result.expect("result");
    assert!(got.payload_schema.contains_key("source"), "keyword index on source");
    let params = got.config.and_then(|c| c.params).expect("params");
    let sparse = params.sparse_vectors_config.expect("sparse config");
    assert_eq!(sparse.map["text"].modifier, Some(pb::Modifier::Idf.into()));
    match params.vectors_config.and_then(|c| c.config) {
        Some(pb::vectors_config::Config::ParamsMap(map)) => {
            let dense = &map.map["dense"];
            assert_eq!((dense.size, dense.distance), (16, i32::from(pb::Distance::Euclid)));
            assert_eq!(dense.hnsw_config.and_then(|h| h.m), Some(32));
        }
        other => panic!("expected named vectors, got {other:?}"),
    }
    // Calls the store never makes are refused, not faked.
    let err = client.list_collections().await.expect_err("unimplemented");
    assert!(err.to_string().contains("Unimplemented") || err.to_string().contains("does not implement"), "{err}");
}

#[tokio::test]
async fn large_upsert_is_sent_in_batches_and_listed_across_scroll_pages() {
    let f = fixture().await;
    f.store.ensure_collection(&spec("kb", 8, Distance::Dot)).await.expect("create");
    let mut rng = suite::SplitMix::new(9);
    let points: Vec<_> = (0..2500u128)
        .map(|n| point(n, &format!("doc-{}", n % 3), rng.vector(8), SparseVector::new(vec![n as u32 % 50], vec![1.0])))
        .collect();
    f.store.upsert("kb", points).await.expect("upsert");
    assert_eq!(f.store.count("kb").await.expect("count"), 2500);
    let sources = f.store.source_points("kb").await.expect("source_points");
    assert_eq!(sources.values().map(|ids| ids.len()).sum::<usize>(), 2500);
    assert_eq!(sources["doc-1"].len(), 833);
    assert_eq!(f.store.delete_source("kb", "doc-0").await.expect("delete"), 834);
    assert_eq!(f.store.count("kb").await.expect("count"), 1666);
}

/// The same data and queries give the same hits through Qdrant (over gRPC) as from the embedded
/// store directly, in every mode, with source filters, thresholds and term-less sparse vectors.
#[tokio::test]
async fn results_match_the_embedded_store_for_random_queries() {
    use hearth_knowledge::store::{Query, QueryMode};
    let f = fixture().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let direct = EmbeddedStore::open(dir.path()).expect("open");
    let mut rng = suite::SplitMix::new(21);
    let points: Vec<_> = (0..300u128)
        .map(|n| {
            let mut terms: Vec<u32> = (0..5).map(|_| (rng.next_u64() % 40) as u32).collect();
            terms.sort_unstable();
            terms.dedup();
            let weights = terms.iter().map(|_| 0.5 + rng.next_f32().abs()).collect();
            point(n, &format!("doc-{}", n % 6), rng.vector(12), SparseVector::new(terms, weights))
        })
        .collect();
    f.store.ensure_collection(&spec("kb", 12, Distance::Cosine)).await.expect("create");
    direct.ensure_collection(&spec("kb", 12, Distance::Cosine)).await.expect("create");
    f.store.upsert("kb", points.clone()).await.expect("upsert");
    direct.upsert("kb", points).await.expect("upsert");
    let mut answered = 0;
    for i in 0..60u32 {
        let mode = [QueryMode::Dense, QueryMode::Sparse, QueryMode::Hybrid][i as usize % 3];
        let sparse = if i % 7 == 0 {
            SparseVector::default()
        } else {
            SparseVector::new(vec![i % 40, (i * 7 + 3) % 40], vec![1.0, 0.5])
        };
        let query = Query {
            dense: Some(rng.vector(12)),
            sparse: Some(sparse),
            mode,
            top_k: 1 + (i as usize % 15),
            score_threshold: match (i % 4, mode) {
                (0, QueryMode::Dense) => Some(0.2),
                (0, QueryMode::Sparse) => Some(1.0),
                (0, QueryMode::Hybrid) => Some(1.0 / 70.0),
                _ => None,
            },
            sources: (i % 5 == 0).then(|| vec!["doc-1".to_string(), "doc-4".to_string()]),
        };
        let got = f.store.query("kb", &query).await.expect("qdrant query");
        let want = direct.query("kb", &query).await.expect("embedded query");
        assert_eq!(got, want, "query {i}: {query:?}");
        answered += usize::from(!got.is_empty());
    }
    assert!(answered >= 40, "only {answered} of 60 queries found anything: the comparison proves little");
}
