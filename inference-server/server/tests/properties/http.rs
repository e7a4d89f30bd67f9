//! The real router, in-process, with real small models (SmolLM2-135M for chat, MiniLM for
//! embeddings), fed broken requests: every answer is a 4xx with an OpenAI-shaped error body
//! (a request that happens to stay valid may be answered), never a 5xx or a panic, and the
//! server keeps serving afterwards.
//!
//! `tests/server.rs` checks one example of each refusal over TCP; these properties generate
//! the broken requests (every field with every wrong type, numbers at and past each bound,
//! bytes broken at any position) on all three generation and embedding routes.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::Request;
use hearth_engine::registry::{ChatModel, EmbeddingService, Registry, ServedModel, ServingLimits};
use hearth_server::api::{self, ApiConfig, AppState};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::text::{json_value, tricky_text};

const CHAT: &str = "smollm2";
const EMBED: &str = "minilm";
/// The most tokens a request may generate: keeps requests that stay valid quick.
const MAX_TOKENS: i64 = 3;
const CONTEXT: usize = 256;
const BODY_LIMIT: usize = 16 * 1024;
/// SmolLM2's vocabulary size.
const VOCAB: u64 = 49_152;
/// Broken requests per property; each costs a round trip, some a short generation.
const CASES: u32 = 192;

struct Harness {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

/// One server per test process: loading the models once keeps the properties fast.
fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let limits = ServingLimits {
            max_tokens: MAX_TOKENS as usize,
            context_length: Some(CONTEXT),
            ..ServingLimits::default()
        };
        let device = candle_core::Device::Cpu;
        let registry = Arc::new(Registry::default());
        let chat =
            ChatModel::load_gguf(CHAT, &crate::model_path("smollm2-135m-instruct-q4_1.gguf"), limits.clone(), &device)
                .expect("load smollm2");
        registry.insert(CHAT, ServedModel::Chat(Arc::new(chat)));
        let embed = EmbeddingService::load(EMBED, &crate::model_path("all-minilm-l6-v2"), &limits, &device)
            .expect("load minilm");
        registry.insert(EMBED, ServedModel::Embedding(Arc::new(embed)));
        registry.set_ready(true);
        let config = ApiConfig { body_limit_bytes: BODY_LIMIT, ..ApiConfig::default() };
        let router = api::router(AppState::new(registry, config));
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        Harness { runtime, router }
    })
}

#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Harness {
    fn send(&self, method: &str, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Reply {
        self.runtime.block_on(async {
            let mut request = Request::builder().method(method).uri(path);
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            let response = self
                .router
                .clone()
                .oneshot(request.body(Body::from(body)).expect("request"))
                .await
                .expect("infallible");
            let status = response.status().as_u16();
            let content_type =
                response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body").to_vec();
            Reply { status, content_type, body }
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Chat,
    Completion,
    Embedding,
}

impl Route {
    fn path(self) -> &'static str {
        match self {
            Self::Chat => "/v1/chat/completions",
            Self::Completion => "/v1/completions",
            Self::Embedding => "/v1/embeddings",
        }
    }

    /// A valid request carrying `text`.
    fn valid(self, text: &str) -> Value {
        match self {
            Self::Chat => {
                json!({"model": CHAT, "messages": [{"role": "user", "content": text}], "max_tokens": 2, "temperature": 0})
            }
            Self::Completion => {
                json!({"model": CHAT, "prompt": format!("Say: {text}"), "max_tokens": 2, "temperature": 0})
            }
            Self::Embedding => json!({"model": EMBED, "input": text}),
        }
    }

    /// The route's fields with the JSON types they accept.
    fn fields(self) -> &'static [(&'static str, Kind)] {
        use Kind::*;
        match self {
            Self::Chat => &[
                ("model", Str),
                ("messages", Messages),
                ("logprobs", Bool),
                ("top_logprobs", Int),
                ("max_tokens", Int),
                ("max_completion_tokens", Int),
                ("temperature", Float),
                ("top_p", Float),
                ("top_k", Int),
                ("n", Int),
                ("stop", Stop),
                ("seed", Int),
                ("stream", Bool),
                ("stream_options", Object),
                ("frequency_penalty", Float),
                ("presence_penalty", Float),
                ("repetition_penalty", Float),
                ("ignore_eos", Bool),
                ("user", Str),
            ],
            Self::Completion => &[
                ("model", Str),
                ("prompt", Prompt),
                ("logprobs", Int),
                ("echo", Bool),
                ("max_tokens", Int),
                ("temperature", Float),
                ("top_p", Float),
                ("top_k", Int),
                ("n", Int),
                ("stop", Stop),
                ("seed", Int),
                ("stream", Bool),
                ("stream_options", Object),
                ("repetition_penalty", Float),
                ("ignore_eos", Bool),
            ],
            Self::Embedding => &[("model", Str), ("input", Input), ("encoding_format", Str), ("dimensions", Int)],
        }
    }
}

/// What a field accepts, to pick a value it does not.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Str,
    Int,
    Float,
    Bool,
    Object,
    Stop,
    Messages,
    Prompt,
    Input,
}

/// A JSON value of a type `kind` refuses (never null: optional fields take null as unset).
fn wrong_value(kind: Kind) -> BoxedStrategy<Value> {
    let string = tricky_text(2).prop_map(Value::String);
    let int = prop_oneof![any::<i64>().prop_map(Value::from), Just(json!(u64::MAX))];
    let fraction = prop_oneof![Just(json!(0.5)), Just(json!(1e300)), Just(json!(-2.25))];
    let boolean = any::<bool>().prop_map(Value::Bool);
    let object = Just(json!({"a": 1}));
    let list = prop_oneof![Just(json!([])), Just(json!([1, "two"]))];
    match kind {
        Kind::Str => prop_oneof![int, fraction, boolean, object, list].boxed(),
        Kind::Int => prop_oneof![string, fraction, boolean, object, list].boxed(),
        Kind::Float => prop_oneof![string, boolean, object, list].boxed(),
        Kind::Bool => prop_oneof![string, int, fraction, object, list].boxed(),
        Kind::Object => prop_oneof![string, int, boolean, list, Just(json!({"include_usage": "yes"}))].boxed(),
        Kind::Stop | Kind::Input => prop_oneof![int, boolean, object, Just(json!([1])), Just(json!([["a"]]))].boxed(),
        Kind::Messages => prop_oneof![
            string,
            int,
            boolean,
            object,
            Just(json!([1])),
            Just(json!([{"role": 5, "content": "hi"}])),
            Just(json!([{"content": "no role"}])),
            Just(json!([{"role": "user", "content": 7}])),
            Just(json!([{"role": "user", "content": [{"text": "no type"}]}])),
        ]
        .boxed(),
        Kind::Prompt => {
            prop_oneof![int, boolean, object, Just(json!([1, "two"])), Just(json!([-1])), Just(json!([[1]]))].boxed()
        }
    }
}

/// A field set to a value of the right type that the server must refuse.
fn out_of_range(route: Route) -> BoxedStrategy<(&'static str, Value)> {
    let max_tokens = prop_oneof![
        (i64::MIN..=0).prop_map(Value::from),
        ((MAX_TOKENS + 1)..=i64::MAX).prop_map(Value::from),
        Just(json!(0)),
        Just(json!(MAX_TOKENS + 1)),
    ];
    let sampling = prop_oneof![
        max_tokens.clone().prop_map(|v| ("max_tokens", v)),
        max_tokens.prop_map(|v| ("max_completion_tokens", v)),
        prop_oneof![2.001f64..1e30, -1e30..-0.001f64].prop_map(|t| ("temperature", json!(t))),
        prop_oneof![-1e30..=0.0f64, 1.001f64..1e30].prop_map(|p| ("top_p", json!(p))),
        (i64::MIN..0).prop_map(|k| ("top_k", json!(k))),
        any::<i64>().prop_filter("not 1", |&n| n != 1).prop_map(|n| ("n", json!(n))),
        prop_oneof![2.001f64..1e30, -1e30..-2.001f64].prop_map(|p| ("frequency_penalty", json!(p))),
        prop_oneof![2.001f64..1e30, -1e30..-2.001f64].prop_map(|p| ("presence_penalty", json!(p))),
        prop_oneof![-1e30..=0.0f64, 10.001f64..1e30].prop_map(|p| ("repetition_penalty", json!(p))),
        prop::collection::vec(tricky_text(2), 5..9).prop_map(|s| ("stop", json!(s))),
    ];
    match route {
        Route::Chat => prop_oneof![
            3 => sampling,
            1 => prop_oneof![(i64::MIN..0), (21..=i64::MAX)].prop_map(|n| ("top_logprobs", json!(n))),
            1 => (1..=20i64).prop_map(|n| ("top_logprobs", json!(n))),
            1 => Just(("messages", json!([]))),
            1 => prop_oneof![Just("tool".to_owned()), Just("function".to_owned()), "[A-Z][a-z]{0,6}"]
                .prop_map(|role| ("messages", json!([{"role": role, "content": "hi"}]))),
            1 => Just(("messages", json!([{"role": "user", "content": [{"type": "image_url", "text": "x"}]}]))),
            1 => Just(("messages", json!([{"role": "user", "content": "word ".repeat(400)}]))),
        ]
        .boxed(),
        Route::Completion => prop_oneof![
            3 => sampling,
            1 => prop_oneof![(i64::MIN..0), (6..=i64::MAX)].prop_map(|n| ("logprobs", json!(n))),
            1 => Just(("echo", json!(true))),
            1 => prop::collection::vec(tricky_text(2), 2..4).prop_map(|p| ("prompt", json!(p))),
            1 => (VOCAB..=u64::from(u32::MAX)).prop_map(|id| ("prompt", json!([1, id]))),
            1 => Just(("prompt", json!([]))),
            1 => Just(("prompt", json!(""))),
            1 => Just(("prompt", json!("word ".repeat(400)))),
        ]
        .boxed(),
        Route::Embedding => prop_oneof![
            any::<i64>().prop_filter("not 384", |&d| d != 384).prop_map(|d| ("dimensions", json!(d))),
            "[a-z0-9]{0,8}"
                .prop_filter("not a format", |f| f != "float" && f != "base64")
                .prop_map(|f| ("encoding_format", json!(f))),
            Just(("input", json!([]))),
        ]
        .boxed(),
    }
}

/// A broken request, and whether it may still be valid.
#[derive(Clone, Debug)]
enum Attack {
    /// A valid body cut short.
    Truncated(Route, String, prop::sample::Index),
    /// Invalid UTF-8 inside a string value.
    InvalidUtf8(Route, Vec<u8>),
    /// A `\u` escape of half a surrogate pair.
    LoneSurrogate(Route, &'static str),
    /// One field with a value of the wrong type.
    WrongType(Route, &'static str, Value),
    /// One field with a value past its bounds.
    OutOfRange(Route, &'static str, Value),
    /// A model that is not served.
    UnknownModel(Route, String),
    /// A chat request to the embedding model and the other way round.
    WrongTask(Route),
    /// Arrays nested deeper than any parser should follow.
    Nested(Route, usize),
    /// A body over the limit.
    Oversized(Route),
    /// A body that is not a JSON object at all.
    NotAnObject(Route, Value),
    /// Any JSON, biased to the request fields (may be valid).
    Arbitrary(Route, Value),
    /// A valid body with bytes replaced (may stay valid).
    Edited(Route, String, Vec<(prop::sample::Index, u8)>),
    /// A valid body sent with another content type (may be accepted).
    ContentType(Route, Option<&'static str>),
}

fn route() -> impl Strategy<Value = Route> {
    prop_oneof![Just(Route::Chat), Just(Route::Completion), Just(Route::Embedding)]
}

fn attack() -> impl Strategy<Value = Attack> {
    let invalid_utf8 = prop::sample::select(vec![
        vec![0xFF],
        vec![0xFE],
        vec![0x80],
        vec![0xC0, 0xAF],
        vec![0xED, 0xA0, 0x80],
        vec![0xE2, 0x28, 0xA1],
        vec![0xF4, 0x90, 0x80, 0x80],
        vec![0xF0, 0x9F],
    ]);
    prop_oneof![
        1 => (route(), tricky_text(4), any::<prop::sample::Index>()).prop_map(|(r, t, i)| Attack::Truncated(r, t, i)),
        1 => (route(), invalid_utf8).prop_map(|(r, b)| Attack::InvalidUtf8(r, b)),
        1 => (route(), prop::sample::select(&["\\ud800", "\\udfff", "\\ud83d x", "\\udc00\\ud800"][..]))
            .prop_map(|(r, s)| Attack::LoneSurrogate(r, s)),
        2 => route()
            .prop_flat_map(|r| prop::sample::select(r.fields()).prop_map(move |f| (r, f)))
            .prop_flat_map(|(r, (field, kind))| wrong_value(kind).prop_map(move |v| Attack::WrongType(r, field, v))),
        2 => route().prop_flat_map(|r| out_of_range(r).prop_map(move |(f, v)| Attack::OutOfRange(r, f, v))),
        1 => (route(), tricky_text(3))
            .prop_filter("not served", |(_, m)| m != CHAT && m != EMBED)
            .prop_map(|(r, m)| Attack::UnknownModel(r, m)),
        1 => route().prop_map(Attack::WrongTask),
        1 => (route(), 129..6000usize).prop_map(|(r, d)| Attack::Nested(r, d)),
        1 => route().prop_map(Attack::Oversized),
        1 => (route(), prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            super::text::edge_number(),
            tricky_text(4).prop_map(Value::String),
            prop::collection::vec(json_value(), 0..4).prop_map(Value::Array),
        ])
            .prop_map(|(r, v)| Attack::NotAnObject(r, v)),
        1 => (route(), json_value()).prop_map(|(r, v)| Attack::Arbitrary(r, v)),
        1 => (route(), tricky_text(3), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4))
            .prop_map(|(r, t, e)| Attack::Edited(r, t, e)),
        1 => (route(), prop::sample::select(&[None, Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("application/json; charset=latin1"), Some("")][..]))
            .prop_map(|(r, c)| Attack::ContentType(r, c)),
    ]
}

/// The body and content type an attack sends, and whether the server may answer 200.
fn request(attack: &Attack) -> (Route, Vec<u8>, Option<&'static str>, bool) {
    const JSON: Option<&str> = Some("application/json");
    let to_vec = |v: &Value| serde_json::to_vec(v).expect("serialize");
    match attack {
        Attack::Truncated(r, text, cut) => {
            let body = to_vec(&r.valid(text));
            // Every strict prefix of a JSON object is broken JSON.
            (*r, body[..cut.index(body.len())].to_vec(), JSON, false)
        }
        Attack::InvalidUtf8(r, bytes) => {
            let body = to_vec(&r.valid("MARK"));
            let at = body.windows(4).position(|w| w == b"MARK").expect("marker");
            let mut broken = body[..at].to_vec();
            broken.extend_from_slice(bytes);
            broken.extend_from_slice(&body[at + 4..]);
            (*r, broken, JSON, false)
        }
        Attack::LoneSurrogate(r, escape) => {
            let body = String::from_utf8(to_vec(&r.valid("MARK"))).expect("utf-8").replace("MARK", escape);
            (*r, body.into_bytes(), JSON, false)
        }
        Attack::WrongType(r, field, value) | Attack::OutOfRange(r, field, value) => {
            let mut body = r.valid("Hi");
            body[*field] = value.clone();
            if *field == "top_logprobs" && value.as_i64().is_some_and(|n| (1..=20).contains(&n)) {
                // In range, but only with logprobs: true.
                body["logprobs"] = json!(false);
            }
            (*r, to_vec(&body), JSON, false)
        }
        Attack::UnknownModel(r, model) => {
            let mut body = r.valid("Hi");
            body["model"] = json!(model);
            (*r, to_vec(&body), JSON, false)
        }
        Attack::WrongTask(r) => {
            let mut body = r.valid("Hi");
            body["model"] = json!(if *r == Route::Embedding { CHAT } else { EMBED });
            (*r, to_vec(&body), JSON, false)
        }
        Attack::Nested(r, depth) => {
            let nested = format!("{}{}", "[".repeat(*depth), "]".repeat(*depth));
            let field = match r {
                Route::Chat => "messages",
                Route::Completion => "prompt",
                Route::Embedding => "input",
            };
            let model = if *r == Route::Embedding { EMBED } else { CHAT };
            (*r, format!("{{\"model\": \"{model}\", \"{field}\": {nested}}}").into_bytes(), JSON, false)
        }
        Attack::Oversized(r) => (*r, to_vec(&r.valid(&"a".repeat(BODY_LIMIT))), JSON, false),
        Attack::NotAnObject(r, value) => (*r, to_vec(value), JSON, false),
        Attack::Arbitrary(r, value) => (*r, to_vec(value), JSON, true),
        Attack::Edited(r, text, edits) => {
            let mut body = to_vec(&r.valid(text));
            for (at, byte) in edits {
                let i = at.index(body.len());
                body[i] = *byte;
            }
            (*r, body, JSON, true)
        }
        Attack::ContentType(r, content_type) => (*r, to_vec(&r.valid("Hi")), *content_type, true),
    }
}

/// A refusal: a 4xx whose JSON body is `{"error": {"message", "type", "param", "code"}}`.
fn check_error(reply: &Reply) -> Result<(), TestCaseError> {
    prop_assert!((400..500).contains(&reply.status), "expected a 4xx, got {}: {}", reply.status, reply.text());
    prop_assert!(reply.content_type.starts_with("application/json"), "error content type {:?}", reply.content_type);
    let body = reply.json().ok_or_else(|| TestCaseError::fail(format!("error body is not JSON: {}", reply.text())))?;
    let error = &body["error"];
    prop_assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "no error.message: {}", body);
    prop_assert!(error["type"].is_string(), "no error.type: {}", body);
    prop_assert!(error.get("param").is_some() && error.get("code").is_some(), "no error.param/code: {}", body);
    Ok(())
}

/// An answer: the route's OpenAI response shape, whole or streamed.
fn check_answer(route: Route, reply: &Reply) -> Result<(), TestCaseError> {
    if reply.content_type.starts_with("text/event-stream") {
        prop_assert!(route != Route::Embedding);
        prop_assert!(reply.text().trim_end().ends_with("data: [DONE]"), "stream without [DONE]: {}", reply.text());
        return Ok(());
    }
    let body = reply.json().ok_or_else(|| TestCaseError::fail(format!("answer is not JSON: {}", reply.text())))?;
    match route {
        Route::Chat => {
            prop_assert_eq!(&body["object"], "chat.completion");
            prop_assert!(body["choices"][0]["message"]["content"].is_string(), "{}", body);
        }
        Route::Completion => {
            prop_assert_eq!(&body["object"], "text_completion");
            prop_assert!(body["choices"][0]["text"].is_string(), "{}", body);
        }
        Route::Embedding => {
            prop_assert_eq!(&body["object"], "list");
            prop_assert!(body["data"].as_array().is_some_and(|d| !d.is_empty()), "{}", body);
        }
    }
    Ok(())
}

fn check_healthy(h: &Harness) -> Result<(), TestCaseError> {
    let health = h.send("GET", "/healthz", None, Vec::new());
    prop_assert_eq!(health.status, 200, "/healthz: {}", health.text());
    prop_assert_eq!(health.text(), "ok");
    Ok(())
}

#[test]
fn broken_requests_get_openai_errors_and_the_server_stays_healthy() {
    let h = harness();
    let mut runner = TestRunner::new(crate::config(CASES));
    let outcome = runner.run(&attack(), |attack| {
        let (route, body, content_type, may_succeed) = request(&attack);
        let reply = h.send("POST", route.path(), content_type, body);
        prop_assert!(reply.status < 500, "{:?} got {}: {}", attack, reply.status, reply.text());
        if may_succeed && reply.status == 200 {
            check_answer(route, &reply)?;
        } else {
            check_error(&reply)?;
        }
        if matches!(attack, Attack::Oversized(_)) {
            prop_assert_eq!(reply.status, 413);
        }
        if matches!(attack, Attack::UnknownModel(..)) {
            prop_assert_eq!(reply.status, 404);
        }
        check_healthy(h)
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    // After all of that, the model still answers.
    for route in [Route::Chat, Route::Completion, Route::Embedding] {
        let reply =
            h.send("POST", route.path(), Some("application/json"), serde_json::to_vec(&route.valid("Hi")).unwrap());
        assert_eq!(reply.status, 200, "{route:?} after the broken requests: {}", reply.text());
        check_answer(route, &reply).unwrap();
    }
}
