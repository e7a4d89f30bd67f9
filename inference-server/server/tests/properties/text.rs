//! Text and JSON generators shared by the properties: strings full of what breaks parsers,
//! templates and tokenizers.

use proptest::prelude::*;
use serde_json::Value;

/// Pieces that mean something to a chat template, a tokenizer or a splitter.
pub const TRICKY: &[&str] = &[
    // Jinja syntax, which must stay text when it is content.
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "#}",
    "{{ messages }}",
    "{{ 7*7 }}",
    "{% for m in messages %}",
    "{% endfor %}",
    "{{ raise_exception('boom') }}",
    "{% if true %}",
    "{{ bos_token }}",
    // Turn markers and special tokens of every built-in format.
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<bos>",
    "<eos>",
    "<pad>",
    "<unk>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "[INST]",
    "[/INST]",
    "<s>",
    "</s>",
    "<0x41>",
    "<0xFF>",
    "user",
    "assistant",
    "system",
    "model",
    // Whitespace and structure.
    " ",
    "  ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    "\u{a0}",
    "\u{3000}",
    "\u{2028}",
    "\u{85}",
    "# ",
    "## ",
    "```",
    "- ",
    ". ",
    "! ",
    "? ",
    "。",
    "\"",
    "'",
    "\\",
    // Unicode that tokenizers treat specially.
    "\u{0}",
    "\u{1}",
    "\u{7f}",
    "é",
    "e\u{301}",
    "ḿ̈",
    "東京",
    "日本語",
    "🚀",
    "\u{1F9D1}\u{200D}\u{1F680}",
    "\u{200B}",
    "\u{FEFF}",
    "\u{2581}",
    "\u{FFFD}",
    "\u{10FFFF}",
    "ｆｕｌｌ",
    "Ωmega",
];

/// One piece of tricky text.
pub fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(TRICKY).prop_map(str::to_owned),
        3 => "[a-zA-Z]{1,10}",
        1 => "[0-9]{1,6}",
        1 => any::<char>().prop_map(String::from),
        1 => ".{0,8}",
    ]
}

/// Text made of up to `max_pieces` tricky pieces (possibly empty).
pub fn tricky_text(max_pieces: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..=max_pieces).prop_map(|pieces| pieces.concat())
}

/// Object keys: mostly the fields the request types know, sometimes anything.
const KEYS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "prompt",
    "input",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "include_usage",
    "logprobs",
    "top_logprobs",
    "echo",
    "encoding_format",
    "dimensions",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "ignore_eos",
    "user",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(KEYS).prop_map(str::to_owned),
        1 => ".{0,6}",
    ]
}

/// Numbers at the edges: zero, ±1, the integer extremes, huge and tiny floats.
pub fn edge_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::from(0)),
        Just(Value::from(-1)),
        Just(Value::from(1)),
        Just(Value::from(i64::MIN)),
        Just(Value::from(i64::MAX)),
        Just(Value::from(u64::MAX)),
        Just(Value::from(u64::from(u32::MAX) + 1)),
        Just(Value::from(1e308)),
        Just(Value::from(-1e308)),
        Just(Value::from(1e-308)),
        Just(Value::from(0.5)),
        Just(Value::from(1.0)),
        Just(Value::from(-0.0)),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
    ]
}

/// Any JSON value, nested a few levels, with keys biased towards the request fields.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        edge_number(),
        tricky_text(4).prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6).prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}
