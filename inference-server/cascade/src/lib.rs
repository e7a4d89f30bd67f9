//! The Cascade router: asks the cheapest stage first with log-probabilities, scores the
//! answer's confidence, and escalates to the next stage while it is below the stage's
//! threshold; the last stage always answers. Stages are OpenAI-compatible endpoints (Model
//! servers in a cluster, or this same process in local mode), so the router adds one hop and
//! no model work of its own.
//!
//! Buffered stages are asked without streaming (the decision needs the whole answer); the
//! last stage streams straight through when the client streams. A stage that is down, times
//! out or is overloaded is skipped and counted; when every stage fails the client gets a 503,
//! unless an earlier stage produced an answer, which is then returned marked as a fallback.

pub mod budget;
pub mod confidence;
pub mod metrics;
mod sse;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use hearth_crds::router::{RouterConfig, RouterReport, RouterStage};
use serde::Serialize;
use serde_json::{Value, json};

use budget::{BudgetState, EscalationWindow};
use hearth_openai::ApiError;
use hearth_openai::ServedName;
use metrics::CascadeMetrics;

/// Header naming the stage (Model) that answered.
pub const STAGE_HEADER: &str = "x-hearth-cascade-stage";
/// Header with the answering stage's confidence (absent for a streamed last stage, whose
/// confidence is known only at the end: it is in the final chunk's `hearth` field).
pub const CONFIDENCE_HEADER: &str = "x-hearth-cascade-confidence";
/// Header with the number of stages tried before the one that answered.
pub const ESCALATIONS_HEADER: &str = "x-hearth-cascade-escalations";

/// Which OpenAI route a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

impl Route {
    fn path(self) -> &'static str {
        match self {
            Self::Chat => "chat/completions",
            Self::Completion => "completions",
        }
    }

    fn chunk_object(self) -> &'static str {
        match self {
            Self::Chat => "chat.completion.chunk",
            Self::Completion => "text_completion",
        }
    }
}

/// Why a router configuration cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field is missing or out of range.
    #[error("cascade `{cascade}`: {field}: {message}")]
    Invalid {
        /// The cascade.
        cascade: String,
        /// The field, e.g. `stages[0].minConfidence`.
        field: String,
        /// What was expected.
        message: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Why a stage gave no usable answer; the request moves on to the next stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// No answer within the stage's timeoutSeconds.
    Timeout,
    /// The endpoint could not be reached.
    Unreachable,
    /// The stage answered 429 or 503.
    Overloaded,
    /// The stage answered with another server error.
    UpstreamError,
    /// The prompt does not fit the stage's context; a later stage may have a longer one.
    ContextLength,
    /// The answer was not an OpenAI response.
    BadResponse,
}

impl FailureReason {
    fn label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::Overloaded => "overloaded",
            Self::UpstreamError => "upstream_error",
            Self::ContextLength => "context_length",
            Self::BadResponse => "bad_response",
        }
    }
}

enum CallError {
    /// The stage failed; try the next one.
    Failed(FailureReason, String),
    /// The request itself is wrong (a 4xx): every stage would say the same, so the client
    /// gets the stage's answer as is.
    Client(StatusCode, Bytes),
}

/// What happened at one stage of one request (the `hearth.attempts` extension field).
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    /// The stage's Model.
    pub stage: String,
    /// answered, escalated or failed.
    pub outcome: &'static str,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
    /// The answer's confidence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// Time the stage took, in milliseconds.
    pub latency_ms: u64,
}

/// Token counts of one stage call, for cost accounting.
#[derive(Clone, Copy, Debug, Default)]
struct Tokens {
    prompt: u64,
    completion: u64,
}

/// One request's accounting: tokens per stage call, to price it against the last stage.
#[derive(Debug, Default)]
struct Ledger {
    calls: Vec<(usize, Tokens)>,
}

/// A running cascade.
pub struct CascadeRouter {
    config: RouterConfig,
    client: reqwest::Client,
    upstream_key: Option<String>,
    window: Mutex<EscalationWindow>,
    metrics: CascadeMetrics,
}

impl CascadeRouter {
    /// Checks the configuration and prepares the HTTP client. `upstream_key` is sent as a
    /// Bearer token to every stage.
    pub fn new(
        config: RouterConfig,
        metrics: CascadeMetrics,
        upstream_key: Option<String>,
    ) -> Result<Self, ConfigError> {
        validate(&config)?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| ConfigError::Client(e.to_string()))?;
        let window = EscalationWindow::new(config.escalation_window as usize, config.max_escalation_ratio);
        Ok(Self { config, client, upstream_key, window: Mutex::new(window), metrics })
    }

    /// The cascade's name (what clients pass as `model`).
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The configuration served.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// The escalation budget's state.
    pub fn report(&self) -> RouterReport {
        let state =
            self.window.lock().map(|w| w.state()).unwrap_or(BudgetState { ratio: 0.0, requests: 0, exceeded: false });
        RouterReport {
            name: self.config.name.clone(),
            stages: self.config.stages.iter().map(|s| s.model.clone()).collect(),
            escalation_ratio: state.ratio,
            window_requests: state.requests,
            escalation_window: self.config.escalation_window,
            max_escalation_ratio: self.config.max_escalation_ratio,
            budget_exceeded: state.exceeded,
        }
    }

    /// Answers one OpenAI request (`body` as the client sent it, already known to name
    /// this cascade as its model).
    pub async fn handle(self: Arc<Self>, route: Route, body: Value) -> Response {
        let mut response = match self.clone().answer(route, body).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        };
        response.extensions_mut().insert(ServedName(self.config.name.clone()));
        response
    }

    async fn answer(self: Arc<Self>, route: Route, body: Value) -> Result<Response, ApiError> {
        let ask = ClientAsk::read(route, &body)?;
        let labels = metrics::cascade(&self.config.name);
        self.metrics.requests.get_or_create(&labels).inc();
        let mut attempts: Vec<Attempt> = Vec::new();
        let mut ledger = Ledger::default();
        // The best rejected answer so far, returned if every later stage fails.
        let mut fallback: Option<(usize, Value, f64)> = None;
        let last = self.config.stages.len() - 1;
        for (index, stage) in self.config.stages.iter().enumerate() {
            if index == last && ask.stream {
                let request = stage_body(route, &body, stage, true);
                match self.open_stream(route, stage, &request).await {
                    Ok(upstream) => {
                        self.settle(index, attempts.len() + 1, None);
                        return Ok(self.clone().relay(route, index, upstream, ask, attempts, ledger));
                    }
                    Err(CallError::Client(status, bytes)) => return Ok(passthrough(status, bytes)),
                    Err(CallError::Failed(reason, message)) => {
                        self.failed(stage, reason, &message, Duration::ZERO, &mut attempts);
                        break;
                    }
                }
            }
            let started = Instant::now();
            let request = stage_body(route, &body, stage, false);
            match self.call(route, stage, &request).await {
                Ok(answer) => {
                    let elapsed = started.elapsed();
                    let confidence = confidence::score(self.config.confidence, &token_logprobs(route, &answer));
                    let tokens = usage_of(&answer);
                    ledger.calls.push((index, tokens));
                    self.observe(stage, confidence, elapsed, tokens);
                    let accepted = index == last || stage.min_confidence.is_none_or(|t| confidence >= t);
                    attempts.push(Attempt {
                        stage: stage.model.clone(),
                        outcome: if accepted { "answered" } else { "escalated" },
                        reason: None,
                        confidence: Some(confidence),
                        latency_ms: elapsed.as_millis() as u64,
                    });
                    if accepted {
                        self.settle(index, attempts.len(), Some(&ledger));
                        return Ok(self.respond(route, index, answer, confidence, false, ask, attempts));
                    }
                    self.metrics.escalations.get_or_create(&metrics::stage(&self.config.name, &stage.model)).inc();
                    fallback = Some((index, answer, confidence));
                }
                Err(CallError::Client(status, bytes)) => return Ok(passthrough(status, bytes)),
                Err(CallError::Failed(reason, message)) => {
                    self.failed(stage, reason, &message, started.elapsed(), &mut attempts);
                }
            }
        }
        if let Some((index, answer, confidence)) = fallback {
            tracing::warn!(cascade = %self.config.name, stage = %self.config.stages[index].model,
                "every later stage failed: returning the rejected answer as a fallback");
            self.settle(index, attempts.len(), Some(&ledger));
            return Ok(self.respond(route, index, answer, confidence, true, ask, attempts));
        }
        self.metrics.exhausted.get_or_create(&labels).inc();
        self.record_budget(attempts.len() > 1);
        let tried: Vec<String> = attempts
            .iter()
            .map(|a| format!("{} ({})", a.stage, a.reason.map_or("no answer", FailureReason::label)))
            .collect();
        Err(ApiError::Unavailable(format!(
            "cascade `{}`: no stage could answer: {}",
            self.config.name,
            tried.join(", ")
        )))
    }

    fn failed(
        &self,
        stage: &RouterStage,
        reason: FailureReason,
        message: &str,
        elapsed: Duration,
        attempts: &mut Vec<Attempt>,
    ) {
        tracing::warn!(cascade = %self.config.name, stage = %stage.model, reason = reason.label(), %message,
            "stage failed; moving on");
        self.metrics
            .failures
            .get_or_create(&metrics::FailureLabels {
                cascade: self.config.name.clone(),
                stage: stage.model.clone(),
                reason: reason.label(),
            })
            .inc();
        attempts.push(Attempt {
            stage: stage.model.clone(),
            outcome: "failed",
            reason: Some(reason),
            confidence: None,
            latency_ms: elapsed.as_millis() as u64,
        });
    }

    fn observe(&self, stage: &RouterStage, confidence: f64, elapsed: Duration, tokens: Tokens) {
        let labels = metrics::stage(&self.config.name, &stage.model);
        self.metrics.confidence.get_or_create(&labels).observe(confidence);
        self.metrics.stage_latency.get_or_create(&labels).observe(elapsed.as_secs_f64());
        for (kind, count) in [("prompt", tokens.prompt), ("completion", tokens.completion)] {
            self.metrics
                .tokens
                .get_or_create(&metrics::TokenLabels {
                    cascade: self.config.name.clone(),
                    stage: stage.model.clone(),
                    kind,
                })
                .inc_by(count);
        }
    }

    /// Records the request's outcome once the answering stage is known: answers by stage,
    /// the escalation window and the cost of the calls (`None` for a streamed last stage,
    /// priced when its stream ends).
    fn settle(&self, index: usize, attempts: usize, ledger: Option<&Ledger>) {
        let stage = &self.config.stages[index];
        self.metrics.answers.get_or_create(&metrics::stage(&self.config.name, &stage.model)).inc();
        self.record_budget(index > 0 || attempts > 1);
        if let Some(ledger) = ledger {
            self.price(index, ledger);
        }
    }

    /// Adds a request's cost, and what the last stage alone would have cost, to the metrics.
    /// Skipped unless every stage has a price.
    fn price(&self, answered: usize, ledger: &Ledger) {
        let Some(prices) = self.config.stages.iter().map(|s| s.cost.clone()).collect::<Option<Vec<_>>>() else {
            return;
        };
        let cost_of = |stage: usize, t: Tokens| {
            (t.prompt as f64 * prices[stage].input_per_million_tokens
                + t.completion as f64 * prices[stage].output_per_million_tokens)
                / 1e6
        };
        let last = prices.len() - 1;
        let actual: f64 = ledger.calls.iter().map(|&(stage, t)| cost_of(stage, t)).sum();
        // The last stage's own tokens when it was asked, else the answering stage's counts.
        let baseline_tokens = ledger
            .calls
            .iter()
            .find(|(stage, _)| *stage == last)
            .or_else(|| ledger.calls.iter().find(|(stage, _)| *stage == answered))
            .map(|&(_, t)| t)
            .unwrap_or_default();
        let baseline = cost_of(last, baseline_tokens);
        let labels = metrics::cascade(&self.config.name);
        self.metrics.cost.get_or_create(&labels).inc_by(actual);
        self.metrics.baseline_cost.get_or_create(&labels).inc_by(baseline);
        self.metrics.cost_saved.get_or_create(&labels).inc_by(baseline - actual);
    }

    fn record_budget(&self, escalated: bool) {
        let Ok(mut window) = self.window.lock() else { return };
        let before = window.state().exceeded;
        let state = window.record(escalated);
        drop(window);
        let labels = metrics::cascade(&self.config.name);
        self.metrics.escalation_ratio.get_or_create(&labels).set(state.ratio);
        self.metrics.budget_exceeded.get_or_create(&labels).set(i64::from(state.exceeded));
        if state.exceeded {
            self.metrics.over_budget.get_or_create(&labels).inc();
            if !before {
                tracing::warn!(cascade = %self.config.name, ratio = state.ratio,
                    budget = self.config.max_escalation_ratio, "escalation budget exceeded; still serving");
            }
        } else if before {
            tracing::info!(cascade = %self.config.name, ratio = state.ratio, "escalation ratio back within budget");
        }
    }

    fn request(&self, route: Route, stage: &RouterStage, body: &Value) -> reqwest::RequestBuilder {
        let url = format!("{}/{}", stage.endpoint.trim_end_matches('/'), route.path());
        let mut request =
            self.client.post(url).json(body).timeout(Duration::from_secs(u64::from(stage.timeout_seconds)));
        if let Some(key) = &self.upstream_key {
            request = request.bearer_auth(key);
        }
        request
    }

    async fn call(&self, route: Route, stage: &RouterStage, body: &Value) -> Result<Value, CallError> {
        let response = self.request(route, stage, body).send().await.map_err(transport_failure)?;
        let response = check_status(response).await?;
        let bytes = response.bytes().await.map_err(transport_failure)?;
        let answer: Value = serde_json::from_slice(&bytes)
            .map_err(|e| CallError::Failed(FailureReason::BadResponse, format!("the answer is not JSON: {e}")))?;
        if answer.pointer("/choices/0").is_none() {
            return Err(CallError::Failed(FailureReason::BadResponse, "the answer has no choices".into()));
        }
        Ok(answer)
    }

    async fn open_stream(
        &self,
        route: Route,
        stage: &RouterStage,
        body: &Value,
    ) -> Result<reqwest::Response, CallError> {
        let response = self.request(route, stage, body).send().await.map_err(transport_failure)?;
        check_status(response).await
    }

    /// Builds the client's response from a buffered stage's answer.
    #[allow(clippy::too_many_arguments)]
    fn respond(
        &self,
        route: Route,
        index: usize,
        mut answer: Value,
        confidence: f64,
        fallback: bool,
        ask: ClientAsk,
        attempts: Vec<Attempt>,
    ) -> Response {
        let stage = &self.config.stages[index];
        let escalations = attempts.len() - 1;
        if !ask.logprobs
            && let Some(choices) = answer.get_mut("choices").and_then(Value::as_array_mut)
        {
            for choice in choices {
                choice["logprobs"] = Value::Null;
            }
        }
        let extension = json!({
            "cascade": self.config.name,
            "stage": stage.model,
            "stage_index": index,
            "confidence": confidence,
            "fallback": fallback,
            "attempts": attempts,
        });
        let mut response = if ask.stream {
            synthesize_stream(route, &answer, extension, ask.include_usage)
        } else {
            answer["hearth"] = extension;
            axum::Json(answer).into_response()
        };
        let headers = response.headers_mut();
        set_header(headers, STAGE_HEADER, &stage.model);
        set_header(headers, CONFIDENCE_HEADER, &format!("{confidence:.6}"));
        set_header(headers, ESCALATIONS_HEADER, &escalations.to_string());
        response
    }

    /// Streams the last stage's answer through, rewriting nothing but the logprobs the
    /// client did not ask for and the usage chunk it did not ask for; adds a final chunk
    /// with the `hearth` extension once the confidence is known.
    fn relay(
        self: Arc<Self>,
        route: Route,
        index: usize,
        upstream: reqwest::Response,
        ask: ClientAsk,
        attempts: Vec<Attempt>,
        ledger: Ledger,
    ) -> Response {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let router = self.clone();
        let escalations = attempts.len();
        tokio::spawn(async move {
            let stage = &router.config.stages[index];
            let started = Instant::now();
            let mut parser = sse::SseParser::default();
            let mut bytes = upstream.bytes_stream();
            let mut logprobs: Vec<f64> = Vec::new();
            let mut tokens = Tokens::default();
            let mut last_chunk = json!({});
            let mut ended = false;
            'read: while let Some(next) = bytes.next().await {
                let piece = match next {
                    Ok(piece) => piece,
                    Err(e) => {
                        let reason = if e.is_timeout() { FailureReason::Timeout } else { FailureReason::UpstreamError };
                        let mut attempts = attempts.clone();
                        router.failed(stage, reason, &e.to_string(), started.elapsed(), &mut attempts);
                        let error = ApiError::Unavailable(format!(
                            "stage `{}` failed mid-answer: {}",
                            stage.model,
                            reason.label()
                        ));
                        let _ = tx.send(sse::event(&error.body().to_string())).await;
                        let _ = tx.send(sse::event("[DONE]")).await;
                        return;
                    }
                };
                for payload in parser.push(&piece) {
                    if payload == "[DONE]" {
                        ended = true;
                        break 'read;
                    }
                    let Ok(mut chunk) = serde_json::from_str::<Value>(&payload) else {
                        continue;
                    };
                    logprobs.extend(token_logprobs(route, &chunk));
                    let is_usage_chunk = chunk.get("usage").is_some_and(|u| !u.is_null())
                        && chunk.get("choices").and_then(Value::as_array).is_some_and(Vec::is_empty);
                    if is_usage_chunk {
                        tokens = usage_of(&chunk);
                        if !ask.include_usage {
                            continue;
                        }
                    }
                    if !ask.logprobs
                        && let Some(choices) = chunk.get_mut("choices").and_then(Value::as_array_mut)
                    {
                        for choice in choices.iter_mut().filter_map(Value::as_object_mut) {
                            choice.remove("logprobs");
                        }
                    }
                    if chunk.get("error").is_none() {
                        last_chunk = chunk.clone();
                    }
                    if tx.send(sse::event(&chunk.to_string())).await.is_err() {
                        // The client left: dropping the upstream stream frees the stage's slot.
                        return;
                    }
                }
            }
            let confidence = confidence::score(router.config.confidence, &logprobs);
            router.observe(stage, confidence, started.elapsed(), tokens);
            let mut ledger = ledger;
            ledger.calls.push((index, tokens));
            router.price(index, &ledger);
            let mut attempts = attempts;
            attempts.push(Attempt {
                stage: stage.model.clone(),
                outcome: "answered",
                reason: None,
                confidence: Some(confidence),
                latency_ms: started.elapsed().as_millis() as u64,
            });
            let final_chunk = json!({
                "id": last_chunk.get("id").cloned().unwrap_or(Value::Null),
                "object": route.chunk_object(),
                "created": last_chunk.get("created").cloned().unwrap_or(Value::Null),
                "model": last_chunk.get("model").cloned().unwrap_or_else(|| json!(stage.model)),
                "choices": [],
                "hearth": {
                    "cascade": router.config.name,
                    "stage": stage.model,
                    "stage_index": index,
                    "confidence": confidence,
                    "fallback": false,
                    "complete": ended,
                    "attempts": attempts,
                },
            });
            let _ = tx.send(sse::event(&final_chunk.to_string())).await;
            let _ = tx.send(sse::event("[DONE]")).await;
        });
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok::<_, Infallible>);
        let mut response = sse_response(Body::from_stream(stream));
        let headers = response.headers_mut();
        set_header(headers, STAGE_HEADER, &self.config.stages[index].model);
        set_header(headers, ESCALATIONS_HEADER, &escalations.to_string());
        response
    }
}

/// What the client asked for that the router must honour itself.
#[derive(Clone, Copy, Debug)]
struct ClientAsk {
    stream: bool,
    include_usage: bool,
    logprobs: bool,
}

impl ClientAsk {
    fn read(route: Route, body: &Value) -> Result<Self, ApiError> {
        let Some(object) = body.as_object() else {
            return Err(ApiError::InvalidRequest { message: "the body must be a JSON object".into(), param: None });
        };
        let stream = match object.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(ApiError::invalid("stream", format!("stream must be a boolean, got {other}"))),
        };
        let include_usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
        let logprobs = match (route, object.get("logprobs")) {
            (_, None | Some(Value::Null)) => false,
            (Route::Chat, Some(Value::Bool(b))) => *b,
            (Route::Completion, Some(Value::Number(_))) => true,
            (Route::Chat, Some(other)) => {
                return Err(ApiError::invalid("logprobs", format!("logprobs must be a boolean, got {other}")));
            }
            (Route::Completion, Some(other)) => {
                return Err(ApiError::invalid("logprobs", format!("logprobs must be an integer 0–5, got {other}")));
            }
        };
        if object.get("n").and_then(Value::as_i64).is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("n", "a cascade returns one choice: n must be 1"));
        }
        Ok(Self { stream, include_usage, logprobs })
    }
}

fn validate(config: &RouterConfig) -> Result<(), ConfigError> {
    let invalid = |field: String, message: &str| ConfigError::Invalid {
        cascade: config.name.clone(),
        field,
        message: message.to_owned(),
    };
    if config.name.is_empty() {
        return Err(invalid("name".into(), "a cascade needs a name"));
    }
    if config.stages.is_empty() {
        return Err(invalid("stages".into(), "a cascade needs at least one stage"));
    }
    let last = config.stages.len() - 1;
    for (i, stage) in config.stages.iter().enumerate() {
        match stage.min_confidence {
            None if i < last => {
                return Err(invalid(format!("stages[{i}].minConfidence"), "every stage but the last needs one"));
            }
            Some(t) if !(t > 0.0 && t < 1.0) => {
                return Err(invalid(format!("stages[{i}].minConfidence"), "must lie strictly between 0 and 1"));
            }
            _ => {}
        }
        if !(stage.endpoint.starts_with("http://") || stage.endpoint.starts_with("https://")) {
            return Err(invalid(format!("stages[{i}].endpoint"), "must be an http:// or https:// URL"));
        }
        if stage.timeout_seconds == 0 {
            return Err(invalid(format!("stages[{i}].timeoutSeconds"), "must be at least 1"));
        }
    }
    if let Some(max) = config.max_escalation_ratio
        && !(0.0..=1.0).contains(&max)
    {
        return Err(invalid("maxEscalationRatio".into(), "must lie between 0 and 1"));
    }
    Ok(())
}

/// The request a stage gets: the client's, with the stage's model name, log-probabilities
/// on, and streaming only for the last stage of a streaming client.
fn stage_body(route: Route, body: &Value, stage: &RouterStage, stream: bool) -> Value {
    let mut request = body.clone();
    request["model"] = json!(stage.model);
    match route {
        Route::Chat => request["logprobs"] = json!(true),
        Route::Completion => {
            if request.get("logprobs").is_none_or(Value::is_null) {
                request["logprobs"] = json!(0);
            }
        }
    }
    request["stream"] = json!(stream);
    if stream {
        request["stream_options"] = json!({"include_usage": true});
    } else if let Some(object) = request.as_object_mut() {
        object.remove("stream_options");
    }
    request
}

fn transport_failure(error: reqwest::Error) -> CallError {
    let reason = if error.is_timeout() {
        FailureReason::Timeout
    } else if error.is_connect() {
        FailureReason::Unreachable
    } else {
        FailureReason::UpstreamError
    };
    CallError::Failed(reason, error.to_string())
}

/// Passes a 2xx on, classifies the rest.
async fn check_status(response: reqwest::Response) -> Result<reqwest::Response, CallError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let code = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let bytes = response.bytes().await.unwrap_or_default();
    let message = String::from_utf8_lossy(&bytes).chars().take(300).collect::<String>();
    let error_code = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.pointer("/error/code").and_then(Value::as_str).map(str::to_owned));
    Err(match code {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            CallError::Failed(FailureReason::Overloaded, message)
        }
        StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => CallError::Failed(FailureReason::Timeout, message),
        _ if error_code.as_deref() == Some("context_length_exceeded") => {
            CallError::Failed(FailureReason::ContextLength, message)
        }
        // A stage that does not know its own model name is misconfigured, not the client.
        StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            CallError::Failed(FailureReason::UpstreamError, format!("{status}: {message}"))
        }
        _ if code.is_client_error() => CallError::Client(code, bytes),
        _ => CallError::Failed(FailureReason::UpstreamError, format!("{status}: {message}")),
    })
}

fn passthrough(status: StatusCode, bytes: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// The sampled tokens' log-probabilities in a chat or text completion (or one chunk).
fn token_logprobs(route: Route, answer: &Value) -> Vec<f64> {
    let choice = answer.pointer("/choices/0/logprobs");
    match route {
        Route::Chat => choice
            .and_then(|l| l.get("content"))
            .and_then(Value::as_array)
            .map(|tokens| tokens.iter().filter_map(|t| t.get("logprob").and_then(Value::as_f64)).collect())
            .unwrap_or_default(),
        Route::Completion => choice
            .and_then(|l| l.get("token_logprobs"))
            .and_then(Value::as_array)
            .map(|tokens| tokens.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default(),
    }
}

fn usage_of(answer: &Value) -> Tokens {
    let count = |field: &str| answer.pointer(&format!("/usage/{field}")).and_then(Value::as_u64).unwrap_or(0);
    Tokens { prompt: count("prompt_tokens"), completion: count("completion_tokens") }
}

fn set_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

fn sse_response(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// Turns a buffered answer into the event stream a streaming client expects.
fn synthesize_stream(route: Route, answer: &Value, extension: Value, include_usage: bool) -> Response {
    let id = answer.get("id").cloned().unwrap_or(Value::Null);
    let created = answer.get("created").cloned().unwrap_or(Value::Null);
    let model = answer.get("model").cloned().unwrap_or(Value::Null);
    let choice = answer.pointer("/choices/0").cloned().unwrap_or_else(|| json!({}));
    let finish = choice.get("finish_reason").cloned().unwrap_or(Value::Null);
    let logprobs = choice.get("logprobs").cloned().unwrap_or(Value::Null);
    let chunk = |choices: Value| json!({"id": id, "object": route.chunk_object(), "created": created, "model": model, "choices": choices});
    let mut events: Vec<Value> = Vec::new();
    match route {
        Route::Chat => {
            let content = choice.pointer("/message/content").cloned().unwrap_or_else(|| json!(""));
            events.push(chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""},
                "logprobs": null, "finish_reason": null}])));
            events.push(chunk(json!([{"index": 0, "delta": {"content": content}, "logprobs": logprobs,
                "finish_reason": null}])));
            events.push(chunk(json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish}])));
        }
        Route::Completion => {
            let text = choice.get("text").cloned().unwrap_or_else(|| json!(""));
            events.push(chunk(json!([{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": null}])));
            events.push(chunk(json!([{"index": 0, "text": "", "logprobs": null, "finish_reason": finish}])));
        }
    }
    if include_usage {
        let mut usage = chunk(json!([]));
        usage["usage"] = answer.get("usage").cloned().unwrap_or(Value::Null);
        events.push(usage);
    }
    let mut tail = chunk(json!([]));
    tail["hearth"] = extension;
    events.push(tail);
    let mut body: Vec<u8> = Vec::new();
    for event in events {
        body.extend_from_slice(&sse::event(&event.to_string()));
    }
    body.extend_from_slice(&sse::event("[DONE]"));
    sse_response(Body::from(body))
}
