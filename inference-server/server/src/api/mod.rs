//! The HTTP API: OpenAI-compatible routes, health, readiness and metrics, API keys, body
//! limits, and a graceful drain on shutdown.

pub mod agents;
mod chat;
mod embeddings;
pub mod generation;
pub mod knowledge;
pub mod metrics;
pub mod tenants;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use metrics::{Metrics, RequestLabels};

use hearth_cascade::CascadeRouter;
use hearth_cascade::metrics::CascadeMetrics;
use hearth_crds::router::RouterReport;
use hearth_engine::registry::{Registry, ServedModel};
use hearth_openai::wire::{ModelCard, ModelDetails, ModelList};
use hearth_openai::{ApiError, ServedName};

/// Settings of the HTTP layer.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Operator keys: every route and model, no limits. When these and `tenants` are both
    /// empty, no key is needed.
    pub api_keys: Vec<String>,
    /// Tenants: their keys, the models they may call, and their limits.
    pub tenants: Vec<tenants::TenantConfig>,
    /// Largest request body, in bytes.
    pub body_limit_bytes: usize,
    /// How long in-flight requests may run after a shutdown signal.
    pub drain: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            tenants: Vec::new(),
            body_limit_bytes: 4 * 1024 * 1024,
            drain: Duration::from_secs(30),
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The served models.
    pub registry: Arc<Registry>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// HTTP settings.
    pub config: Arc<ApiConfig>,
    /// Cascades served, by name (what clients pass as `model`).
    pub cascades: Arc<BTreeMap<String, Arc<CascadeRouter>>>,
    /// Knowledge bases served, by name.
    pub knowledge_bases: Arc<knowledge::KnowledgeBases>,
    /// Agents served, by name (what clients pass as `model`).
    pub agents: Arc<agents::Agents>,
    /// The accepted keys and the tenants behind them.
    pub keys: Arc<tenants::Keys>,
}

impl AppState {
    /// State over a registry.
    ///
    /// A tenant configuration [`tenants::Keys::new`] refuses is left out with an error logged;
    /// check it first with [`tenants::Keys::new`] where it comes from the user.
    pub fn new(registry: Arc<Registry>, config: ApiConfig) -> Self {
        let keys = tenants::Keys::new(config.api_keys.clone(), config.tenants.clone()).unwrap_or_else(|e| {
            tracing::error!(error = %e, "tenants refused; only the operator keys are accepted");
            tenants::Keys::new(config.api_keys.clone(), Vec::new()).unwrap_or_default()
        });
        Self {
            keys: Arc::new(keys),
            registry,
            metrics: Arc::new(Metrics::default()),
            config: Arc::new(config),
            cascades: Arc::new(BTreeMap::new()),
            knowledge_bases: Arc::default(),
            agents: Arc::default(),
        }
    }

    /// Adds cascades, built by `build` from the state's metrics.
    pub fn with_cascades<E>(
        mut self,
        build: impl FnOnce(&CascadeMetrics) -> Result<Vec<CascadeRouter>, E>,
    ) -> Result<Self, E> {
        let routers = build(&self.metrics.cascade)?;
        self.cascades = Arc::new(routers.into_iter().map(|r| (r.name().to_owned(), Arc::new(r))).collect());
        Ok(self)
    }

    /// The cascade a request body names as its `model`, if any.
    fn cascade_for(&self, body: &[u8]) -> Option<Arc<CascadeRouter>> {
        if self.cascades.is_empty() {
            return None;
        }
        self.cascades.get(&target_model(body)?).cloned()
    }

    /// The agent a request body names as its `model`, if any.
    fn agent_for(&self, body: &[u8]) -> Option<Arc<hearth_agent::AgentRuntime>> {
        if self.agents.is_empty() {
            return None;
        }
        self.agents.get(&target_model(body)?)
    }
}

/// The `model` a request body names.
fn target_model(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Target {
        model: String,
    }
    serde_json::from_slice::<Target>(body).ok().map(|t| t.model)
}

/// JSON body extractor whose rejections are OpenAI-shaped errors (413 for oversized bodies).
pub struct OpenAiJson<T>(pub T);

impl<S, T> FromRequest<S> for OpenAiJson<T>
where
    S: Send + Sync,
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => {
                let error = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge { limit_bytes: limit }
                } else {
                    ApiError::InvalidRequest { message: rejection.body_text(), param: None }
                };
                Err(error.into_response())
            }
        }
    }
}

#[derive(Clone, Copy)]
struct BodyLimit(usize);

/// The raw request body, with an OpenAI-shaped 413 when it is too large. The completion
/// routes read it raw so that a cascade can pass the client's fields through untouched.
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        match axum::body::Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Self(bytes)),
            Err(rejection) => {
                let error = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge { limit_bytes: limit }
                } else {
                    ApiError::InvalidRequest { message: rejection.body_text(), param: None }
                };
                Err(error.into_response())
            }
        }
    }
}

/// Parses a JSON body; the error names the field that is wrong.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    Json::<T>::from_bytes(body)
        .map(|Json(value)| value)
        .map_err(|rejection| ApiError::InvalidRequest { message: rejection.body_text(), param: None })
}

/// The router with every route.
pub fn router(state: AppState) -> Router {
    let limit = state.config.body_limit_bytes;
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat::chat_route))
        .route("/v1/completions", post(chat::completion_route))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(list_models))
        .route("/v1/knowledgebases/{name}/query", post(knowledge::query))
        .route("/v1/knowledgebases/{name}/ingest", post(knowledge::ingest))
        .route("/v1/agents", get(agents::list))
        .route("/v1/agents/{name}/runs", post(agents::start_run))
        .route("/v1/agents/{name}/runs/{id}", get(agents::get_run))
        .route("/v1/agents/{name}/runs/{id}/approve", post(agents::approve))
        .route("/v1/agents/{name}/runs/{id}/reject", post(agents::reject))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .merge(v1)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        // Escalation ratios only, open like /metrics: the operator reads them without a key.
        .route("/cascades", get(list_cascades))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .layer(middleware::from_fn(move |mut req: Request, next: Next| async move {
            req.extensions_mut().insert(BodyLimit(limit));
            next.run(req).await
        }))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Counts every API request by route, model and status, and times it.
async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(req).await;
    if let Some(route) = route.filter(|r| r.starts_with("/v1/") && r != "/v1/models") {
        let model = response.extensions().get::<ServedName>().map_or_else(|| "unknown".to_owned(), |m| m.0.clone());
        let labels = RequestLabels { route, model: model.clone(), status: response.status().as_u16() };
        state.metrics.requests.get_or_create(&labels).inc();
        state.metrics.request_duration.get_or_create(&Metrics::model(&model)).observe(started.elapsed().as_secs_f64());
    }
    response
}

/// Checks the key and, for a tenant calling a model reserved to tenants, that it may call it
/// and is within its limits. The caller (and the tenant's standing on the model) go into the
/// request's extensions for the handlers.
async fn authorize(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let keys = &state.keys;
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let Some(caller) = keys.identify(presented) else {
        return ApiError::Unauthorized.into_response();
    };
    let tenant_key = match &caller {
        tenants::Caller::Tenant(key) => key.clone(),
        tenants::Caller::Anonymous | tenants::Caller::Operator => {
            let mut req = req;
            req.extensions_mut().insert(caller);
            return next.run(req).await;
        }
    };
    // Which model the request is for: its body says, on the model routes.
    let (parts, body) = req.into_parts();
    let limit = parts.extensions.get::<BodyLimit>().map_or(usize::MAX, |l| l.0);
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(_) => return ApiError::PayloadTooLarge { limit_bytes: limit }.into_response(),
    };
    let mut req = Request::from_parts(parts, axum::body::Body::from(bytes.clone()));
    if let Some(model) = target_model(&bytes).filter(|m| keys.is_tenanted(m)) {
        let Some(standing) = tenant_key.on(&model) else {
            // The same answer as for a model that does not exist: names reveal nothing.
            return ApiError::ModelNotFound(model).into_response();
        };
        let admitted = standing.admit();
        let outcome = match &admitted {
            Ok(()) => "admitted",
            Err(ApiError::RateLimited { limit, .. }) => limit,
            Err(_) => "refused",
        };
        let labels = metrics::TenantLabels {
            tenant: tenant_key.name.clone(),
            model: model.clone(),
            outcome: outcome.to_owned(),
        };
        state.metrics.tenant_requests.get_or_create(&labels).inc();
        if let Err(limited) = admitted {
            tracing::info!(tenant = %tenant_key.name, %model, error = %limited, "tenant limited");
            return limited.into_response();
        }
        req.extensions_mut().insert(Arc::clone(standing));
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.registry.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        ApiError::NotReady.into_response()
    }
}

/// `GET /v1/models`: what the caller may call (a tenant does not see other tenants' models).
async fn list_models(
    State(state): State<AppState>,
    caller: Option<axum::Extension<tenants::Caller>>,
) -> Json<ModelList> {
    let visible = |name: &str| match caller.as_deref() {
        Some(tenants::Caller::Tenant(key)) => !state.keys.is_tenanted(name) || key.on(name).is_some(),
        _ => true,
    };
    let data = state
        .registry
        .all()
        .into_iter()
        .filter(|(id, _)| visible(id))
        .map(|(id, m)| ModelCard {
            id,
            object: "model".into(),
            created: m.created(),
            owned_by: "hearth".into(),
            hearth: Some(model_details(&m)),
        })
        .chain(state.cascades.keys().map(|name| ModelCard {
            id: name.clone(),
            object: "model".into(),
            created: 0,
            owned_by: "hearth-cascade".into(),
            hearth: None,
        }))
        .chain(state.agents.all().iter().map(|agent| ModelCard {
            id: agent.name().to_owned(),
            object: "model".into(),
            created: 0,
            owned_by: "hearth-agent".into(),
            hearth: None,
        }))
        .collect();
    Json(ModelList { object: "list".into(), data })
}

/// What `/v1/models` says of a served model besides its name.
fn model_details(model: &ServedModel) -> ModelDetails {
    match model {
        ServedModel::Chat(chat) => ModelDetails {
            task: "chat".into(),
            architecture: Some(chat.architecture.clone()),
            context_length: Some(chat.context_length()),
            base_model: chat.base_model,
        },
        ServedModel::Embedding(_) => {
            ModelDetails { task: "embedding".into(), architecture: None, context_length: None, base_model: false }
        }
    }
}

/// `GET /cascades`: each cascade's escalation ratio and budget, for the operator's status.
async fn list_cascades(State(state): State<AppState>) -> Json<Vec<RouterReport>> {
    Json(state.cascades.values().map(|c| c.report()).collect())
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    for (name, model) in state.registry.all() {
        if let ServedModel::Chat(chat) = model {
            let labels = Metrics::model(&name);
            let stats = chat.engine.stats();
            let waiting = stats.waiting.load(std::sync::atomic::Ordering::Relaxed);
            let running = stats.running.load(std::sync::atomic::Ordering::Relaxed);
            state.metrics.queue_depth.get_or_create(&labels).set(waiting as i64);
            state.metrics.batch_size.get_or_create(&labels).set(running as i64);
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.encode()).into_response()
}

/// Serves the API on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish for up to `config.drain`, and ends the rest cleanly.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let registry = state.registry.clone();
    let drain = state.config.drain;
    let app = router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!(drain_seconds = drain.as_secs_f64(), "shutting down: draining in-flight requests");
            registry.set_ready(false);
            let registry = registry.clone();
            tokio::spawn(async move {
                tokio::time::sleep(drain).await;
                tracing::warn!("drain deadline passed: ending the requests still running");
                for (_, model) in registry.all() {
                    if let ServedModel::Chat(chat) = model {
                        chat.engine.abort_all();
                    }
                }
            });
        })
        .await
}
