use crate::{config_map, eventually};
use futures_util::{StreamExt, TryStreamExt};
use hearth_test_apiserver::{FakeApiServer, Fault, Verb};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use serde_json::json;
use std::time::Duration;
use tokio::sync::mpsc;

/// Runs a real kube-runtime watcher and reports its events as short strings.
fn watch(api: Api<ConfigMap>, config: watcher::Config) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            let name = |cm: &ConfigMap| cm.metadata.name.clone().unwrap_or_default();
            let text = match event {
                Ok(Event::Init) => "init".to_string(),
                Ok(Event::InitApply(cm)) => format!("init-apply:{}", name(&cm)),
                Ok(Event::InitDone) => "init-done".to_string(),
                Ok(Event::Apply(cm)) => format!("apply:{}", name(&cm)),
                Ok(Event::Delete(cm)) => format!("delete:{}", name(&cm)),
                Err(e) => format!("error:{e}"),
            };
            if tx.send(text).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for the next event equal to `wanted`, returning the events skipped on the way.
async fn expect(rx: &mut mpsc::UnboundedReceiver<String>, wanted: &str) -> Vec<String> {
    let mut skipped = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(event)) if event == wanted => return skipped,
            Ok(Some(event)) => skipped.push(event),
            other => panic!("waiting for {wanted}, got {other:?} after {skipped:?}"),
        }
    }
}

#[tokio::test]
async fn watcher_sees_added_modified_and_deleted() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    api.create(&PostParams::default(), &config_map("a", &[], &[])).await.unwrap();
    let mut events = watch(api.clone(), watcher::Config::default());
    assert_eq!(expect(&mut events, "init-done").await, ["init", "init-apply:a"]);

    api.create(&PostParams::default(), &config_map("b", &[], &[])).await.unwrap();
    assert_eq!(expect(&mut events, "apply:b").await, Vec::<String>::new());
    api.patch("b", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "v"}}))).await.unwrap();
    assert_eq!(expect(&mut events, "apply:b").await, Vec::<String>::new());
    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(expect(&mut events, "delete:a").await, Vec::<String>::new());
}

#[tokio::test]
async fn watcher_resumes_after_dropped_watches() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let mut events = watch(api.clone(), watcher::Config::default());
    expect(&mut events, "init-done").await;
    for (open, name) in [(1, "one"), (2, "two")] {
        // The watcher reports InitDone before it opens its watch: drop only an open one.
        eventually("an open watch", || async { server.request_count(Verb::Watch, "configmaps") == open }).await;
        server.faults().drop_watches();
        api.create(&PostParams::default(), &config_map(name, &[], &[])).await.unwrap();
        let skipped = expect(&mut events, &format!("apply:{name}")).await;
        assert!(!skipped.iter().any(|e| e.starts_with("init")), "resumed without a re-list: {skipped:?}");
    }
    eventually("three watches", || async { server.request_count(Verb::Watch, "configmaps") >= 3 }).await;
    assert_eq!(server.request_count(Verb::List, "configmaps"), 1);
}

#[tokio::test]
async fn watcher_relists_after_410_gone() {
    let server = FakeApiServer::builder().operator_kinds().history_limit(2).start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let mut events = watch(api.clone(), watcher::Config::default());
    expect(&mut events, "init-done").await;

    // While the watcher is away, more changes happen than the history keeps.
    server.faults().inject(Fault::delay(Duration::from_millis(500)).on(Verb::Watch).times(1));
    server.faults().drop_watches();
    for name in ["a", "b", "c", "d"] {
        api.create(&PostParams::default(), &config_map(name, &[], &[])).await.unwrap();
    }
    let skipped = expect(&mut events, "init-done").await;
    assert!(skipped.iter().any(|e| e.contains("too old resource version")), "{skipped:?}");
    assert!(skipped.contains(&"init-apply:d".to_string()), "{skipped:?}");
    api.create(&PostParams::default(), &config_map("e", &[], &[])).await.unwrap();
    expect(&mut events, "apply:e").await;
    assert_eq!(server.request_count(Verb::List, "configmaps"), 2);
}

#[tokio::test]
async fn label_selected_watch_sees_objects_enter_and_leave() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let mut events = watch(api.clone(), watcher::Config::default().labels("app=web"));
    expect(&mut events, "init-done").await;
    api.create(&PostParams::default(), &config_map("other", &[("app", "api")], &[])).await.unwrap();
    api.create(&PostParams::default(), &config_map("web", &[("app", "web")], &[])).await.unwrap();
    assert_eq!(expect(&mut events, "apply:web").await, Vec::<String>::new(), "unselected objects stay unseen");
    let relabel = |app: &str| Patch::Merge(json!({"metadata": {"labels": {"app": app}}}));
    api.patch("web", &PatchParams::default(), &relabel("api")).await.unwrap();
    expect(&mut events, "delete:web").await;
    api.patch("other", &PatchParams::default(), &relabel("web")).await.unwrap();
    expect(&mut events, "apply:other").await;
}

#[tokio::test]
async fn streaming_list_watcher_starts_and_follows() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    api.create(&PostParams::default(), &config_map("a", &[], &[])).await.unwrap();
    let mut events = watch(api.clone(), watcher::Config::default().streaming_lists());
    assert_eq!(expect(&mut events, "init-done").await, ["init", "init-apply:a"]);
    api.create(&PostParams::default(), &config_map("b", &[], &[])).await.unwrap();
    expect(&mut events, "apply:b").await;
    assert_eq!(server.request_count(Verb::List, "configmaps"), 0);
}

#[tokio::test]
async fn raw_watch_bookmarks_timeouts_and_gone() {
    let server = FakeApiServer::builder().operator_kinds().bookmark_interval(Duration::from_millis(50)).start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let created = api.create(&PostParams::default(), &config_map("a", &[], &[])).await.unwrap();
    let rv = created.metadata.resource_version.unwrap();

    let mut stream = api.watch(&WatchParams::default().timeout(1), "1").await.unwrap().boxed();
    assert!(matches!(stream.try_next().await.unwrap(), Some(WatchEvent::Added(_))), "history replay");
    assert!(matches!(stream.try_next().await.unwrap(), Some(WatchEvent::Bookmark(_))));
    let started = tokio::time::Instant::now();
    while stream.try_next().await.unwrap().is_some() {}
    assert!(started.elapsed() < Duration::from_secs(3), "timeoutSeconds ends the stream");

    server.compact();
    let mut stream = api.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(status)) => assert_eq!(status.code, 410),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
    let server_rv = server.resource_version().to_string();
    let mut fresh = api.watch(&WatchParams::default().disable_bookmarks(), &server_rv).await.unwrap().boxed();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(matches!(fresh.try_next().await.unwrap(), Some(WatchEvent::Deleted(_))));
    eventually("the watch count", || async { server.request_count(Verb::Watch, "configmaps") == 3 }).await;
}
