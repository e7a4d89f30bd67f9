//! The Cascade router against scripted stages (small axum servers on loopback ports that
//! answer with chosen log-probabilities, fail, or hang), and once against real models.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use hearth_cascade::CascadeRouter;
use hearth_crds::cascade::ConfidenceMeasure;
use hearth_crds::model::TokenCost;
use hearth_crds::router::{RouterConfig, RouterStage};
use hearth_engine::registry::{ChatModel, Registry, ServedModel, ServingLimits};
use hearth_server::api::{self, ApiConfig, AppState};
use serde_json::{Value, json};

/// What a scripted stage does with each request.
#[derive(Clone)]
enum Script {
    /// Answers with these tokens, each with this probability.
    Answer(Vec<(&'static str, f64)>),
    /// Answers this status and OpenAI error code.
    Fail(u16, &'static str),
    /// Waits this long, then answers like `Answer`.
    Slow(Duration, Vec<(&'static str, f64)>),
}

struct StageState {
    script: Script,
    calls: AtomicUsize,
    last_body: Mutex<Value>,
}

async fn stage_handler(State(stage): State<Arc<StageState>>, Json(body): Json<Value>) -> Response {
    stage.calls.fetch_add(1, Ordering::SeqCst);
    *stage.last_body.lock().unwrap() = body.clone();
    let tokens = match &stage.script {
        Script::Answer(tokens) => tokens.clone(),
        Script::Fail(status, code) => {
            let error =
                json!({"error": {"message": format!("scripted {code}"), "type": "x", "param": null, "code": code}});
            return (axum::http::StatusCode::from_u16(*status).unwrap(), Json(error)).into_response();
        }
        Script::Slow(delay, tokens) => {
            tokio::time::sleep(*delay).await;
            tokens.clone()
        }
    };
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let text: String = tokens.iter().map(|(t, _)| *t).collect();
    let logprobs: Vec<Value> =
        tokens.iter().map(|(t, p)| json!({"token": t, "logprob": p.ln(), "bytes": [], "top_logprobs": []})).collect();
    let usage = json!({"prompt_tokens": 10, "completion_tokens": tokens.len(), "total_tokens": 10 + tokens.len()});
    if body["stream"] == json!(true) {
        let mut events = String::new();
        let mut push = |v: Value| events.push_str(&format!("data: {v}\n\n"));
        push(json!({"id": "s", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]}));
        for (token, lp) in tokens.iter().zip(&logprobs) {
            push(json!({"id": "s", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": {"content": token.0}, "logprobs": {"content": [lp]}, "finish_reason": null}]}));
        }
        push(json!({"id": "s", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]}));
        if body.pointer("/stream_options/include_usage") == Some(&json!(true)) {
            push(
                json!({"id": "s", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [], "usage": usage}),
            );
        }
        events.push_str("data: [DONE]\n\n");
        return ([("content-type", "text/event-stream")], events).into_response();
    }
    Json(json!({
        "id": "c", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
            "logprobs": {"content": logprobs}, "finish_reason": "stop"}],
        "usage": usage,
    }))
    .into_response()
}

struct Stage {
    endpoint: String,
    state: Arc<StageState>,
}

impl Stage {
    async fn start(script: Script) -> Self {
        let state = Arc::new(StageState { script, calls: AtomicUsize::new(0), last_body: Mutex::new(Value::Null) });
        let app = axum::Router::new().route("/v1/chat/completions", post(stage_handler)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { endpoint, state }
    }

    /// An endpoint where nothing listens.
    async fn down() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}/v1", listener.local_addr().unwrap());
        drop(listener);
        endpoint
    }

    fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }
}

fn stage(model: &str, endpoint: &str, min_confidence: Option<f64>) -> RouterStage {
    RouterStage {
        model: model.into(),
        endpoint: endpoint.into(),
        min_confidence,
        timeout_seconds: 2,
        cost: Some(TokenCost { input_per_million_tokens: 1.0, output_per_million_tokens: 1.0 }),
    }
}

fn config(stages: Vec<RouterStage>) -> RouterConfig {
    RouterConfig {
        name: "casc".into(),
        namespace: "default".into(),
        confidence: ConfidenceMeasure::MeanTokenProbability,
        max_escalation_ratio: None,
        escalation_window: 10,
        stages,
    }
}

struct Router {
    base: String,
    client: reqwest::Client,
}

impl Router {
    async fn start(config: RouterConfig) -> Self {
        Self::start_with(Arc::new(Registry::default()), |_| config).await
    }

    /// Starts a server over `registry` whose cascade `make` builds from the server's own
    /// base URL (so stages can be this same process, as in local mode).
    async fn start_with(registry: Arc<Registry>, make: impl FnOnce(&str) -> RouterConfig) -> Self {
        registry.set_ready(true);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let config = make(&format!("{base}/v1"));
        let state = AppState::new(registry, ApiConfig::default())
            .with_cascades(|metrics| CascadeRouter::new(config, metrics.clone(), None).map(|r| vec![r]))
            .unwrap();
        tokio::spawn(api::serve(listener, state, std::future::pending()));
        Self { base, client: reqwest::Client::new() }
    }

    async fn chat(&self, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self.client.post(format!("{}/v1/chat/completions", self.base)).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.json().await.unwrap_or(Value::Null))
    }

    async fn stream(&self, body: Value) -> (reqwest::header::HeaderMap, Vec<Value>, bool) {
        let r = self.client.post(format!("{}/v1/chat/completions", self.base)).json(&body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let headers = r.headers().clone();
        let mut text = String::new();
        let mut bytes = r.bytes_stream();
        while let Some(piece) = bytes.next().await {
            text.push_str(&String::from_utf8_lossy(&piece.unwrap()));
        }
        let mut chunks = Vec::new();
        let mut done = false;
        for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if line == "[DONE]" {
                done = true;
            } else {
                chunks.push(serde_json::from_str(line).unwrap());
            }
        }
        (headers, chunks, done)
    }

    async fn metrics(&self) -> String {
        self.client.get(format!("{}/metrics", self.base)).send().await.unwrap().text().await.unwrap()
    }
}

fn ask(extra: Value) -> Value {
    let mut body = json!({"model": "casc", "messages": [{"role": "user", "content": "hi"}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

/// The value of the first sample line starting with `prefix` (name and labels).
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in\n{text}"))
}

fn streamed_text(chunks: &[Value]) -> String {
    chunks.iter().filter_map(|c| c.pointer("/choices/0/delta/content").and_then(Value::as_str)).collect()
}

#[tokio::test]
async fn a_confident_first_stage_answers_and_the_second_is_never_asked() {
    let small = Stage::start(Script::Answer(vec![("Paris", 0.9), (".", 0.8)])).await;
    let large = Stage::start(Script::Answer(vec![("Lyon", 0.99)])).await;
    let router =
        Router::start(config(vec![stage("small", &small.endpoint, Some(0.85)), stage("large", &large.endpoint, None)]))
            .await;
    let (status, headers, body) = router.chat(ask(json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "Paris.");
    assert_eq!(headers["x-hearth-cascade-stage"], "small");
    assert_eq!(headers["x-hearth-cascade-escalations"], "0");
    let confidence: f64 = headers["x-hearth-cascade-confidence"].to_str().unwrap().parse().unwrap();
    assert!((confidence - 0.85).abs() < 1e-6, "mean of 0.9 and 0.8, got {confidence}");
    assert_eq!(body["hearth"]["stage_index"], 0);
    assert_eq!(body["choices"][0]["logprobs"], Value::Null, "logprobs were not asked for");
    assert_eq!(large.calls(), 0);
    // The router asked the stage for logprobs and renamed the model.
    let sent = small.state.last_body.lock().unwrap().clone();
    assert_eq!(sent["logprobs"], true);
    assert_eq!(sent["model"], "small");
    assert_eq!(sent["stream"], false);
}

#[tokio::test]
async fn an_answer_below_the_threshold_escalates_and_one_at_it_does_not() {
    let small = Stage::start(Script::Answer(vec![("maybe", 0.6)])).await;
    let large = Stage::start(Script::Answer(vec![("sure", 0.95)])).await;
    let below =
        Router::start(config(vec![stage("small", &small.endpoint, Some(0.61)), stage("large", &large.endpoint, None)]))
            .await;
    let (status, headers, body) = below.chat(ask(json!({"logprobs": true}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "sure");
    assert_eq!(headers["x-hearth-cascade-stage"], "large");
    assert_eq!(headers["x-hearth-cascade-escalations"], "1");
    assert_eq!(body["hearth"]["attempts"][0]["outcome"], "escalated");
    assert_eq!(body["hearth"]["attempts"][1]["outcome"], "answered");
    assert!(body["choices"][0]["logprobs"]["content"].is_array(), "logprobs were asked for: {body}");
    assert_eq!((small.calls(), large.calls()), (1, 1));

    let at =
        Router::start(config(vec![stage("small", &small.endpoint, Some(0.6)), stage("large", &large.endpoint, None)]))
            .await;
    let (_, headers, body) = at.chat(ask(json!({}))).await;
    assert_eq!(headers["x-hearth-cascade-stage"], "small", "a confidence equal to the threshold passes: {body}");
    assert_eq!(large.calls(), 1);
}

#[tokio::test]
async fn failed_stages_are_skipped_whatever_the_failure() {
    let large = Stage::start(Script::Answer(vec![("ok", 0.9)])).await;
    let broken = Stage::start(Script::Fail(500, "internal_error")).await;
    let busy = Stage::start(Script::Fail(429, "queue_full")).await;
    let short = Stage::start(Script::Fail(400, "context_length_exceeded")).await;
    let hanging = Stage::start(Script::Slow(Duration::from_secs(30), vec![("late", 0.99)])).await;
    let down = Stage::down().await;
    for (reason, endpoint) in [
        ("upstream_error", broken.endpoint.clone()),
        ("overloaded", busy.endpoint.clone()),
        ("context_length", short.endpoint.clone()),
        ("unreachable", down),
        ("timeout", hanging.endpoint.clone()),
    ] {
        let mut first = stage("small", &endpoint, Some(0.5));
        first.timeout_seconds = 1;
        let router = Router::start(config(vec![first, stage("large", &large.endpoint, None)])).await;
        let started = Instant::now();
        let (status, headers, body) = router.chat(ask(json!({}))).await;
        assert!(started.elapsed() < Duration::from_secs(5), "{reason}: took {:?}", started.elapsed());
        assert_eq!(status, 200, "{reason}: {body}");
        assert_eq!(headers["x-hearth-cascade-stage"], "large", "{reason}");
        assert_eq!(body["hearth"]["attempts"][0]["reason"], reason, "{body}");
        let text = router.metrics().await;
        let sample =
            format!("hearth_cascade_stage_failures_total{{cascade=\"casc\",stage=\"small\",reason=\"{reason}\"}}");
        assert_eq!(metric(&text, &sample), 1.0, "{reason}");
    }
}

#[tokio::test]
async fn a_client_error_is_returned_as_is_without_escalating() {
    let small = Stage::start(Script::Fail(400, "bad_temperature")).await;
    let large = Stage::start(Script::Answer(vec![("ok", 0.9)])).await;
    let router =
        Router::start(config(vec![stage("small", &small.endpoint, Some(0.5)), stage("large", &large.endpoint, None)]))
            .await;
    let (status, _, body) = router.chat(ask(json!({"temperature": 9}))).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_temperature");
    assert_eq!(large.calls(), 0);
}

#[tokio::test]
async fn when_every_stage_fails_the_client_gets_a_clear_503() {
    let broken = Stage::start(Script::Fail(500, "internal_error")).await;
    let down = Stage::down().await;
    let router =
        Router::start(config(vec![stage("small", &broken.endpoint, Some(0.5)), stage("large", &down, None)])).await;
    let (status, headers, body) = router.chat(ask(json!({}))).await;
    assert_eq!(status, 503);
    assert!(headers.contains_key("retry-after"));
    assert_eq!(body["error"]["code"], "no_stage_available");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("small (upstream_error)") && message.contains("large (unreachable)"), "{message}");
    assert_eq!(metric(&router.metrics().await, "hearth_cascade_exhausted_total{cascade=\"casc\"}"), 1.0);
}

#[tokio::test]
async fn a_rejected_answer_is_the_fallback_when_the_last_stage_is_down() {
    let small = Stage::start(Script::Answer(vec![("guess", 0.3)])).await;
    let down = Stage::down().await;
    let router =
        Router::start(config(vec![stage("small", &small.endpoint, Some(0.5)), stage("large", &down, None)])).await;
    let (status, headers, body) = router.chat(ask(json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "guess");
    assert_eq!(body["hearth"]["fallback"], true);
    assert_eq!(headers["x-hearth-cascade-stage"], "small");
}

#[tokio::test]
async fn the_answering_last_stage_streams_and_a_buffered_answer_is_replayed_as_a_stream() {
    let small = Stage::start(Script::Answer(vec![("un", 0.2), ("sure", 0.2)])).await;
    let large = Stage::start(Script::Answer(vec![("The ", 0.9), ("answer", 0.8), (".", 0.7)])).await;
    let router =
        Router::start(config(vec![stage("small", &small.endpoint, Some(0.5)), stage("large", &large.endpoint, None)]))
            .await;
    let (headers, chunks, done) = router.stream(ask(json!({"stream": true}))).await;
    assert!(done, "the stream ends with [DONE]");
    assert_eq!(headers["x-hearth-cascade-stage"], "large");
    assert_eq!(streamed_text(&chunks), "The answer.", "only the answering stage's text reaches the client");
    assert!(chunks.iter().all(|c| c.pointer("/choices/0/logprobs").is_none()), "logprobs stripped: {chunks:?}");
    assert!(chunks.iter().all(|c| c.get("usage").is_none()), "no usage chunk unless asked");
    let tail = chunks.last().unwrap();
    assert_eq!(tail["hearth"]["stage"], "large");
    let confidence = tail["hearth"]["confidence"].as_f64().unwrap();
    assert!((confidence - 0.8).abs() < 1e-6, "mean of 0.9, 0.8, 0.7: {confidence}");
    // Only the last stage was asked to stream; the first was buffered.
    assert_eq!(small.state.last_body.lock().unwrap()["stream"], false);
    assert_eq!(large.state.last_body.lock().unwrap()["stream"], true);

    // A confident first stage: its buffered answer is replayed as a stream.
    let sure = Stage::start(Script::Answer(vec![("Yes", 0.99)])).await;
    let router =
        Router::start(config(vec![stage("small", &sure.endpoint, Some(0.5)), stage("large", &large.endpoint, None)]))
            .await;
    let (headers, chunks, done) =
        router.stream(ask(json!({"stream": true, "stream_options": {"include_usage": true}}))).await;
    assert!(done);
    assert_eq!(headers["x-hearth-cascade-stage"], "small");
    assert_eq!(streamed_text(&chunks), "Yes");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().any(|c| c["usage"]["completion_tokens"] == 1), "usage chunk was asked for: {chunks:?}");
    assert_eq!(chunks.last().unwrap()["hearth"]["stage_index"], 0);
}

#[tokio::test]
async fn metrics_count_requests_escalations_answers_and_cost() {
    let small = Stage::start(Script::Answer(vec![("a", 0.3)])).await;
    let large = Stage::start(Script::Answer(vec![("b", 0.9)])).await;
    let sure = Stage::start(Script::Answer(vec![("c", 0.9)])).await;
    // Stage one escalates everything: 3 requests → 3 escalations, 3 answers from large.
    let router =
        Router::start(config(vec![stage("small", &small.endpoint, Some(0.5)), stage("large", &large.endpoint, None)]))
            .await;
    for _ in 0..3 {
        assert_eq!(router.chat(ask(json!({}))).await.0, 200);
    }
    let text = router.metrics().await;
    assert_eq!(metric(&text, "hearth_cascade_requests_total{cascade=\"casc\"}"), 3.0);
    assert_eq!(metric(&text, "hearth_cascade_escalations_total{cascade=\"casc\",stage=\"small\"}"), 3.0);
    assert_eq!(metric(&text, "hearth_cascade_answers_total{cascade=\"casc\",stage=\"large\"}"), 3.0);
    assert_eq!(metric(&text, "hearth_cascade_confidence_count{cascade=\"casc\",stage=\"small\"}"), 3.0);
    assert_eq!(
        metric(&text, "hearth_cascade_stage_tokens_total{cascade=\"casc\",stage=\"small\",kind=\"prompt\"}"),
        30.0
    );
    assert_eq!(metric(&text, "hearth_cascade_escalation_ratio{cascade=\"casc\"}"), 1.0);
    // Every request paid for both stages: a loss against the last stage alone.
    assert!(metric(&text, "hearth_cascade_cost_saved{cascade=\"casc\"}") < 0.0);

    // A cheap first stage that answers saves the difference.
    let mut cheap = stage("small", &sure.endpoint, Some(0.5));
    cheap.cost = Some(TokenCost { input_per_million_tokens: 0.1, output_per_million_tokens: 0.1 });
    let router = Router::start(config(vec![cheap, stage("large", &large.endpoint, None)])).await;
    router.chat(ask(json!({}))).await;
    let text = router.metrics().await;
    let saved = metric(&text, "hearth_cascade_cost_saved{cascade=\"casc\"}");
    // 11 tokens at 1.0 per million against 11 at 0.1.
    assert!((saved - 11.0 * 0.9 / 1e6).abs() < 1e-12, "saved {saved}");
    assert_eq!(metric(&text, "hearth_cascade_baseline_cost_total{cascade=\"casc\"}"), 11.0 / 1e6);
}

#[tokio::test]
async fn the_escalation_budget_raises_a_metric_and_keeps_serving() {
    let small = Stage::start(Script::Answer(vec![("a", 0.3)])).await;
    let large = Stage::start(Script::Answer(vec![("b", 0.9)])).await;
    let mut cfg = config(vec![stage("small", &small.endpoint, Some(0.5)), stage("large", &large.endpoint, None)]);
    cfg.max_escalation_ratio = Some(0.5);
    let router = Router::start(cfg).await;
    for _ in 0..12 {
        assert_eq!(router.chat(ask(json!({}))).await.0, 200, "over budget, still serving");
    }
    let text = router.metrics().await;
    assert_eq!(metric(&text, "hearth_cascade_escalation_budget_exceeded{cascade=\"casc\"}"), 1.0);
    assert_eq!(metric(&text, "hearth_cascade_over_budget_requests_total{cascade=\"casc\"}"), 3.0, "requests 10–12");
    let report: Value =
        router.client.get(format!("{}/cascades", router.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(report[0]["budget_exceeded"], true);
    assert_eq!(report[0]["window_requests"], 10);
}

#[tokio::test]
async fn cascades_are_listed_with_the_models_and_bad_requests_name_the_field() {
    let large = Stage::start(Script::Answer(vec![("b", 0.9)])).await;
    let router = Router::start(config(vec![stage("large", &large.endpoint, None)])).await;
    let models: Value =
        router.client.get(format!("{}/v1/models", router.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["data"][0]["id"], "casc");
    let (status, _, body) = router.chat(ask(json!({"stream": "yes"}))).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "stream");
    let (status, _, body) = router.chat(ask(json!({"n": 3}))).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "n");
    assert_eq!(large.calls(), 0);
}

#[test]
fn an_invalid_configuration_names_the_field() {
    let registry = prometheus_client::registry::Registry::default();
    let mut registry = registry;
    let metrics = hearth_cascade::metrics::CascadeMetrics::register(&mut registry);
    let mut missing = config(vec![stage("a", "http://a/v1", None), stage("b", "http://b/v1", None)]);
    let error = CascadeRouter::new(missing.clone(), metrics.clone(), None).err().unwrap().to_string();
    assert!(error.contains("stages[0].minConfidence"), "{error}");
    missing.stages[0].min_confidence = Some(1.5);
    let error = CascadeRouter::new(missing.clone(), metrics.clone(), None).err().unwrap().to_string();
    assert!(error.contains("strictly between 0 and 1"), "{error}");
    missing.stages[0].min_confidence = Some(0.5);
    missing.stages[1].endpoint = "ftp://b".into();
    let error = CascadeRouter::new(missing, metrics, None).err().unwrap().to_string();
    assert!(error.contains("stages[1].endpoint"), "{error}");
}

fn model_path(relative: &str) -> PathBuf {
    hearth_testkit::models::required(relative)
}

/// Real stages: gemma3-270m first, SmolLM2-135M last, both served by the same process the
/// cascade runs in (local mode's layout). An open-ended question (the one-word answer to a
/// colour question once came back with every token at p > 0.999999) escalates past a strict
/// threshold; a tiny one (below 1/vocabulary, which a greedy token always beats) lets gemma answer.
#[tokio::test]
async fn real_gemma3_and_smollm2_stages() {
    let registry = Arc::new(Registry::default());
    {
        let registry = registry.clone();
        tokio::task::spawn_blocking(move || {
            let limits = ServingLimits { max_tokens: 64, ..ServingLimits::default() };
            for (name, file) in [("gemma", "gemma3-270m-q4_k_m.gguf"), ("smollm", "smollm2-135m-instruct-q4_1.gguf")] {
                let model = ChatModel::load_gguf(name, &model_path(file), limits.clone(), &candle_core::Device::Cpu)
                    .expect("load");
                registry.insert(name, ServedModel::Chat(Arc::new(model)));
            }
        })
        .await
        .unwrap();
    }
    let two_stages = |threshold: f64| {
        move |base: &str| RouterConfig {
            name: "casc".into(),
            namespace: "default".into(),
            confidence: ConfidenceMeasure::MinTokenProbability,
            max_escalation_ratio: None,
            escalation_window: 100,
            stages: vec![stage("gemma", base, Some(threshold)), stage("smollm", base, None)],
        }
    };
    let strict = 0.999_999;
    let router = Router::start_with(registry.clone(), two_stages(strict)).await;
    let question = json!({"messages": [{"role": "user", "content": "Write one sentence about the sea."}],
        "max_tokens": 8, "temperature": 0});
    let mut body = question.clone();
    body["model"] = json!("casc");
    let (status, headers, answer) = router.chat(body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        headers["x-hearth-cascade-stage"], "smollm",
        "no open-ended 8-token answer has every token at p > 0.999999"
    );
    let gemma_confidence = answer["hearth"]["attempts"][0]["confidence"].as_f64().unwrap();
    assert!(gemma_confidence > 0.0 && gemma_confidence < strict, "{answer}");
    // The answer is exactly what smollm gives when asked directly.
    let mut direct = question.clone();
    direct["model"] = json!("smollm");
    let (_, _, direct) = router.chat(direct).await;
    assert_eq!(answer["choices"][0]["message"]["content"], direct["choices"][0]["message"]["content"]);

    // Streaming through the escalation gives the same text.
    body["stream"] = json!(true);
    let (_, chunks, done) = router.stream(body.clone()).await;
    assert!(done);
    assert_eq!(streamed_text(&chunks), direct["choices"][0]["message"]["content"].as_str().unwrap());

    // A threshold every answer passes: gemma answers, with the confidence it had above.
    let lenient = Router::start_with(registry, two_stages(0.000_001)).await;
    body["stream"] = json!(false);
    let (_, headers, answer) = lenient.chat(body).await;
    assert_eq!(headers["x-hearth-cascade-stage"], "gemma", "{answer}");
    assert_eq!(answer["hearth"]["confidence"].as_f64().unwrap(), gemma_confidence, "greedy answers are repeatable");
}
