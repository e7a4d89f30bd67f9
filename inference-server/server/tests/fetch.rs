//! `fetch` against a loopback HTTP server: download, verify, reuse, and refuse bad bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::get;
use hearth_server::fetch::{FetchError, fetch, sha256_file};

const BODY: &[u8] = b"GGUF pretend weights \x00\x01\x02 for the fetch test";

async fn serve() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new().route(
        "/files/model.gguf",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { BODY }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, hits)
}

fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn downloads_verifies_and_reuses_the_cached_file() {
    let (base, hits) = serve().await;
    let cache = tempdir("reuse");
    let sha = digest(BODY);
    let url = format!("{base}/files/model.gguf");
    let first = fetch(&url, Some(&sha), &cache, false).await.unwrap();
    assert_eq!(first.downloaded_bytes, BODY.len() as u64);
    assert_eq!(std::fs::read(&first.path).unwrap(), BODY);
    assert_eq!(sha256_file(&first.path).unwrap(), sha);
    let second = fetch(&url, Some(&sha), &cache, false).await.unwrap();
    assert_eq!(second.downloaded_bytes, 0, "a verified file is not downloaded again");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert!(!cache.join("model.gguf.partial").exists());
}

#[tokio::test]
async fn a_checksum_mismatch_leaves_no_file_behind() {
    let (base, _) = serve().await;
    let cache = tempdir("mismatch");
    let wrong = "0".repeat(64);
    let err = fetch(&format!("{base}/files/model.gguf"), Some(&wrong), &cache, false).await.unwrap_err();
    assert!(matches!(err, FetchError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains(&wrong) && err.to_string().contains(&digest(BODY)));
    assert!(!cache.join("model.gguf").exists());
    assert!(!cache.join("model.gguf.partial").exists());
}

#[tokio::test]
async fn http_errors_and_local_files() {
    let (base, _) = serve().await;
    let cache = tempdir("errors");
    let err = fetch(&format!("{base}/files/missing.gguf"), None, &cache, false).await.unwrap_err();
    assert!(matches!(err, FetchError::Status { status: 404, .. }), "{err}");
    let local = cache.join("local.gguf");
    std::fs::write(&local, BODY).unwrap();
    let uri = format!("file://{}", local.display());
    assert_eq!(fetch(&uri, Some(&digest(BODY)), &cache, false).await.unwrap().path, local);
    assert!(matches!(fetch(&uri, Some(&"1".repeat(64)), &cache, false).await, Err(FetchError::Checksum { .. })));
    assert!(fetch("s3://bucket/key", None, &cache, false).await.unwrap_err().to_string().contains("not supported"));
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-fetch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
