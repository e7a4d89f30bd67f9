//! Helpers shared by the operator's integration tests.

#![allow(dead_code)] // each test binary uses a different part

pub mod qdrant;
pub mod stack;
pub mod workloads;

use std::time::Duration;

/// Polls `check` every `every` until it returns Some, failing after `seconds`.
pub async fn eventually<T, F, Fut>(what: &str, seconds: u64, every: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(every).await;
    }
}
