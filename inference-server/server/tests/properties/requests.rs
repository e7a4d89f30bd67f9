//! The OpenAI request types: anything a client sends parses or is refused with a 400 naming
//! what is wrong, never a panic; well-formed requests keep every field that matters.

use hearth_openai::ApiError;
use hearth_openai::wire::{
    ChatCompletionRequest, CompletionRequest, EmbeddingRequest, MessageContent, OneOrMany, Prompt,
};
use hearth_server::api::parse_body;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::text::{json_value, tricky_text};

/// Parses a body as all three request types (what the handlers do) and checks that a refusal
/// is a 400 with a message. Returns which types accepted it.
fn parse_all(body: &[u8]) -> [bool; 3] {
    fn check<T: serde::de::DeserializeOwned>(body: &[u8]) -> bool {
        match parse_body::<T>(body) {
            Ok(_) => true,
            Err(e) => {
                assert!(matches!(e, ApiError::InvalidRequest { .. }), "{e:?}");
                assert_eq!(e.classify().0.as_u16(), 400, "{e}");
                assert!(!e.to_string().is_empty(), "a refusal without a message");
                false
            }
        }
    }
    [check::<ChatCompletionRequest>(body), check::<CompletionRequest>(body), check::<EmbeddingRequest>(body)]
}

/// A request-shaped object: the known fields with arbitrary values, so the typed parsers get
/// past the first field.
fn request_like() -> impl Strategy<Value = Value> {
    let message =
        prop::collection::vec((prop::sample::select(&["role", "content", "type", "text"][..]), json_value()), 0..4)
            .prop_map(|fields| Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()));
    (
        prop_oneof![Just(json!("smollm2")), json_value()],
        prop_oneof![prop::collection::vec(message, 0..4).prop_map(Value::Array), json_value()],
        prop::collection::vec((super::text::piece(), json_value()), 0..6),
    )
        .prop_map(|(model, messages, extra)| {
            let mut object = Map::new();
            object.insert("model".into(), model);
            object.insert("messages".into(), messages.clone());
            object.insert("prompt".into(), messages.clone());
            object.insert("input".into(), messages);
            object.extend(extra);
            Value::Object(object)
        })
}

/// One edit of a byte string.
#[derive(Clone, Debug)]
enum Edit {
    Truncate(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, Vec<u8>),
    Delete(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    let invalid_utf8 = prop::sample::select(vec![
        vec![0xFF],
        vec![0xFE],
        vec![0x80],
        vec![0xC0, 0xAF],
        vec![0xED, 0xA0, 0x80],
        vec![0xE2, 0x28],
        vec![0xF4, 0x90, 0x80, 0x80],
    ]);
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Edit::Truncate),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<prop::sample::Index>(), invalid_utf8).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<prop::sample::Index>(), prop::sample::select(&[b'{', b'}', b'[', b']', b'"', b',', b':', b'\\'][..]))
            .prop_map(|(i, b)| Edit::Insert(i, vec![b])),
        any::<prop::sample::Index>().prop_map(Edit::Delete),
    ]
}

fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    if bytes.is_empty() {
        return;
    }
    match edit {
        Edit::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Edit::Flip(i, b) => {
            let at = i.index(bytes.len());
            bytes[at] = *b;
        }
        Edit::Insert(i, b) => {
            let at = i.index(bytes.len() + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Edit::Delete(i) => {
            bytes.remove(i.index(bytes.len()));
        }
    }
}

/// A chat request as a client would write it, with what it should parse to.
#[derive(Clone, Debug)]
struct ChatCase {
    model: String,
    messages: Vec<(String, Option<Content>)>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    n: Option<i64>,
    stop: Option<Stop>,
    seed: Option<u64>,
    stream: Option<bool>,
    include_usage: Option<bool>,
    logprobs: Option<bool>,
    top_logprobs: Option<i64>,
    unknown: Vec<(String, Value)>,
}

#[derive(Clone, Debug)]
enum Content {
    Text(String),
    Parts(Vec<(String, Option<String>)>),
}

#[derive(Clone, Debug)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        tricky_text(6).prop_map(Content::Text),
        prop::collection::vec(
            (
                prop_oneof![Just("text".to_owned()), Just("image_url".to_owned()), tricky_text(1)],
                prop::option::of(tricky_text(4))
            ),
            0..4
        )
        .prop_map(Content::Parts),
    ]
}

fn stop() -> impl Strategy<Value = Stop> {
    prop_oneof![tricky_text(2).prop_map(Stop::One), prop::collection::vec(tricky_text(2), 0..6).prop_map(Stop::Many)]
}

fn finite_f32() -> impl Strategy<Value = f32> {
    prop::num::f32::NORMAL | prop::num::f32::SUBNORMAL | prop::num::f32::ZERO
}

/// Field names no request type knows (they must be ignored, as OpenAI's SDKs send extras).
fn unknown_field() -> impl Strategy<Value = (String, Value)> {
    ("x_[a-z_]{1,12}", json_value())
}

fn chat_case() -> impl Strategy<Value = ChatCase> {
    (
        (
            tricky_text(3),
            prop::collection::vec(
                (
                    prop_oneof![Just("user".to_owned()), Just("assistant".to_owned()), tricky_text(1)],
                    prop::option::of(content()),
                ),
                0..5,
            ),
            prop::option::of(any::<i64>()),
            prop::option::of(any::<i64>()),
            prop::option::of(finite_f32()),
            prop::option::of(finite_f32()),
            prop::option::of(any::<i64>()),
            prop::option::of(any::<i64>()),
        ),
        (
            prop::option::of(stop()),
            prop::option::of(any::<u64>()),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<i64>()),
            prop::collection::vec(unknown_field(), 0..4),
        ),
    )
        .prop_map(
            |(
                (model, messages, max_tokens, max_completion_tokens, temperature, top_p, top_k, n),
                (stop, seed, stream, include_usage, logprobs, top_logprobs, unknown),
            )| ChatCase {
                model,
                messages,
                max_tokens,
                max_completion_tokens,
                temperature,
                top_p,
                top_k,
                n,
                stop,
                seed,
                stream,
                include_usage,
                logprobs,
                top_logprobs,
                unknown,
            },
        )
}

fn content_json(content: &Content) -> Value {
    match content {
        Content::Text(t) => json!(t),
        Content::Parts(parts) => Value::Array(
            parts
                .iter()
                .map(|(kind, text)| match text {
                    Some(t) => json!({"type": kind, "text": t}),
                    None => json!({"type": kind}),
                })
                .collect(),
        ),
    }
}

fn stop_json(stop: &Stop) -> Value {
    match stop {
        Stop::One(s) => json!(s),
        Stop::Many(v) => json!(v),
    }
}

impl ChatCase {
    fn to_json(&self) -> Value {
        let mut o = Map::new();
        for (k, v) in &self.unknown {
            o.insert(k.clone(), v.clone());
        }
        o.insert("model".into(), json!(self.model));
        o.insert(
            "messages".into(),
            Value::Array(
                self.messages
                    .iter()
                    .map(|(role, content)| match content {
                        Some(c) => json!({"role": role, "content": content_json(c)}),
                        None => json!({"role": role}),
                    })
                    .collect(),
            ),
        );
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                o.insert(k.into(), v);
            }
        };
        put("max_tokens", self.max_tokens.map(Value::from));
        put("max_completion_tokens", self.max_completion_tokens.map(Value::from));
        put("temperature", self.temperature.map(Value::from));
        put("top_p", self.top_p.map(Value::from));
        put("top_k", self.top_k.map(Value::from));
        put("n", self.n.map(Value::from));
        put("stop", self.stop.as_ref().map(stop_json));
        put("seed", self.seed.map(Value::from));
        put("stream", self.stream.map(Value::from));
        put("stream_options", self.include_usage.map(|u| json!({"include_usage": u})));
        put("logprobs", self.logprobs.map(Value::from));
        put("top_logprobs", self.top_logprobs.map(Value::from));
        Value::Object(o)
    }
}

fn assert_content(parsed: Option<&MessageContent>, expected: Option<&Content>) {
    match (parsed, expected) {
        (None, None) => {}
        (Some(MessageContent::Text(t)), Some(Content::Text(e))) => assert_eq!(t, e),
        (Some(MessageContent::Parts(parts)), Some(Content::Parts(e))) => {
            let got: Vec<(String, Option<String>)> = parts.iter().map(|p| (p.kind.clone(), p.text.clone())).collect();
            assert_eq!(&got, e);
        }
        (got, want) => panic!("content parsed as {got:?}, sent {want:?}"),
    }
}

fn assert_stop(parsed: Option<&OneOrMany>, expected: Option<&Stop>) {
    match (parsed, expected) {
        (None, None) => {}
        (Some(OneOrMany::One(s)), Some(Stop::One(e))) => assert_eq!(s, e),
        (Some(OneOrMany::Many(v)), Some(Stop::Many(e))) => assert_eq!(v, e),
        (got, want) => panic!("stop parsed as {got:?}, sent {want:?}"),
    }
}

proptest! {
    #![proptest_config(crate::config(crate::CASES))]

    /// Arbitrary JSON documents: parsed or refused with a 400, as each request type.
    #[test]
    fn arbitrary_json_is_parsed_or_refused_with_a_400(value in prop_oneof![json_value(), request_like()]) {
        let body = serde_json::to_vec(&value).unwrap();
        parse_all(&body);
        // The typed serde paths the cascade and agents use agree with the handlers' parser.
        prop_assert_eq!(serde_json::from_value::<ChatCompletionRequest>(value.clone()).is_ok(), parse_body::<ChatCompletionRequest>(&body).is_ok());
        prop_assert_eq!(serde_json::from_value::<CompletionRequest>(value.clone()).is_ok(), parse_body::<CompletionRequest>(&body).is_ok());
        prop_assert_eq!(serde_json::from_value::<EmbeddingRequest>(value).is_ok(), parse_body::<EmbeddingRequest>(&body).is_ok());
    }

    /// Arbitrary bytes, and valid requests with bytes broken (truncated, flipped, invalid
    /// UTF-8 inserted): refused with a 400, and only JSON is ever accepted.
    #[test]
    fn arbitrary_bytes_are_parsed_or_refused_with_a_400(
        raw in prop::collection::vec(any::<u8>(), 0..256),
        case in chat_case(),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        for body in [raw, {
            let mut bytes = serde_json::to_vec(&case.to_json()).unwrap();
            edits.iter().for_each(|e| apply(&mut bytes, e));
            bytes
        }] {
            let accepted = parse_all(&body);
            if accepted.iter().any(|&a| a) {
                prop_assert!(serde_json::from_slice::<Value>(&body).is_ok(), "accepted a body that is not JSON: {:?}", String::from_utf8_lossy(&body));
            }
        }
    }

    /// A well-formed chat request keeps every field, whatever the text holds and whatever
    /// unknown fields come with it.
    #[test]
    fn chat_requests_round_trip_the_fields_that_matter(case in chat_case()) {
        let body = serde_json::to_vec(&case.to_json()).unwrap();
        let parsed: ChatCompletionRequest = parse_body(&body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
        prop_assert_eq!(&parsed.model, &case.model);
        prop_assert_eq!(parsed.messages.len(), case.messages.len());
        for (got, (role, content)) in parsed.messages.iter().zip(&case.messages) {
            prop_assert_eq!(&got.role, role);
            assert_content(got.content.as_ref(), content.as_ref());
        }
        let s = &parsed.sampling;
        prop_assert_eq!(s.max_tokens, case.max_tokens);
        prop_assert_eq!(s.max_completion_tokens, case.max_completion_tokens);
        prop_assert_eq!(s.temperature, case.temperature);
        prop_assert_eq!(s.top_p, case.top_p);
        prop_assert_eq!(s.top_k, case.top_k);
        prop_assert_eq!(s.n, case.n);
        assert_stop(s.stop.as_ref(), case.stop.as_ref());
        prop_assert_eq!(s.seed, case.seed);
        prop_assert_eq!(s.stream, case.stream.unwrap_or(false));
        prop_assert_eq!(s.include_usage(), case.include_usage.unwrap_or(false));
        prop_assert_eq!(parsed.logprobs, case.logprobs.unwrap_or(false));
        prop_assert_eq!(parsed.top_logprobs, case.top_logprobs);
    }

    /// A well-formed text completion keeps its prompt (text, one-text list or token ids).
    #[test]
    fn completion_requests_round_trip_the_prompt(
        model in tricky_text(2),
        prompt in prop_oneof![
            tricky_text(6).prop_map(|t| json!(t)),
            prop::collection::vec(tricky_text(3), 0..3).prop_map(|v| json!(v)),
            prop::collection::vec(any::<u32>(), 1..16).prop_map(|v| json!(v)),
        ],
        logprobs in prop::option::of(any::<i64>()),
        echo in prop::option::of(any::<bool>()),
        max_tokens in prop::option::of(any::<i64>()),
        unknown in prop::collection::vec(unknown_field(), 0..3),
    ) {
        let mut body: Map<String, Value> = unknown.into_iter().collect();
        body.insert("model".into(), json!(model));
        body.insert("prompt".into(), prompt.clone());
        if let Some(l) = logprobs { body.insert("logprobs".into(), json!(l)); }
        if let Some(e) = echo { body.insert("echo".into(), json!(e)); }
        if let Some(m) = max_tokens { body.insert("max_tokens".into(), json!(m)); }
        let parsed: CompletionRequest = parse_body(&serde_json::to_vec(&body).unwrap()).unwrap();
        prop_assert_eq!(&parsed.model, &model);
        let round_tripped = match parsed.prompt {
            Prompt::Text(t) => json!(t),
            Prompt::Texts(v) => json!(v),
            Prompt::Tokens(v) => json!(v),
        };
        prop_assert_eq!(round_tripped, prompt);
        prop_assert_eq!(parsed.logprobs, logprobs);
        prop_assert_eq!(parsed.echo, echo.unwrap_or(false));
        prop_assert_eq!(parsed.sampling.max_tokens, max_tokens);
    }

    /// A well-formed embedding request keeps its input, format and dimensions.
    #[test]
    fn embedding_requests_round_trip_the_input(
        model in tricky_text(2),
        input in prop_oneof![
            tricky_text(6).prop_map(|t| json!(t)),
            prop::collection::vec(tricky_text(3), 0..4).prop_map(|v| json!(v)),
        ],
        encoding_format in prop::option::of(prop_oneof![Just("float".to_owned()), Just("base64".to_owned()), tricky_text(1)]),
        dimensions in prop::option::of(any::<i64>()),
        unknown in prop::collection::vec(unknown_field(), 0..3),
    ) {
        let mut body: Map<String, Value> = unknown.into_iter().collect();
        body.insert("model".into(), json!(model));
        body.insert("input".into(), input.clone());
        if let Some(f) = &encoding_format { body.insert("encoding_format".into(), json!(f)); }
        if let Some(d) = dimensions { body.insert("dimensions".into(), json!(d)); }
        let parsed: EmbeddingRequest = parse_body(&serde_json::to_vec(&body).unwrap()).unwrap();
        prop_assert_eq!(&parsed.model, &model);
        let round_tripped = match parsed.input {
            OneOrMany::One(t) => json!(t),
            OneOrMany::Many(v) => json!(v),
        };
        prop_assert_eq!(round_tripped, input);
        prop_assert_eq!(parsed.encoding_format, encoding_format);
        prop_assert_eq!(parsed.dimensions, dimensions);
    }
}
