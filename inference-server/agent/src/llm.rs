//! The agent's model: any OpenAI-compatible chat endpoint (a Model's server, a Cascade's
//! router, this process itself in local mode, or another Agent when delegating).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Header carrying how deep in a chain of delegations a request is; agents refuse to go
/// deeper than [`MAX_DELEGATION_DEPTH`], so two agents that delegate to each other cannot
/// loop forever.
pub const DEPTH_HEADER: &str = "x-hearth-agent-depth";
/// Deepest chain of delegations.
pub const MAX_DELEGATION_DEPTH: u32 = 4;

/// One chat message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// system, user or assistant.
    pub role: String,
    /// Its text.
    pub content: String,
}

impl Message {
    /// A message of `role`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self { role: role.to_owned(), content: content.into() }
    }
}

/// A model's answer and what it cost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Completion {
    /// The text.
    pub text: String,
    /// Prompt tokens the endpoint counted.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
    /// Which cascade stage answered, when the endpoint is a cascade.
    pub stage: Option<String>,
}

/// Why a model call failed.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// Nothing came back in time.
    #[error("`{model}` did not answer within {seconds:.1} s")]
    Timeout {
        /// The model.
        model: String,
        /// The limit.
        seconds: f64,
    },
    /// The endpoint could not be reached or answered with an error.
    #[error("`{model}` at {endpoint}: {message}")]
    Failed {
        /// The model.
        model: String,
        /// Where.
        endpoint: String,
        /// What happened.
        message: String,
    },
}

/// A client of one OpenAI-compatible chat endpoint.
#[derive(Clone)]
pub struct ChatClient {
    http: reqwest::Client,
    endpoint: String,
    model: String,
    api_key: Option<String>,
}

impl ChatClient {
    /// A client sending `model` to `endpoint` (a base URL ending in `/v1`), with a bearer key
    /// when one is given.
    pub fn new(endpoint: &str, model: &str, api_key: Option<String>) -> Self {
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build().unwrap_or_default();
        Self { http, endpoint: endpoint.trim_end_matches('/').to_owned(), model: model.to_owned(), api_key }
    }

    /// The `model` this client sends.
    pub fn model(&self) -> &str {
        &self.model
    }

    fn failed(&self, message: impl Into<String>) -> LlmError {
        LlmError::Failed { model: self.model.clone(), endpoint: self.endpoint.clone(), message: message.into() }
    }

    /// Asks for one greedy completion of `messages`, at most `max_tokens` long, within
    /// `timeout`; `depth` is passed on in [`DEPTH_HEADER`].
    pub async fn complete(
        &self,
        messages: &[Message],
        max_tokens: u32,
        timeout: Duration,
        depth: u32,
    ) -> Result<Completion, LlmError> {
        self.complete_as(messages, max_tokens, timeout, depth, None).await
    }

    /// [`complete`](Self::complete) with an OpenAI `response_format` the answer must follow.
    pub async fn complete_as(
        &self,
        messages: &[Message],
        max_tokens: u32,
        timeout: Duration,
        depth: u32,
        response_format: Option<&Value>,
    ) -> Result<Completion, LlmError> {
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0.0,
        });
        if let Some(format) = response_format {
            body["response_format"] = format.clone();
        }
        let mut request =
            self.http.post(format!("{}/chat/completions", self.endpoint)).json(&body).header(DEPTH_HEADER, depth);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let call = async {
            let response = request.send().await.map_err(|e| self.failed(e.to_string()))?;
            let status = response.status();
            let stage =
                response.headers().get("x-hearth-cascade-stage").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let value: Value = response.json().await.map_err(|e| self.failed(format!("bad response: {e}")))?;
            if !status.is_success() {
                let message = value.pointer("/error/message").and_then(Value::as_str).unwrap_or("no message");
                return Err(self.failed(format!("HTTP {status}: {message}")));
            }
            let text = value
                .pointer("/choices/0/message/content")
                .and_then(Value::as_str)
                .ok_or_else(|| self.failed("the response has no choices[0].message.content"))?
                .to_owned();
            let count = |field: &str| value.pointer(&format!("/usage/{field}")).and_then(Value::as_u64).unwrap_or(0);
            Ok(Completion {
                text,
                prompt_tokens: count("prompt_tokens"),
                completion_tokens: count("completion_tokens"),
                stage,
            })
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| LlmError::Timeout { model: self.model.clone(), seconds: timeout.as_secs_f64() })?
    }
}
