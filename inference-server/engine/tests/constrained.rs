//! Constrained decoding through the engine, over a real vocabulary (SmolLM2's GGUF tokenizer,
//! 49,152 tokens) and a model that answers noise: random logits, sampled at temperature 1. Every
//! document it produces under a JSON schema must parse and validate, whatever the noise picked.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::Content;
use hearth_engine::constraint::{Grammar, GrammarCompiler, GrammarError};
use hearth_engine::{Engine, EngineConfig, EngineError, Event, FinishReason, GenerateRequest, SamplingParams};
use hearth_model::tokenizer::TextTokenizer;
use hearth_model::{BackendError, CausalLm};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Random logits of the vocabulary's size; the cache counts positions.
struct Noise {
    vocab: usize,
    rng: Mutex<StdRng>,
}

impl Noise {
    fn logits(&self) -> Vec<f32> {
        let mut rng = self.rng.lock().unwrap();
        (0..self.vocab).map(|_| rng.random_range(-4.0f32..4.0)).collect()
    }
}

impl CausalLm for Noise {
    type Cache = usize;
    fn new_cache(&self) -> usize {
        0
    }
    fn prefill(&self, tokens: &[u32], cache: &mut usize) -> Result<Vec<f32>, BackendError> {
        *cache += tokens.len();
        Ok(self.logits())
    }
    fn decode(&self, tokens: &[u32], caches: &mut [&mut usize]) -> Result<Vec<Vec<f32>>, BackendError> {
        Ok(caches
            .iter_mut()
            .zip(tokens)
            .map(|(cache, _)| {
                **cache += 1;
                self.logits()
            })
            .collect())
    }
}

fn tokenizer() -> Arc<TextTokenizer> {
    static TOKENIZER: OnceLock<Arc<TextTokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            let path = hearth_testkit::models::required("smollm2-135m-instruct-q4_1.gguf");
            let mut file = std::fs::File::open(&path).unwrap();
            let content = Content::read(&mut file).unwrap();
            Arc::new(TextTokenizer::from_gguf(&content).unwrap())
        })
        .clone()
}

fn compiler() -> &'static GrammarCompiler {
    static COMPILER: OnceLock<GrammarCompiler> = OnceLock::new();
    COMPILER.get_or_init(|| GrammarCompiler::new(tokenizer()).unwrap())
}

fn engine(seed: u64) -> Engine {
    let tokenizer = tokenizer();
    let model = Noise { vocab: tokenizer.vocab_size(), rng: Mutex::new(StdRng::seed_from_u64(seed)) };
    Engine::start(model, tokenizer, EngineConfig::for_context(4096)).unwrap()
}

fn request(grammar: Option<&Grammar>, seed: u64, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: tokenizer().encode("Answer in JSON:", false).unwrap(),
        max_tokens,
        sampling: SamplingParams { temperature: 1.0, seed: Some(seed), ..SamplingParams::default() },
        stop: Vec::new(),
        ignore_eos: false,
        deadline: Instant::now() + Duration::from_secs(120),
        constraint: grammar.map(|g| compiler().compile(g).unwrap()),
    }
}

/// The whole text and how the request ended.
fn run(engine: &Engine, request: GenerateRequest) -> (String, Result<FinishReason, EngineError>) {
    let mut events = engine.submit(request).unwrap();
    let mut text = String::new();
    while let Some(event) = events.blocking_recv() {
        match event {
            Event::Token(t) => text.push_str(&t.text),
            Event::Done(done) => {
                text.push_str(&done.tail);
                return (text, Ok(done.reason));
            }
            Event::Failed(e) => return (text, Err(e)),
        }
    }
    panic!("no final event");
}

/// A random schema of the shapes tools and structured outputs use: objects (some closed with
/// `additionalProperties: false`), enums, bounded strings, integers, numbers, booleans, arrays
/// and nesting. Sizes are bounded so that noise finishes a document within the token budget.
fn random_schema(rng: &mut StdRng, depth: usize) -> Value {
    let kind = if depth >= 2 { rng.random_range(0..5) } else { rng.random_range(0..7) };
    match kind {
        0 => json!({"type": "string", "maxLength": rng.random_range(0..12)}),
        1 => json!({"type": "integer", "minimum": -50, "maximum": rng.random_range(0..1000)}),
        2 => json!({"type": "boolean"}),
        3 => {
            let choices: Vec<Value> =
                (0..rng.random_range(1..5)).map(|i| json!(format!("choice-{i}-{}", rng.random_range(0..99)))).collect();
            json!({"enum": choices})
        }
        4 => json!({"type": "number", "minimum": 0, "maximum": 10}),
        5 => json!({"type": "array", "items": random_schema(rng, depth + 1), "maxItems": rng.random_range(0..4)}),
        _ => {
            let count = rng.random_range(1..5);
            let mut properties = serde_json::Map::new();
            let mut required = Vec::new();
            for i in 0..count {
                let name = format!("field_{i}");
                properties.insert(name.clone(), random_schema(rng, depth + 1));
                if rng.random_bool(0.7) {
                    required.push(json!(name));
                }
            }
            json!({
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": false,
            })
        }
    }
}

#[test]
fn random_schemas_at_temperature_one_always_give_valid_documents() {
    let engine = engine(7);
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut checked = 0;
    for case in 0..24 {
        let mut schema = random_schema(&mut rng, 0);
        if case % 2 == 0 {
            // Half the cases have an object at the top, as response_format and tool calls do.
            schema = json!({
                "type": "object",
                "properties": {"answer": schema, "note": {"type": "string", "maxLength": 8}},
                "required": ["answer"],
                "additionalProperties": false,
            });
        }
        let grammar = Grammar::JsonSchema(schema.clone());
        let (text, finish) = run(&engine, request(Some(&grammar), case, 600));
        assert_eq!(finish, Ok(FinishReason::Stop), "case {case}: {schema} ended early: {text:?}");
        let document: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("case {case}: {text:?} is not JSON: {e}"));
        eprintln!("case {case}: {text}");
        let validator = jsonschema::validator_for(&schema).unwrap();
        let errors: Vec<String> = validator.iter_errors(&document).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "case {case}: {text} does not satisfy {schema}: {errors:?}");
        checked += 1;
    }
    assert_eq!(checked, 24);
}

#[test]
fn noise_without_a_constraint_is_not_json() {
    // The control for the test above: the same noise, unconstrained, produces no JSON, so the
    // documents there come from the mask and not from the model.
    let engine = engine(7);
    let (text, finish) = run(&engine, request(None, 3, 40));
    assert_eq!(finish, Ok(FinishReason::Length), "{text:?}");
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text:?}");
}

#[test]
fn a_json_object_grammar_ends_the_output_when_the_object_closes() {
    let engine = engine(11);
    let grammar = Grammar::JsonSchema(json!({
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Lyon"]}, "rank": {"type": "integer", "minimum": 1, "maximum": 3}},
        "required": ["city", "rank"],
        "additionalProperties": false,
    }));
    for seed in 0..4 {
        let (text, finish) = run(&engine, request(Some(&grammar), seed, 200));
        assert_eq!(finish, Ok(FinishReason::Stop), "{text:?}");
        let value: Value = serde_json::from_str(&text).unwrap();
        assert!(["Paris", "Lyon"].contains(&value["city"].as_str().unwrap()), "{text}");
        assert!((1..=3).contains(&value["rank"].as_i64().unwrap()), "{text}");
        assert!(text.starts_with("{\"city\": ") || text.starts_with("{\"rank\": "), "Hearth's layout: {text}");
    }
}

#[test]
fn constrained_and_free_sequences_share_a_batch() {
    let engine = engine(5);
    let grammar = Grammar::JsonSchema(
        json!({"type": "object", "properties": {"n": {"type": "boolean"}}, "required": ["n"], "additionalProperties": false}),
    );
    let submitted: Vec<_> = (0..6)
        .map(|i| {
            let grammar = (i % 2 == 0).then_some(&grammar);
            (i, engine.submit(request(grammar, i, 30)).unwrap())
        })
        .collect();
    for (i, mut events) in submitted {
        let mut text = String::new();
        let finish = loop {
            match events.blocking_recv().expect("a final event") {
                Event::Token(t) => text.push_str(&t.text),
                Event::Done(done) => {
                    text.push_str(&done.tail);
                    break done.reason;
                }
                Event::Failed(e) => panic!("request {i} failed: {e}"),
            }
        };
        if i % 2 == 0 {
            assert_eq!(finish, FinishReason::Stop);
            let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert!(value["n"].is_boolean(), "{text}");
        } else {
            assert_eq!(finish, FinishReason::Length, "free noise runs to max_tokens: {text:?}");
        }
    }
}

#[test]
fn a_schema_llguidance_cannot_compile_is_refused_with_its_reason() {
    let bad = Grammar::JsonSchema(json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}));
    let error = compiler().compile(&bad).expect_err("a missing $ref is an error");
    let GrammarError::Invalid(message) = error else { panic!("{error:?}") };
    assert!(message.contains("missing"), "{message}");
}

#[test]
fn a_stop_sequence_inside_a_constrained_answer_ends_it_without_releasing_text_after_it() {
    let engine = engine(3);
    let grammar = Grammar::JsonSchema(json!({
        "type": "object",
        "properties": {"city": {"const": "Paris"}, "rank": {"const": 1}},
        "required": ["city", "rank"],
        "additionalProperties": false,
    }));
    let mut request = request(Some(&grammar), 1, 100);
    request.stop = vec!["\"Paris\"".into()];
    let (text, finish) = run(&engine, request);
    assert_eq!(finish, Ok(FinishReason::Stop));
    assert_eq!(text, "{\"city\": ", "the stop sequence and everything after it stay out");
}
