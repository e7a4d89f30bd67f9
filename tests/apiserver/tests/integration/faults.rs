use crate::{code, config_map};
use futures_util::StreamExt;
use hearth_test_apiserver::{FakeApiServer, Fault, Verb};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use kube::core::ApiResource;
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

#[tokio::test]
async fn a_named_client_crashes_right_after_its_nth_write_until_revived() {
    let server = FakeApiServer::start().await;
    let operator: Api<ConfigMap> = Api::namespaced(server.client_named("operator"), "default");
    let cluster: Api<ConfigMap> = Api::namespaced(server.client_named("cluster"), "default");
    cluster.create(&PostParams::default(), &config_map("theirs", &[], &[])).await.unwrap();
    server.faults().crash_after_writes("operator", 2);
    let mut watch = operator.watch(&WatchParams::default(), "0").await.unwrap().boxed();
    assert!(matches!(watch.next().await, Some(Ok(WatchEvent::Added(_)))), "the watch is open");

    let crashed = server.faults().crashed("operator");
    operator.create(&PostParams::default(), &config_map("a", &[], &[])).await.unwrap();
    assert!(!server.faults().is_crashed("operator"));
    // The second write is committed and answered; from then on the client is gone.
    operator.create(&PostParams::default(), &config_map("b", &[], &[])).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), crashed).await.expect("the crash fired");
    assert_eq!(code(operator.create(&PostParams::default(), &config_map("c", &[], &[])).await), 500);
    assert_eq!(code(operator.get("a").await), 500, "reads fail too");
    loop {
        match tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("the watch closes") {
            None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    cluster.create(&PostParams::default(), &config_map("d", &[], &[])).await.unwrap();
    assert_eq!(server.faults().writes_from("operator"), 2);
    let names = |client: &str| -> Vec<String> {
        server.writes().into_iter().filter(|w| w.client.as_deref() == Some(client)).map(|w| w.name).collect()
    };
    assert_eq!(names("operator"), ["a", "b"]);
    assert_eq!(names("cluster"), ["theirs", "d"]);
    assert!(server.object(&ApiResource::erase::<ConfigMap>(&()), "default", "c").is_none());
    assert_eq!(server.faults().fired(), 0);

    server.faults().revive("operator");
    operator.create(&PostParams::default(), &config_map("c", &[], &[])).await.unwrap();
    assert_eq!(server.faults().writes_from("operator"), 3);
}

#[tokio::test]
async fn client_faults_spare_other_clients_and_are_counted() {
    let server = FakeApiServer::start().await;
    let mut config = server.config_named("operator");
    config.default_retry = false;
    let operator: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
    let other: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    server.faults().inject(Fault::delay(Duration::from_millis(200)).then_status(504).from_client("operator").times(1));
    server.faults().inject(Fault::status(409).on(Verb::Create).from_client("operator").times(1));
    other.list(&Default::default()).await.unwrap();
    let started = Instant::now();
    assert_eq!(code(operator.list(&Default::default()).await), 504);
    assert!(started.elapsed() >= Duration::from_millis(200));
    other.create(&PostParams::default(), &config_map("a", &[], &[])).await.unwrap();
    assert_eq!(code(operator.create(&PostParams::default(), &config_map("b", &[], &[])).await), 409);
    operator.create(&PostParams::default(), &config_map("b", &[], &[])).await.unwrap();
    assert_eq!(server.faults().fired(), 2);
    let kinds: Vec<String> = server.faults().fired_by_kind().into_keys().collect();
    assert_eq!(kinds, ["409", "delay 200ms then 504"]);
}
