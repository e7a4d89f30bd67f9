//! Watch streams: newline-delimited JSON `WatchEvent`s, resumed from a resourceVersion out of
//! the bounded history, with bookmarks, timeouts, label/field selectors and dropped streams.

use crate::error::ApiError;
use crate::selector::Selector;
use crate::store::{Change, EventType, Store, WatchStart};
use axum::body::{Body, Bytes};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::{Instant, interval_at, sleep};

/// Which changes a watch sends.
pub(crate) struct WatchFilter {
    pub(crate) kind: usize,
    pub(crate) namespace: Option<String>,
    pub(crate) selector: Selector,
}

impl WatchFilter {
    /// The event type this watch sees for a change, if any: an object modified into (out of)
    /// the selector is ADDED (DELETED) for this watch, as in Kubernetes.
    fn view(&self, change: &Change) -> Option<&'static str> {
        if change.kind != self.kind || self.namespace.as_ref().is_some_and(|ns| *ns != change.namespace) {
            return None;
        }
        let now = self.selector.matches(&change.object);
        let before = change.previous.as_ref().is_some_and(|p| self.selector.matches(p));
        match (change.event, before, now) {
            (EventType::Added, _, true) | (EventType::Modified, false, true) => Some("ADDED"),
            (EventType::Modified, true, true) => Some("MODIFIED"),
            (EventType::Deleted, _, true) | (EventType::Modified, true, false) => Some("DELETED"),
            _ => None,
        }
    }
}

/// How one watch behaves.
pub(crate) struct WatchOptions {
    pub(crate) start: WatchStart,
    pub(crate) timeout: Duration,
    /// `Some(interval)` when the client allows bookmarks.
    pub(crate) bookmarks: Option<Duration>,
    /// `sendInitialEvents=true`: end the initial ADDED events with an `initial-events-end` bookmark.
    pub(crate) initial_events_end: bool,
    /// The kind's `apiVersion` and `kind`, for bookmarks.
    pub(crate) type_meta: (String, String),
}

/// What ends a watch early: every watch closing ([`crate::Faults::drop_watches`]), or the
/// watching client crashing ([`crate::Faults::crash_after_writes`]).
pub(crate) struct Closers {
    pub(crate) all: watch::Receiver<u64>,
    pub(crate) crashed: watch::Receiver<BTreeSet<String>>,
    pub(crate) client: Option<String>,
}

impl Closers {
    /// Whether this watch's client is crashed.
    fn client_crashed(&self) -> bool {
        self.client.as_ref().is_some_and(|c| self.crashed.borrow().contains(c))
    }
}

fn line(event: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": event, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

/// Starts a watch: the response body streams events until the timeout, a dropped-watch fault,
/// a 410, or the client going away.
pub(crate) fn stream(store: Arc<Store>, filter: WatchFilter, options: WatchOptions, mut closers: Closers) -> Body {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        let bookmark = |rv: u64, annotations: Value| {
            let (api_version, kind) = &options.type_meta;
            let metadata = json!({"resourceVersion": rv.to_string(), "annotations": annotations});
            line("BOOKMARK", &json!({"apiVersion": api_version, "kind": kind, "metadata": metadata}))
        };
        let (before, mut changes, rv) = match store.subscribe(filter.kind, options.start) {
            Ok(subscribed) => subscribed,
            Err(gone) => {
                let _ = tx.send(line("ERROR", &gone.status())).await;
                return;
            }
        };
        for change in before {
            if let Some(event) = filter.view(&change)
                && tx.send(line(event, &change.object)).await.is_err()
            {
                return;
            }
        }
        if options.initial_events_end
            && tx.send(bookmark(rv, json!({"k8s.io/initial-events-end": "true"}))).await.is_err()
        {
            return;
        }
        let deadline = sleep(options.timeout);
        tokio::pin!(deadline);
        let period = options.bookmarks.unwrap_or(Duration::from_secs(3600));
        let mut ticks = interval_at(Instant::now() + period, period);
        loop {
            let sent = tokio::select! {
                biased;
                _ = closers.all.changed() => return,
                changed = closers.crashed.changed() => {
                    if changed.is_err() || closers.client_crashed() {
                        return;
                    }
                    Ok(())
                }
                _ = &mut deadline => return,
                _ = ticks.tick(), if options.bookmarks.is_some() => {
                    // Every change up to `rv` is already queued (changes are sent under the store's
                    // lock), so after draining the queue a bookmark at `rv` skips nothing.
                    let rv = store.resource_version();
                    loop {
                        match changes.try_recv() {
                            Ok(change) => {
                                if let Some(event) = filter.view(&change)
                                    && tx.send(line(event, &change.object)).await.is_err()
                                {
                                    return;
                                }
                            }
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(_) => return lagged(&tx).await,
                        }
                    }
                    tx.send(bookmark(rv, json!({}))).await
                }
                change = changes.recv() => match change {
                    Ok(change) => match filter.view(&change) {
                        Some(event) => tx.send(line(event, &change.object)).await,
                        None => Ok(()),
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => return lagged(&tx).await,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if sent.is_err() {
                return;
            }
        }
    });
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    });
    Body::from_stream(chunks)
}

/// A watch that fell behind the change queue cannot know what it missed: 410, so it re-lists.
async fn lagged(tx: &mpsc::Sender<Bytes>) {
    let gone = ApiError::new(410, "Expired", "the watch fell behind; list again");
    let _ = tx.send(line("ERROR", &gone.status())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(event: EventType, labels: Value, previous: Option<Value>) -> Change {
        let object = json!({"metadata": {"labels": labels}});
        let previous = previous.map(|labels| json!({"metadata": {"labels": labels}}));
        Change { kind: 0, namespace: "ns".into(), event, object, previous }
    }

    #[test]
    fn objects_moving_across_a_selector_are_added_or_deleted() {
        let filter = WatchFilter {
            kind: 0,
            namespace: Some("ns".into()),
            selector: Selector::parse(Some("app=web"), None).unwrap(),
        };
        let web = json!({"app": "web"});
        let api = json!({"app": "api"});
        assert_eq!(filter.view(&change(EventType::Modified, web.clone(), Some(api.clone()))), Some("ADDED"));
        assert_eq!(filter.view(&change(EventType::Modified, api.clone(), Some(web.clone()))), Some("DELETED"));
        assert_eq!(filter.view(&change(EventType::Modified, web.clone(), Some(web.clone()))), Some("MODIFIED"));
        assert_eq!(filter.view(&change(EventType::Added, api, None)), None);
        let mut other_ns = change(EventType::Added, web, None);
        other_ns.namespace = "other".into();
        assert_eq!(filter.view(&other_ns), None);
    }
}
