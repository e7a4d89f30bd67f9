//! The real server on a loopback port with real small models (SmolLM2-135M for chat,
//! all-MiniLM-L6-v2 for embeddings), spoken to over HTTP like any OpenAI client would.
//! Models come from `scripts/fetch-models.py` (the test says so when one is missing).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hearth_engine::registry::{ChatModel, EmbeddingService, Registry, ServedModel, ServingLimits};
use hearth_server::api::{self, ApiConfig, AppState};
use serde_json::{Value, json};

fn model_path(relative: &str) -> PathBuf {
    hearth_testkit::models::required(relative)
}

const CHAT: &str = "smollm2";
const EMBED: &str = "minilm";

struct TestServer {
    base: String,
    client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    async fn start(limits: ServingLimits, config: ApiConfig) -> Self {
        let registry = Arc::new(Registry::default());
        let loaded = {
            let registry = registry.clone();
            tokio::task::spawn_blocking(move || {
                let device = candle_core::Device::Cpu;
                let chat =
                    ChatModel::load_gguf(CHAT, &model_path("smollm2-135m-instruct-q4_1.gguf"), limits.clone(), &device)
                        .expect("load smollm2");
                registry.insert(CHAT, ServedModel::Chat(Arc::new(chat)));
                let embed = EmbeddingService::load(EMBED, &model_path("all-minilm-l6-v2"), &limits, &device)
                    .expect("load minilm");
                registry.insert(EMBED, ServedModel::Embedding(Arc::new(embed)));
                registry.set_ready(true);
            })
        };
        loaded.await.expect("loading panicked");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let state = AppState::new(registry, config);
        let server = tokio::spawn(api::serve(listener, state, async {
            let _ = rx.await;
        }));
        Self { base, client: reqwest::Client::new(), shutdown: Some(tx), server }
    }

    async fn default() -> Self {
        Self::start(ServingLimits { max_tokens: 256, ..ServingLimits::default() }, ApiConfig::default()).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.client.post(format!("{}{path}", self.base)).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self.client.get(format!("{}{path}", self.base)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Streams a request and returns the parsed `data:` payloads (without [DONE]) and whether
    /// [DONE] arrived.
    async fn stream(&self, path: &str, body: Value) -> (Vec<Value>, bool) {
        let r = self.client.post(format!("{}{path}", self.base)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        let mut text = String::new();
        let mut body = r.bytes_stream();
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
        let mut events = Vec::new();
        let mut done = false;
        for line in text.lines() {
            if let Some(data) = line.strip_prefix("data: ") {
                if data == "[DONE]" {
                    done = true;
                } else {
                    events.push(serde_json::from_str(data).unwrap());
                }
            }
        }
        (events, done)
    }
}

fn chat_body(content: &str, extra: Value) -> Value {
    let mut body =
        json!({"model": CHAT, "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 24});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

fn assert_openai_error(status: u16, body: &Value, expected_status: u16, mentions: &str) {
    assert_eq!(status, expected_status, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_else(|| panic!("not an OpenAI error body: {body}"));
    assert!(body["error"]["type"].is_string(), "{body}");
    assert!(message.contains(mentions), "expected `{mentions}` in: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completion_has_the_openai_shape() {
    let s = TestServer::default().await;
    let (status, body) = s.post("/v1/chat/completions", chat_body("What is the capital of France?", json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], CHAT);
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(!choice["message"]["content"].as_str().unwrap().is_empty());
    assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()));
    let usage = &body["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 5);
    assert!(usage["completion_tokens"].as_u64().unwrap() >= 1);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_gives_the_same_answer_as_non_streaming() {
    let s = TestServer::default().await;
    let body = chat_body("Write a haiku about the sea.", json!({}));
    let (_, whole) = s.post("/v1/chat/completions", body.clone()).await;
    let expected = whole["choices"][0]["message"]["content"].as_str().unwrap().to_owned();

    let mut streamed = body;
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (events, done) = s.stream("/v1/chat/completions", streamed).await;
    assert!(done, "the stream must end with [DONE]");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"].get(0).and_then(|c| c["delta"]["content"].as_str()).map(str::to_owned))
        .collect();
    assert_eq!(text, expected);
    let finish = events.iter().filter_map(|e| e["choices"].get(0).and_then(|c| c["finish_reason"].as_str())).count();
    assert_eq!(finish, 1, "exactly one chunk carries finish_reason");
    let usage = events.last().unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"], whole["usage"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_are_returned_and_never_positive() {
    let s = TestServer::default().await;
    let (status, body) =
        s.post("/v1/chat/completions", chat_body("Say hello.", json!({"logprobs": true, "top_logprobs": 3}))).await;
    assert_eq!(status, 200, "{body}");
    let content = body["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        body["usage"]["completion_tokens"].as_u64().unwrap() - u64::from(body["choices"][0]["finish_reason"] == "stop")
    );
    for entry in content {
        let lp = entry["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0, "{entry}");
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy decoding picks the likeliest token.
        assert!((top[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-4, "{entry}");
    }

    let (status, body) = s
        .post("/v1/completions", json!({"model": CHAT, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, "logprobs": 2}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    let lp = &body["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), lp["token_logprobs"].as_array().unwrap().len());
    assert!(lp["token_logprobs"].as_array().unwrap().iter().all(|v| v.as_f64().unwrap() <= 0.0));
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_match_sentence_transformers_in_float_and_base64() {
    let s = TestServer::default().await;
    let reference: Value =
        serde_json::from_str(include_str!("../../../tests/fixtures/reference/all-minilm-l6-v2.embeddings.json"))
            .unwrap();
    let cases = reference["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().take(4).map(|c| c["text"].as_str().unwrap()).collect();
    let (status, body) = s.post("/v1/embeddings", json!({"model": EMBED, "input": texts})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 4);
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    for (i, case) in cases.iter().take(4).enumerate() {
        let ours: Vec<f64> =
            body["data"][i]["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let theirs: Vec<f64> = case["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert!(cosine(&ours, &theirs) >= 0.999, "case {i}");
        assert_eq!(body["data"][i]["index"], i);
    }
    let (status, b64) =
        s.post("/v1/embeddings", json!({"model": EMBED, "input": texts[0], "encoding_format": "base64"})).await;
    assert_eq!(status, 200, "{b64}");
    use base64::Engine as _;
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(b64["data"][0]["embedding"].as_str().unwrap()).unwrap();
    let decoded: Vec<f64> =
        bytes.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect();
    let float: Vec<f64> =
        body["data"][0]["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(decoded.len(), 384);
    assert!(cosine(&decoded, &float) > 0.99999);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_readiness_and_metrics() {
    let s = TestServer::default().await;
    assert_eq!(s.get("/healthz").await.0, 200);
    assert_eq!(s.get("/readyz").await.0, 200);
    let (_, models) = s.get("/v1/models").await;
    let models: Value = serde_json::from_str(&models).unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![EMBED, CHAT]);
    let chat = &models["data"][1]["hearth"];
    assert_eq!(chat["task"], "chat", "{models}");
    assert_eq!(chat["architecture"], "llama", "{models}");
    assert_eq!(chat["base_model"], false, "SmolLM2-135M-Instruct is an instruct model: {models}");
    assert!(chat["context_length"].as_u64().unwrap() > 0, "{models}");
    assert_eq!(models["data"][0]["hearth"]["task"], "embedding", "{models}");
    let (status, _) = s.post("/v1/chat/completions", chat_body("Hi", json!({"max_tokens": 4}))).await;
    assert_eq!(status, 200);
    let (_, metrics) = s.get("/metrics").await;
    for name in [
        "hearth_server_requests_total{route=\"/v1/chat/completions\",model=\"smollm2\",status=\"200\"} 1",
        "hearth_server_time_to_first_token_seconds_bucket",
        "hearth_server_inter_token_latency_seconds_bucket",
        "hearth_server_request_duration_seconds_count",
        "hearth_server_generated_tokens_total{model=\"smollm2\"}",
        "hearth_server_prompt_tokens_total{model=\"smollm2\"}",
        "hearth_server_queue_depth{model=\"smollm2\"}",
        "hearth_server_inflight_requests{model=\"smollm2\"} 0",
        "hearth_server_batch_size{model=\"smollm2\"}",
    ] {
        assert!(metrics.contains(name), "missing `{name}` in:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_openai_errors_and_the_server_stays_healthy() {
    let config = ApiConfig { body_limit_bytes: 64 * 1024, ..ApiConfig::default() };
    let s = TestServer::start(
        ServingLimits { max_tokens: 256, context_length: Some(512), ..ServingLimits::default() },
        config,
    )
    .await;
    let url = format!("{}/v1/chat/completions", s.base);
    let raw = |body: Vec<u8>| {
        let client = s.client.clone();
        let url = url.clone();
        async move {
            let r = client.post(url).header("content-type", "application/json").body(body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, body) = raw(b"{\"model\": \"smollm2\", \"messages\": [".to_vec()).await;
    assert_openai_error(status, &body, 400, "");
    let (status, body) = raw(b"{\"model\": 5, \"messages\": \"hi\"}".to_vec()).await;
    assert_openai_error(status, &body, 400, "");
    let (status, body) = raw(vec![b'{', 0xff, 0xfe, b'}']).await;
    assert_openai_error(status, &body, 400, "");
    let (status, body) = raw(format!(
        "{{\"model\": \"smollm2\", \"messages\": [{{\"role\": \"user\", \"content\": \"{}\"}}]}}",
        "a".repeat(100_000)
    )
    .into_bytes())
    .await;
    assert_openai_error(status, &body, 413, "limit");

    let (status, body) =
        s.post("/v1/chat/completions", json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_openai_error(status, &body, 404, "nope");
    assert_eq!(body["error"]["code"], "model_not_found");
    let (status, body) = s.post("/v1/chat/completions", chat_body("hi", json!({"max_tokens": -3}))).await;
    assert_openai_error(status, &body, 400, "max_tokens");
    assert_eq!(body["error"]["param"], "max_tokens");
    let (status, body) = s.post("/v1/chat/completions", chat_body("hi", json!({"max_tokens": 1_000_000_000u64}))).await;
    assert_openai_error(status, &body, 400, "max_tokens");
    let long = "word ".repeat(600);
    let (status, body) = s.post("/v1/chat/completions", chat_body(&long, json!({"max_tokens": 100}))).await;
    assert_openai_error(status, &body, 400, "context length is 512 tokens");
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    assert!(body["error"]["message"].as_str().unwrap().contains("max_tokens is 100"));
    let (status, body) = s.post("/v1/chat/completions", chat_body("hi", json!({"temperature": 7}))).await;
    assert_openai_error(status, &body, 400, "temperature");
    let (status, body) = s.post("/v1/chat/completions", chat_body("hi", json!({"n": 3}))).await;
    assert_openai_error(status, &body, 400, "n=1");
    let (status, body) = s.post("/v1/chat/completions", json!({"model": CHAT, "messages": []})).await;
    assert_openai_error(status, &body, 400, "at least one message");
    let (status, body) = s.post("/v1/embeddings", json!({"model": CHAT, "input": "hi"})).await;
    assert_openai_error(status, &body, 400, "text generation");
    let (status, body) = s.post("/v1/completions", json!({"model": CHAT, "prompt": [999999999u64]})).await;
    assert_openai_error(status, &body, 400, "outside the vocabulary");

    let (status, body) = s.post("/v1/chat/completions", chat_body("Still there?", json!({"max_tokens": 4}))).await;
    assert_eq!(status, 200, "the server must stay healthy after bad input: {body}");
    assert_eq!(s.get("/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after_at_once() {
    let limits = ServingLimits { max_batch_size: 1, max_queue: 1, max_tokens: 512, ..ServingLimits::default() };
    let s = Arc::new(TestServer::start(limits, ApiConfig::default()).await);
    let long = |s: Arc<TestServer>| async move {
        s.post("/v1/completions", json!({"model": CHAT, "prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": true, "temperature": 0})).await
    };
    let first = tokio::spawn(long(s.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = tokio::spawn(long(s.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let r = s
        .client
        .post(format!("{}/v1/completions", s.base))
        .json(&json!({"model": CHAT, "prompt": "Hi", "max_tokens": 4}))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "queue_full");
    assert!(elapsed < Duration::from_millis(500), "429 took {elapsed:?}");
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(second.await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_the_api_but_not_health() {
    let config = ApiConfig { api_keys: vec!["sekret-1".into(), "sekret-2".into()], ..ApiConfig::default() };
    let s = TestServer::start(ServingLimits::default(), config).await;
    let url = format!("{}/v1/models", s.base);
    assert_eq!(s.client.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(s.client.get(&url).bearer_auth("wrong").send().await.unwrap().status(), 401);
    assert_eq!(s.client.get(&url).bearer_auth("sekret-2").send().await.unwrap().status(), 200);
    let r = s.client.get(&url).bearer_auth("sekret-1x").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(s.get("/healthz").await.0, 200);
    assert_eq!(s.get("/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_streams_then_stops() {
    let config = ApiConfig { drain: Duration::from_secs(20), ..ApiConfig::default() };
    let mut s = TestServer::start(ServingLimits::default(), config).await;
    let body = json!({"model": CHAT, "prompt": "Count: one, two,", "max_tokens": 40, "ignore_eos": true, "temperature": 0, "stream": true});
    let r = s.client.post(format!("{}/v1/completions", s.base)).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    // Shut down while the stream is mid-flight.
    s.shutdown.take().unwrap().send(()).unwrap();
    let mut rest = String::new();
    while let Some(chunk) = stream.next().await {
        rest.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(rest.contains("\"finish_reason\":\"length\""), "the in-flight stream must finish: {rest}");
    assert!(rest.trim_end().ends_with("data: [DONE]"));
    tokio::time::timeout(Duration::from_secs(10), &mut s.server)
        .await
        .expect("the server must stop after draining")
        .unwrap()
        .unwrap();
    assert!(s.client.get(format!("{}/healthz", s.base)).send().await.is_err(), "no new connections after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_deadline_ends_long_streams_cleanly() {
    let config = ApiConfig { drain: Duration::from_millis(300), ..ApiConfig::default() };
    let mut s = TestServer::start(ServingLimits { max_tokens: 2000, ..ServingLimits::default() }, config).await;
    let body = json!({"model": CHAT, "prompt": "Once", "max_tokens": 2000, "ignore_eos": true, "temperature": 0, "stream": true});
    let r = s.client.post(format!("{}/v1/completions", s.base)).json(&body).send().await.unwrap();
    let mut stream = r.bytes_stream();
    stream.next().await.unwrap().unwrap();
    s.shutdown.take().unwrap().send(()).unwrap();
    let started = Instant::now();
    let mut rest = String::new();
    while let Some(chunk) = stream.next().await {
        rest.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(rest.contains("shutting down"), "{rest}");
    assert!(rest.trim_end().ends_with("data: [DONE]"));
    tokio::time::timeout(Duration::from_secs(10), &mut s.server).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_models_and_are_held_to_their_limits() {
    use hearth_server::api::tenants::TenantConfig;
    let tenant = |name: &str, model: &str, rpm: Option<u32>, tpm: Option<u64>| TenantConfig {
        name: name.into(),
        key: format!("{name}-key-0123456789"),
        model: model.into(),
        requests_per_minute: rpm,
        tokens_per_minute: tpm,
    };
    let config = ApiConfig {
        api_keys: vec!["operator-key-0123456789".into()],
        tenants: vec![
            tenant("acme", CHAT, Some(3), None),
            tenant("globex", CHAT, None, Some(40)),
            tenant("initech", EMBED, None, None),
        ],
        ..ApiConfig::default()
    };
    let s = TestServer::start(ServingLimits { max_tokens: 64, ..ServingLimits::default() }, config).await;
    let send = |key: &'static str, path: &'static str, body: Value| {
        let request = s.client.post(format!("{}{path}", s.base)).json(&body);
        async move {
            let r = if key.is_empty() { request } else { request.bearer_auth(key) }.send().await.unwrap();
            let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            (r.status().as_u16(), retry_after, r.json::<Value>().await.unwrap())
        }
    };
    let chat =
        json!({"model": CHAT, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0});
    let embed = json!({"model": EMBED, "input": "hello"});
    const ACME: &str = "acme-key-0123456789";
    const GLOBEX: &str = "globex-key-0123456789";
    const INITECH: &str = "initech-key-0123456789";
    const OPERATOR: &str = "operator-key-0123456789";

    // No key, or an unknown one: 401.
    assert_eq!(send("", "/v1/chat/completions", chat.clone()).await.0, 401);
    assert_eq!(send("acme-key-012345678", "/v1/chat/completions", chat.clone()).await.0, 401);

    // acme: three requests a minute, then 429 naming the limit, with a Retry-After of about
    // the 20 s one request takes to come back.
    for _ in 0..3 {
        assert_eq!(send(ACME, "/v1/chat/completions", chat.clone()).await.0, 200);
    }
    let (status, retry_after, body) = send(ACME, "/v1/chat/completions", chat.clone()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limit_exceeded")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("acme") && message.contains("requestsPerMinute"), "{message}");
    assert!((15..=20).contains(&retry_after.unwrap()), "Retry-After {retry_after:?}");
    // A model reserved to other tenants looks like no model at all.
    let (status, _, body) = send(ACME, "/v1/embeddings", embed.clone()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("model_not_found")));

    // globex: 40 tokens a minute; the first request (a prompt plus 50 generated) overdraws it,
    // the next waits.
    let long =
        json!({"model": CHAT, "prompt": "Once upon a time", "max_tokens": 50, "ignore_eos": true, "temperature": 0});
    let (status, _, body) = send(GLOBEX, "/v1/completions", long.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 40);
    let (status, retry_after, body) = send(GLOBEX, "/v1/completions", long).await;
    assert_eq!(status, 429, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("tokensPerMinute"), "{body}");
    assert!(retry_after.unwrap() >= 1);
    // acme's limit is acme's alone.
    assert_eq!(send(INITECH, "/v1/embeddings", embed.clone()).await.0, 200);

    // Each tenant lists only what it may call; the operator key sees and calls everything.
    let models = |key: &'static str| {
        let request = s.client.get(format!("{}/v1/models", s.base)).bearer_auth(key);
        async move {
            let list: Value = request.send().await.unwrap().json().await.unwrap();
            let mut ids: Vec<String> =
                list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(models(ACME).await, vec![CHAT.to_owned()]);
    assert_eq!(models(INITECH).await, vec![EMBED.to_owned()]);
    assert_eq!(models(OPERATOR).await.len(), 2);
    assert_eq!(send(OPERATOR, "/v1/chat/completions", chat.clone()).await.0, 200);
    assert_eq!(send(OPERATOR, "/v1/embeddings", embed).await.0, 200);

    // The refusals and the tokens are in the metrics, per tenant.
    let metrics = s.get("/metrics").await.1;
    let line = |needle: &str| metrics.lines().find(|l| l.contains(needle) && !l.starts_with('#')).map(str::to_owned);
    let limited =
        line("hearth_server_tenant_requests_total{tenant=\"acme\",model=\"smollm2\",outcome=\"requestsPerMinute\"}");
    assert!(limited.is_some_and(|l| l.ends_with(" 1")), "{metrics}");
    let tokens = line("hearth_server_tenant_tokens_total{tenant=\"globex\"").unwrap();
    assert!(tokens.rsplit(' ').next().unwrap().parse::<u64>().unwrap() > 40, "{tokens}");
    assert_eq!(s.get("/healthz").await.0, 200);
}

/// Overload, bounded: 48 clients at once against a batch of 2 and a queue of 4. Every request
/// ends in a complete answer (a stream with its finish reason and `[DONE]`) or a 429 with
/// Retry-After and an OpenAI error body; none hangs, none is cut; the server stays healthy and
/// serves normally afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_overload_every_request_ends_in_an_answer_or_a_clean_429() {
    let limits = ServingLimits { max_batch_size: 2, max_queue: 4, max_tokens: 64, ..ServingLimits::default() };
    let s = Arc::new(TestServer::start(limits, ApiConfig::default()).await);
    let one = |s: Arc<TestServer>, i: usize| async move {
        let body = json!({"model": CHAT, "prompt": format!("Client {i} says"), "max_tokens": 8, "ignore_eos": true,
                          "temperature": 0, "stream": i.is_multiple_of(2)});
        let r = s.client.post(format!("{}/v1/completions", s.base)).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        let retry_after = r.headers().get("retry-after").is_some();
        let text = r.text().await.unwrap();
        (i, status, retry_after, text)
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..48).map(|i| tokio::spawn(one(s.clone(), i))).collect();
    let (mut served, mut refused) = (0, 0);
    for task in tasks {
        let (i, status, retry_after, text) =
            tokio::time::timeout(Duration::from_secs(120), task).await.expect("a request hung").unwrap();
        match status {
            200 if i.is_multiple_of(2) => {
                assert!(
                    text.contains("\"finish_reason\":\"length\"") && text.trim_end().ends_with("data: [DONE]"),
                    "{text}"
                );
                served += 1;
            }
            200 => {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["usage"]["completion_tokens"], 8, "{text}");
                served += 1;
            }
            429 => {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["error"]["code"], "queue_full", "{text}");
                assert!(retry_after);
                refused += 1;
            }
            other => panic!("request {i}: status {other}: {text}"),
        }
    }
    eprintln!("overload: {served} served, {refused} refused in {:?}", started.elapsed());
    assert!(served >= 4, "at least a queue's worth is served, got {served}");
    assert!(refused > 0, "48 at once must overflow a batch of 2 and a queue of 4");
    assert_eq!(s.get("/healthz").await.0, 200);
    let (status, _) = s.post("/v1/completions", json!({"model": CHAT, "prompt": "Hi", "max_tokens": 2})).await;
    assert_eq!(status, 200);
    let metrics = s.get("/metrics").await.1;
    assert!(metrics.contains("hearth_server_inflight_requests{model=\"smollm2\"} 0"), "nothing left in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_format_json_schema_answers_parse_and_validate() {
    let s = TestServer::default().await;
    let schema = json!({
        "type": "object",
        "properties": {
            "capital": {"type": "string", "maxLength": 40},
            "population_millions": {"type": "number"},
            "continent": {"enum": ["Europe", "Asia", "Africa", "America", "Oceania"]},
        },
        "required": ["capital", "continent"],
        "additionalProperties": false,
    });
    let format = json!({"type": "json_schema", "json_schema": {"name": "country", "strict": true, "schema": schema}});
    for (temperature, question) in [(0.0, "Describe France."), (1.0, "Describe Japan.")] {
        let body =
            chat_body(question, json!({"response_format": format, "temperature": temperature, "max_tokens": 120}));
        let (status, body) = s.post("/v1/chat/completions", body).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
        let content = body["choices"][0]["message"]["content"].as_str().unwrap();
        let answer: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{content:?}: {e}"));
        let validator = jsonschema::validator_for(&schema).unwrap();
        assert!(validator.is_valid(&answer), "{content} does not satisfy the schema");
    }
    // json_object: any object; streaming gives the same kind of document.
    let body = chat_body(
        "List two colours.",
        json!({"response_format": {"type": "json_object"}, "max_tokens": 80, "stream": true}),
    );
    let (events, done) = s.stream("/v1/chat/completions", body).await;
    assert!(done);
    let text: String = events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert!(value.is_object(), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_formats_that_cannot_be_enforced_get_a_400_naming_the_field() {
    let s = TestServer::default().await;
    let cases = [
        json!({"type": "xml"}),
        json!({"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}}),
        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/nowhere"}}}),
        json!({"type": "json_schema"}),
    ];
    for format in cases {
        let (status, body) = s.post("/v1/chat/completions", chat_body("Hi", json!({"response_format": format}))).await;
        assert_openai_error(status, &body, 400, "response_format");
    }
    let (status, _) = s.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_not_implemented_are_refused_by_name_never_dropped() {
    let s = TestServer::default().await;
    let tool = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    for (param, value) in [
        ("tools", tool.clone()),
        ("tool_choice", json!("required")),
        ("functions", json!([{"name": "f"}])),
        ("function_call", json!({"name": "f"})),
        ("logit_bias", json!({"42": -100})),
    ] {
        let (status, body) = s.post("/v1/chat/completions", chat_body("Hi", json!({param: value}))).await;
        assert_openai_error(status, &body, 400, param);
        assert_eq!(body["error"]["param"], param, "{body}");
    }
    // Empty and "none" forms ask for nothing and pass.
    let extra = json!({"tools": [], "tool_choice": "none", "logit_bias": {}, "functions": null});
    let (status, body) = s.post("/v1/chat/completions", chat_body("Hi", extra)).await;
    assert_eq!(status, 200, "{body}");
}
