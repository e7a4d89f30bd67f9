//! A small in-memory Kubernetes API server for controller tests.
//!
//! Real kube-rs clients and controllers (`kube::Api`, `kube::runtime::{watcher, Controller}`)
//! run against it unmodified over plain HTTP on a loopback port:
//!
//! ```no_run
//! # async fn demo() {
//! use hearth_test_apiserver::{FakeApiServer, Fault, Verb};
//! let server = FakeApiServer::start().await; // the kinds the Hearth operator uses
//! let client: kube::Client = server.client();
//! server.faults().inject(Fault::status(500).on(Verb::Patch).on_resource("deployments").times(1));
//! // … run the controller against `client`, then assert on the store and the write log:
//! let writes = server.writes();
//! server.stop().await;
//! # }
//! ```
//!
//! It implements what controllers rely on: CRUD with resourceVersion preconditions; merge, JSON
//! and (as merge) strategic-merge patches; server-side apply with per-manager field ownership,
//! conflicts and `force`; the status subresource and generation rules; no-op writes that keep
//! the resourceVersion and send no event; list (selectors, paging) and watch (history replay,
//! bookmarks, streaming lists, timeouts, 410 Gone from a bounded history); finalizers;
//! owner-reference garbage collection; discovery; fault injection (statuses, delays, dropped
//! watches, and named clients crashed after their n-th write), request counts and a write log.
//!
//! Deliberately left out: schema validation, defaulting, CEL and admission; authentication and
//! authorization; list-map merge keys and `$patch` directives (lists are atomic); subresources
//! other than `status`; `dryRun` (rejected); lists at an old resourceVersion (lists are always
//! current); foreground deletion (treated as background); namespace lifecycle; registering kinds
//! by creating CRDs through the API (register them up front).

mod apply;
mod error;
mod faults;
mod http;
mod journal;
mod resources;
mod selector;
mod store;
mod watch;

pub use faults::{Fault, Faults};
pub use journal::{PatchType, Verb, Write};
pub use resources::{ResourceInfo, keda_scaled_object, operator_kinds};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::core::ApiResource;
use resources::Registry;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use store::Store;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The request header a client names itself with (see [`FakeApiServer::client_named`]): its
/// writes are logged with the name, and faults can target it ([`Fault::from_client`],
/// [`Faults::crash_after_writes`]).
pub const CLIENT_HEADER: &str = "x-hearth-test-client";

/// Configures a [`FakeApiServer`]: which kinds it serves and how its watches behave.
#[derive(Debug)]
pub struct Builder {
    registry: Registry,
    history_limit: usize,
    bookmark_interval: Duration,
}

impl Builder {
    /// Serves a kind. An [`ApiResource`] alone is namespaced without a status subresource; pass a
    /// [`ResourceInfo`] for cluster-scoped kinds or a status subresource.
    pub fn resource(mut self, resource: impl Into<ResourceInfo>) -> Self {
        self.registry.add(resource.into());
        self
    }

    /// Serves every served version of a CustomResourceDefinition, with its scope and status subresource.
    pub fn crd(mut self, crd: &CustomResourceDefinition) -> Self {
        ResourceInfo::from_crd(crd).into_iter().for_each(|k| self.registry.add(k));
        self
    }

    /// Serves the kinds the Hearth operator uses ([`operator_kinds`]).
    pub fn operator_kinds(mut self) -> Self {
        operator_kinds().into_iter().for_each(|k| self.registry.add(k));
        self
    }

    /// Serves KEDA's ScaledObject, as a cluster with KEDA installed would.
    pub fn keda(self) -> Self {
        self.resource(keda_scaled_object())
    }

    /// How many changes the server keeps for watches to resume from (default 1,000); a watch
    /// from an older resourceVersion gets 410 Gone.
    pub fn history_limit(mut self, changes: usize) -> Self {
        self.history_limit = changes;
        self
    }

    /// How often watches that allow bookmarks get one (default 1 s).
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval;
        self
    }

    /// Binds a free loopback port and starts serving.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start(self) -> FakeApiServer {
        let registry = Arc::new(self.registry);
        let faults = Faults::new();
        let store = Arc::new(Store::new(Arc::clone(&registry), self.history_limit, faults.clone()));
        let app = Arc::new(http::App {
            store: Arc::clone(&store),
            registry: Arc::clone(&registry),
            faults: faults.clone(),
            bookmark_interval: self.bookmark_interval,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, http::router(app)).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            // The listener only fails when the test's runtime goes away.
            let _ = serve.await;
        });
        FakeApiServer { addr, store, registry, faults, shutdown: Some(shutdown), task: Some(task) }
    }
}

/// A running in-memory API server; dropping it (or [`FakeApiServer::stop`]) shuts it down.
pub struct FakeApiServer {
    addr: SocketAddr,
    store: Arc<Store>,
    registry: Arc<Registry>,
    faults: Faults,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    /// A builder with no kinds registered.
    pub fn builder() -> Builder {
        Builder { registry: Registry::default(), history_limit: 1000, bookmark_interval: Duration::from_secs(1) }
    }

    /// Starts a server with the kinds the Hearth operator uses ([`operator_kinds`]).
    pub async fn start() -> Self {
        Self::builder().operator_kinds().start().await
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client configuration for this server: plain HTTP, no auth, namespace `default`.
    pub fn config(&self) -> kube::Config {
        let url = self.url().parse().expect("a socket address makes a valid URI");
        kube::Config::new(url)
    }

    /// A client for this server (with kube's default retries of 429/503/504).
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("a plain-HTTP client needs no TLS setup")
    }

    /// A client configuration that names its client `name` in every request ([`CLIENT_HEADER`]).
    pub fn config_named(&self, name: &str) -> kube::Config {
        let mut config = self.config();
        let value = axum::http::HeaderValue::from_str(name).expect("a client name is a valid header value");
        config.headers.push((axum::http::HeaderName::from_static(CLIENT_HEADER), value));
        config
    }

    /// A client that names itself `name`, so faults can single it out: crash it after its n-th
    /// write ([`Faults::crash_after_writes`]) or fail only its requests ([`Fault::from_client`]).
    ///
    /// # Panics
    /// When `name` is not a valid header value.
    pub fn client_named(&self, name: &str) -> kube::Client {
        kube::Client::try_from(self.config_named(name)).expect("a plain-HTTP client needs no TLS setup")
    }

    /// The handle to inject faults at run time.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The stored objects of a kind, in one namespace (or all, or a cluster-scoped kind's with
    /// `None`), ordered by namespace and name. Empty for an unregistered kind.
    pub fn objects<'a>(&self, resource: &ApiResource, namespace: impl Into<Option<&'a str>>) -> Vec<Value> {
        match self.registry.find(&resource.group, &resource.version, &resource.plural) {
            Some(kind) => self.store.objects(kind, namespace.into()),
            None => Vec::new(),
        }
    }

    /// One stored object, if present.
    pub fn object<'a>(
        &self,
        resource: &ApiResource,
        namespace: impl Into<Option<&'a str>>,
        name: &str,
    ) -> Option<Value> {
        let objects = self.objects(resource, namespace);
        objects.into_iter().find(|o| o["metadata"]["name"] == name)
    }

    /// The stored objects of a typed kind, deserialized; see [`FakeApiServer::objects`].
    ///
    /// # Panics
    /// When a stored object does not deserialize as `K`.
    pub fn list<'a, K>(&self, namespace: impl Into<Option<&'a str>>) -> Vec<K>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let objects = self.objects(&ApiResource::erase::<K>(&()), namespace);
        objects.into_iter().map(|o| serde_json::from_value(o).expect("a stored object deserializes")).collect()
    }

    /// One stored object of a typed kind, deserialized, if present.
    ///
    /// # Panics
    /// When the stored object does not deserialize as `K`.
    pub fn get<'a, K>(&self, namespace: impl Into<Option<&'a str>>, name: &str) -> Option<K>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let object = self.object(&ApiResource::erase::<K>(&()), namespace, name)?;
        Some(serde_json::from_value(object).expect("a stored object deserializes"))
    }

    /// How many requests with this verb the server received for a resource (plural name),
    /// failed and fault-injected ones included.
    pub fn request_count(&self, verb: Verb, resource: &str) -> u64 {
        self.store.requests().get(&(verb, resource.to_string())).copied().unwrap_or(0)
    }

    /// Every request count, by verb and resource.
    pub fn requests(&self) -> BTreeMap<(Verb, String), u64> {
        self.store.requests()
    }

    /// The writes the server accepted, in order (no-op writes included, with `changed: false`;
    /// garbage-collector deletes carry the field manager `garbage-collector`; writes of a named
    /// client carry its name).
    pub fn writes(&self) -> Vec<Write> {
        self.store.writes()
    }

    /// Forgets request counts and writes so far.
    pub fn clear_journal(&self) {
        self.store.clear_journal();
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.store.resource_version()
    }

    /// Forgets the watch history, as etcd compaction does: watches resuming from an earlier
    /// resourceVersion get 410 Gone and their clients re-list. Pair with
    /// [`Faults::drop_watches`] to make open watches resume.
    pub fn compact(&self) {
        self.store.compact();
    }

    /// Closes open watches, stops serving and waits for the server task to end.
    pub async fn stop(mut self) {
        self.shut_down();
        if let Some(task) = self.task.take() {
            // A client racing the shutdown with a new watch must not hang the test.
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                abort.abort();
            }
        }
    }

    fn shut_down(&mut self) {
        self.faults.drop_watches();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}
