use crate::{code, config_map};
use hearth_test_apiserver::{FakeApiServer, Fault, Verb};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use std::time::{Duration, Instant};

#[tokio::test]
async fn injected_500_fails_once_then_succeeds() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    server.faults().inject(Fault::status(500).on(Verb::Create).on_resource("configmaps").times(1));
    let cm = config_map("a", &[], &[]);
    assert_eq!(code(api.create(&PostParams::default(), &cm).await), 500);
    api.create(&PostParams::default(), &cm).await.unwrap();
    assert_eq!(server.request_count(Verb::Create, "configmaps"), 2);
    assert_eq!(server.writes().len(), 1, "the failed request wrote nothing");
}

#[tokio::test]
async fn seeded_probability_is_reproducible() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    api.create(&PostParams::default(), &config_map("a", &[], &[])).await.unwrap();
    server.faults().inject(Fault::status(500).on(Verb::Get).probability(0.5));
    let mut runs = Vec::new();
    for _ in 0..2 {
        server.faults().seed(42);
        let mut outcomes = Vec::new();
        for _ in 0..24 {
            outcomes.push(api.get("a").await.is_ok());
        }
        runs.push(outcomes);
    }
    assert_eq!(runs[0], runs[1]);
    assert!(runs[0].contains(&true) && runs[0].contains(&false), "{:?}", runs[0]);
}

#[tokio::test]
async fn throttling_is_retried_by_the_client_and_delays_hold_requests() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    server.faults().inject(Fault::status(429).retry_after(1).on(Verb::List).times(2));
    api.list(&Default::default()).await.unwrap();
    assert_eq!(server.request_count(Verb::List, "configmaps"), 3, "kube's client retries 429 itself");

    let mut no_retry = server.config();
    no_retry.default_retry = false;
    let plain: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(no_retry).unwrap(), "default");
    server.faults().inject(Fault::status(429).retry_after(3).times(1));
    match plain.list(&Default::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 429),
        other => panic!("expected 429, got {other:?}"),
    }

    server.faults().clear();
    server.faults().inject(Fault::delay(Duration::from_millis(300)).on(Verb::List));
    let started = Instant::now();
    api.list(&Default::default()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
}
