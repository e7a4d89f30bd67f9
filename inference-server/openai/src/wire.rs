//! OpenAI wire types: what clients send and what they get back, kept apart from the
//! handlers. Unknown request fields are ignored, as OpenAI's SDKs send fields servers may
//! not know.

use serde::{Deserialize, Serialize};

/// A string or a list of strings (`stop`, `input`, `prompt`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One string.
    One(String),
    /// Several strings.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The strings, in order.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// Message content: a string, or a list of typed parts (only text parts are supported).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Typed parts.
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Clone, Debug, Deserialize)]
pub struct ContentPart {
    /// Part type; only `text` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a text part.
    #[serde(default)]
    pub text: Option<String>,
}

/// One message of a chat request.
#[derive(Clone, Debug, Deserialize)]
pub struct RequestMessage {
    /// system, developer, user, assistant or tool.
    pub role: String,
    /// The content; may be null for assistant messages that only called tools.
    #[serde(default)]
    pub content: Option<MessageContent>,
}

impl RequestMessage {
    /// A message's content as text: the string, or its text parts joined. Parts of any other
    /// type are refused with a 400 naming `messages`.
    pub fn text(content: Option<MessageContent>) -> Result<String, crate::ApiError> {
        match content {
            None => Ok(String::new()),
            Some(MessageContent::Text(t)) => Ok(t),
            Some(MessageContent::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(crate::ApiError::invalid(
                                "messages",
                                format!("content parts of type `{kind}` are not supported; send text"),
                            ));
                        }
                    }
                }
                Ok(text)
            }
        }
    }
}

/// `stream_options`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with token usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by chat and text completions.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SamplingFields {
    /// Most tokens to generate.
    pub max_tokens: Option<i64>,
    /// Newer name of max_tokens for chat.
    pub max_completion_tokens: Option<i64>,
    /// 0–2; 0 is greedy.
    pub temperature: Option<f32>,
    /// (0, 1].
    pub top_p: Option<f32>,
    /// Extension: keep the k likeliest tokens.
    pub top_k: Option<i64>,
    /// Number of choices; only 1 is supported.
    pub n: Option<i64>,
    /// Stop sequences (up to 4).
    pub stop: Option<OneOrMany>,
    /// Seed for reproducible sampling.
    pub seed: Option<u64>,
    /// -2–2.
    pub frequency_penalty: Option<f32>,
    /// -2–2.
    pub presence_penalty: Option<f32>,
    /// Extension: llama.cpp-style repetition penalty (> 0; 1 = off).
    pub repetition_penalty: Option<f32>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Extension: keep generating past end-of-sequence (benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
    /// End user id (logged, unused).
    pub user: Option<String>,
    /// Free text (the default), any JSON object, or JSON valid against a schema; the JSON
    /// forms are enforced while decoding, so the answer always parses. Kept as JSON here and
    /// read by [`SamplingFields::response_format`], so that its errors name the field.
    #[serde(rename = "response_format")]
    pub response_format_json: Option<serde_json::Value>,
}

/// `response_format`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseFormat {
    /// Free text.
    Text,
    /// One JSON object, any shape.
    JsonObject,
    /// One JSON document valid against `json_schema.schema`.
    JsonSchema {
        /// The schema and its name.
        json_schema: JsonSchemaFormat,
    },
}

/// `response_format.json_schema`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct JsonSchemaFormat {
    /// The schema's name (a-z, A-Z, 0-9, `_` and `-`, at most 64 characters).
    pub name: String,
    /// What the answer is for.
    #[serde(default)]
    pub description: Option<String>,
    /// The JSON schema; any JSON when absent.
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
    /// OpenAI's strict mode. Hearth always decodes within the schema, strict or not.
    #[serde(default)]
    pub strict: Option<bool>,
}

impl SamplingFields {
    /// The `response_format` asked for (`None` when absent or null); a malformed one is a 400
    /// naming `response_format`.
    pub fn response_format(&self) -> Result<Option<ResponseFormat>, crate::ApiError> {
        match &self.response_format_json {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(value) => serde_json::from_value(value.clone())
                .map(Some)
                .map_err(|e| crate::ApiError::invalid("response_format", format!("response_format: {e}"))),
        }
    }

    /// Whether a stream should end with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }
}

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug, Deserialize)]
pub struct ChatCompletionRequest {
    /// Served model name.
    pub model: String,
    /// The conversation.
    pub messages: Vec<RequestMessage>,
    /// Return log-probabilities of the output tokens.
    #[serde(default)]
    pub logprobs: bool,
    /// 0–20 alternatives per position (needs logprobs).
    pub top_logprobs: Option<i64>,
    /// Sampling.
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Tool definitions: not implemented yet, refused (see [`ChatCompletionRequest::refuse_unsupported`]).
    #[serde(default)]
    pub tools: Option<serde_json::Value>,
    /// How tools may be called: refused unless `none`.
    #[serde(default)]
    pub tool_choice: Option<serde_json::Value>,
    /// The legacy form of `tools`: refused.
    #[serde(default)]
    pub functions: Option<serde_json::Value>,
    /// The legacy form of `tool_choice`: refused unless `none`.
    #[serde(default)]
    pub function_call: Option<serde_json::Value>,
    /// Per-token logit offsets: not implemented yet, refused when not empty.
    #[serde(default)]
    pub logit_bias: Option<serde_json::Value>,
}

impl ChatCompletionRequest {
    /// A 400 naming the first field Hearth would otherwise have to drop silently: tool calling
    /// and `logit_bias` are not implemented yet, and an answer that ignored them would look
    /// right and be wrong. Empty lists, empty maps, null and `"none"` pass.
    pub fn refuse_unsupported(&self) -> Result<(), crate::ApiError> {
        use serde_json::Value;
        let set = |value: &Option<Value>| match value {
            None | Some(Value::Null) => false,
            Some(Value::Array(items)) => !items.is_empty(),
            Some(Value::Object(map)) => !map.is_empty(),
            Some(Value::String(text)) => text != "none",
            Some(_) => true,
        };
        let refusals: [(&'static str, &Option<Value>, &str); 5] = [
            (
                "tools",
                &self.tools,
                "tool calling is not implemented yet; describe the tools in the prompt and use response_format json_schema for the call",
            ),
            ("tool_choice", &self.tool_choice, "tool calling is not implemented yet"),
            ("functions", &self.functions, "function calling is not implemented yet"),
            ("function_call", &self.function_call, "function calling is not implemented yet"),
            ("logit_bias", &self.logit_bias, "logit_bias is not implemented yet"),
        ];
        match refusals.into_iter().find(|(_, value, _)| set(value)) {
            Some((param, _, why)) => Err(crate::ApiError::invalid(param, format!("{param}: {why}"))),
            None => Ok(()),
        }
    }
}

/// `prompt` of a text completion: text or token ids.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// One text.
    Text(String),
    /// A list with one text.
    Texts(Vec<String>),
    /// Token ids.
    Tokens(Vec<u32>),
}

/// `POST /v1/completions`.
#[derive(Clone, Debug, Deserialize)]
pub struct CompletionRequest {
    /// Served model name.
    pub model: String,
    /// The prompt.
    pub prompt: Prompt,
    /// 0–5 alternatives per position, with the chosen token's log-probability.
    pub logprobs: Option<i64>,
    /// Echo the prompt (unsupported beyond false).
    #[serde(default)]
    pub echo: bool,
    /// Sampling.
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// `POST /v1/embeddings`.
#[derive(Clone, Debug, Deserialize)]
pub struct EmbeddingRequest {
    /// Served model name.
    pub model: String,
    /// A string or a list of strings.
    pub input: OneOrMany,
    /// `float` (default) or `base64` (little-endian f32).
    pub encoding_format: Option<String>,
    /// Must equal the model's dimension when given.
    pub dimensions: Option<i64>,
}

/// Token usage.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Both.
    pub total_tokens: usize,
}

/// One alternative token in a chat logprobs listing.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TopLogprob {
    /// Token text.
    pub token: String,
    /// Natural-log probability.
    pub logprob: f32,
    /// UTF-8 bytes of the token.
    pub bytes: Vec<u8>,
}

/// One output token in a chat logprobs listing.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContentLogprob {
    /// Token text.
    pub token: String,
    /// Natural-log probability.
    pub logprob: f32,
    /// UTF-8 bytes of the token.
    pub bytes: Vec<u8>,
    /// Likeliest alternatives.
    pub top_logprobs: Vec<TopLogprob>,
}

/// `choices[].logprobs` of a chat completion.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ChoiceLogprobs {
    /// One entry per output token.
    pub content: Vec<ContentLogprob>,
}

/// The assistant's message.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResponseMessage {
    /// Always `assistant`.
    pub role: String,
    /// The answer.
    pub content: String,
}

/// One choice of a chat completion.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChatChoice {
    /// Always 0.
    pub index: usize,
    /// The answer.
    pub message: ResponseMessage,
    /// Log-probabilities, when asked for.
    pub logprobs: Option<ChoiceLogprobs>,
    /// `stop` or `length`.
    pub finish_reason: String,
}

/// A chat completion.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChatCompletion {
    /// `chatcmpl-…`.
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// One choice.
    pub choices: Vec<ChatChoice>,
    /// Token usage.
    pub usage: Usage,
}

/// The delta of a streamed chat chunk.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Delta {
    /// `assistant` in the first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a streamed chat chunk.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChunkChoice {
    /// Always 0.
    pub index: usize,
    /// New content.
    pub delta: Delta,
    /// Log-probabilities of the tokens in this chunk.
    pub logprobs: Option<ChoiceLogprobs>,
    /// Set in the last content chunk.
    pub finish_reason: Option<String>,
}

/// A streamed chat chunk.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChatCompletionChunk {
    /// Same for every chunk of a response.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// Zero or one choice (zero in the usage chunk).
    pub choices: Vec<ChunkChoice>,
    /// Only in the last chunk, when include_usage was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// `choices[].logprobs` of a text completion (legacy shape).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CompletionLogprobs {
    /// Token texts.
    pub tokens: Vec<String>,
    /// Their log-probabilities.
    pub token_logprobs: Vec<f32>,
    /// Alternatives per position.
    pub top_logprobs: Vec<std::collections::BTreeMap<String, f32>>,
    /// Character offset of each token in the output.
    pub text_offset: Vec<usize>,
}

/// One choice of a text completion.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CompletionChoice {
    /// Generated text.
    pub text: String,
    /// Always 0.
    pub index: usize,
    /// Log-probabilities, when asked for.
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop` or `length` (null in non-final stream chunks).
    pub finish_reason: Option<String>,
}

/// A text completion (or one streamed chunk of it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Completion {
    /// `cmpl-…`.
    pub id: String,
    /// `text_completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model.
    pub model: String,
    /// One choice (none in a usage chunk).
    pub choices: Vec<CompletionChoice>,
    /// Token usage (final chunk only when streaming).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One embedding.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EmbeddingData {
    /// `embedding`.
    pub object: String,
    /// Floats, or a base64 string of little-endian f32.
    pub embedding: serde_json::Value,
    /// Position in the input.
    pub index: usize,
}

/// Embedding usage.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct EmbeddingUsage {
    /// Input tokens.
    pub prompt_tokens: usize,
    /// Same as prompt_tokens.
    pub total_tokens: usize,
}

/// `POST /v1/embeddings` response.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EmbeddingResponse {
    /// `list`.
    pub object: String,
    /// One per input.
    pub data: Vec<EmbeddingData>,
    /// The model.
    pub model: String,
    /// Token usage.
    pub usage: EmbeddingUsage,
}

/// One entry of `GET /v1/models`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelCard {
    /// Name to pass as `model`.
    pub id: String,
    /// `model`.
    pub object: String,
    /// Unix seconds when loaded.
    pub created: u64,
    /// `hearth`.
    pub owned_by: String,
    /// What Hearth knows of a served model (absent for cascades and agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hearth: Option<ModelDetails>,
}

/// `hearth` of a `GET /v1/models` entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelDetails {
    /// `chat` or `embedding`.
    pub task: String,
    /// The GGUF architecture of a chat model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// Longest context served, in tokens (chat models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<usize>,
    /// A base (pretrained only) model: it continues text; use it for completions, not chat.
    #[serde(default)]
    pub base_model: bool,
}

/// `GET /v1/models` response.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelList {
    /// `list`.
    pub object: String,
    /// Served models.
    pub data: Vec<ModelCard>,
}
