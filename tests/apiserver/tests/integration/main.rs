//! The fake API server driven by real kube-rs clients, watchers and a Controller.

mod apply;
mod controller;
mod crud;
mod faults;
mod lifecycle;
mod status;
mod watch;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ObjectMeta;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// A ConfigMap with labels and data.
fn config_map(name: &str, labels: &[(&str, &str)], data: &[(&str, &str)]) -> ConfigMap {
    let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    ConfigMap {
        metadata: ObjectMeta { name: Some(name.into()), labels: Some(map(labels)), ..ObjectMeta::default() },
        data: Some(map(data)),
        ..ConfigMap::default()
    }
}

/// The HTTP status of a kube API error (0 for other errors).
fn code<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> u16 {
    match result {
        Err(kube::Error::Api(status)) => status.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Polls `check` until it returns true, failing the test after 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
