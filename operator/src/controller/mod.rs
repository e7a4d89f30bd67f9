//! Controllers: read → build → server-side apply (one field manager) → status.
//!
//! Each controller's `reconcile` computes the desired objects with the pure builders, applies
//! them, removes the ones the spec no longer wants, and writes status through the status
//! subresource. Errors the API server may clear by itself (conflicts, throttling, 5xx,
//! timeouts) are retried with a short backoff; a spec that cannot work is reported in status
//! (Stalled) and waits for a change instead of looping.

pub mod agent;
pub mod cascade;
pub mod knowledge_base;
pub mod model;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use hearth_crds::conditions::{Condition, ConditionStatus, set_condition};
use hearth_crds::router::RouterReport;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::builders::{BuildContext, BuildError};
use crate::metrics::{ErrorLabels, Metrics};
use crate::qdrant::{GrpcQdrantAdmin, QdrantAdmin};

/// The field manager of every write the operator makes.
pub const MANAGER: &str = "hearth-operator";

/// Reads the escalation reports a Cascade router serves at `GET /cascades` (the URL given);
/// `None` when the router cannot be reached. Replaceable in tests.
pub type RouterProbe = Arc<dyn Fn(String) -> BoxFuture<'static, Option<Vec<RouterReport>>> + Send + Sync>;

/// The probe the operator uses: an HTTP GET with a short timeout.
pub fn http_router_probe() -> RouterProbe {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap_or_default();
    Arc::new(move |url: String| {
        let client = client.clone();
        Box::pin(async move {
            let response = client.get(&url).send().await.ok()?.error_for_status().ok()?;
            response.json::<Vec<RouterReport>>().await.ok()
        })
    })
}

/// What every reconcile can reach.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Settings of the builders.
    pub build: BuildContext,
    /// Operator metrics.
    pub metrics: Arc<Metrics>,
    /// Who publishes Events.
    pub reporter: Reporter,
    /// Reads Cascade routers' escalation reports.
    pub router_probe: RouterProbe,
    /// Manages KnowledgeBases' Qdrant collections.
    pub qdrant: Arc<dyn QdrantAdmin>,
}

impl Context {
    /// A context with the operator's default Event reporter.
    pub fn new(client: Client, build: BuildContext, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Self {
            client,
            build,
            metrics,
            reporter,
            router_probe: http_router_probe(),
            qdrant: Arc::new(GrpcQdrantAdmin::default()),
        }
    }

    /// The same context managing collections through `admin`.
    pub fn with_qdrant_admin(mut self, admin: Arc<dyn QdrantAdmin>) -> Self {
        self.qdrant = admin;
        self
    }

    /// The same context reading routers through `probe`.
    pub fn with_router_probe(mut self, probe: RouterProbe) -> Self {
        self.router_probe = probe;
        self
    }

    /// An Event recorder.
    pub fn recorder(&self) -> Recorder {
        Recorder::new(self.client.clone(), self.reporter.clone())
    }
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a call.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The resource's metadata cannot name its objects.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The resource has no namespace.
    #[error("{0} has no namespace")]
    NoNamespace(String),
    /// An object read from the API server does not have the expected shape.
    #[error("cannot read {0}")]
    Decode(String),
    /// A Qdrant server could not be reached or refused a call.
    #[error(transparent)]
    Qdrant(#[from] crate::qdrant::QdrantAdminError),
    /// Adding or removing a finalizer, or the work it guards, failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

fn kube_reason(error: &kube::Error) -> &'static str {
    match error {
        kube::Error::Api(status) => match status.code {
            409 => "conflict",
            429 => "throttled",
            408 | 504 => "timeout",
            500..=599 => "server",
            _ => "other",
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => "timeout",
        _ => "other",
    }
}

impl Error {
    /// A bounded reason label: conflict, throttled, server, timeout, invalid, qdrant or other.
    pub fn reason(&self) -> &'static str {
        use kube::runtime::finalizer::Error as Finalizer;
        match self {
            Self::Kube(e) => kube_reason(e),
            Self::Build(_) | Self::NoNamespace(_) | Self::Decode(_) => "invalid",
            Self::Qdrant(_) => "qdrant",
            Self::Finalizer(e) => match e.as_ref() {
                Finalizer::ApplyFailed(e) | Finalizer::CleanupFailed(e) => e.reason(),
                Finalizer::AddFinalizer(e) | Finalizer::RemoveFinalizer(e) => kube_reason(e),
                Finalizer::UnnamedObject | Finalizer::InvalidFinalizer => "invalid",
            },
        }
    }

    /// How long to wait before trying again.
    pub fn backoff(&self) -> Duration {
        match self.reason() {
            "conflict" => Duration::from_millis(500),
            "throttled" => Duration::from_secs(5),
            "server" | "timeout" => Duration::from_secs(2),
            "qdrant" => Duration::from_secs(15),
            // A broken object will not mend itself: wait for a change, with a slow safety net.
            "invalid" => Duration::from_secs(300),
            _ => Duration::from_secs(15),
        }
    }
}

/// Shared error policy: count, log, and requeue with the error's backoff.
pub fn error_policy<K: ResourceExt>(object: &K, error: &Error, ctx: &Context, controller: &str) -> Action {
    let reason = error.reason();
    ctx.metrics.errors.get_or_create(&ErrorLabels { controller: controller.into(), reason: reason.into() }).inc();
    tracing::warn!(controller, name = %object.name_any(), reason, error = %error, "reconcile failed");
    Action::requeue(error.backoff())
}

/// Server-side applies `object` with the operator's field manager.
pub async fn apply<K>(api: &Api<K>, object: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(object)).await
}

/// Deletes `name` if it exists.
pub async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies `object` when the spec wants it, else deletes `name` if it exists: the one way an
/// optional child (autoscaler, disruption budget, …) follows its resource.
pub async fn apply_or_delete<K>(api: &Api<K>, name: &str, object: Option<&K>) -> Result<Option<K>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    match object {
        Some(object) => apply(api, object).await.map(Some),
        None => delete_if_present(api, name).await.map(|()| None),
    }
}

/// Sets a condition in `conditions`.
pub fn condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    let status = if status { ConditionStatus::True } else { ConditionStatus::False };
    set_condition(conditions, Condition::new(type_, status, reason, message, generation));
}

/// Publishes an Event about `object`, logging (never failing) when the API refuses it.
pub async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    warning: bool,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder().publish(&event, &object.object_ref(&())).await {
        tracing::debug!(error = %e, "could not publish an Event");
    }
}

/// Runs the Model, Cascade, KnowledgeBase and Agent controllers until `shutdown` resolves. `namespace` limits
/// them to one namespace; `None` watches all. Each kind's watches sit beside its `reconcile`.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let scope = Scope { client: ctx.client.clone(), namespace, stop };
    futures::join!(
        model::run(ctx.clone(), &scope),
        cascade::run(ctx.clone(), &scope),
        knowledge_base::run(ctx.clone(), &scope),
        agent::run(ctx.clone(), &scope),
    );
}

/// What every controller starts from: the client, the namespace it watches (or all) and the
/// shutdown signal.
pub(crate) struct Scope {
    client: Client,
    namespace: Option<String>,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Scope {
    /// The API of a namespaced kind, in the watched namespace (or all).
    pub(crate) fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    /// Only the operator's own children matter: watched by the label every owned object carries.
    pub(crate) fn owned() -> kube::runtime::watcher::Config {
        kube::runtime::watcher::Config::default().labels("app.kubernetes.io/managed-by=hearth-operator")
    }

    /// Resolves when the operator shuts down.
    pub(crate) fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.clone();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    }
}

/// Drives a controller's stream to its end, logging what it reports at debug level.
pub(crate) async fn drain<T: Debug, E: std::fmt::Display>(
    controller: &'static str,
    stream: impl futures::Stream<Item = Result<T, E>>,
) {
    use futures::StreamExt;
    stream
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(controller, error = %e, "controller event");
            }
        })
        .await;
}
