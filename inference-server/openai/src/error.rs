//! One error type for the API, mapped to HTTP status codes in one table, with OpenAI's
//! error body so SDKs raise the right exception. The server maps its engine's errors onto
//! these variants, so this table (and every crate that answers in OpenAI's shape: the Cascade
//! router, the agent runtime) does not depend on the engine.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field is missing, malformed or out of range.
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong and what was expected.
        message: String,
        /// The offending field, when one is to blame.
        param: Option<&'static str>,
    },
    /// The body is larger than the server accepts.
    #[error("the request body is larger than the {limit_bytes}-byte limit")]
    PayloadTooLarge {
        /// The limit.
        limit_bytes: usize,
    },
    /// No API key, or a wrong one.
    #[error("missing or invalid API key: send `Authorization: Bearer <key>`")]
    Unauthorized,
    /// A tenant is over one of its limits.
    #[error("tenant `{tenant}` is over its {limit} limit ({per_minute} per minute); retry in {retry_after_seconds} s")]
    RateLimited {
        /// The tenant.
        tenant: String,
        /// `requestsPerMinute` or `tokensPerMinute`, as the Model's `spec.tenants` names it.
        limit: &'static str,
        /// The limit.
        per_minute: u64,
        /// When the tenant may try again.
        retry_after_seconds: u64,
    },
    /// The model is not served here (or not to this caller).
    #[error("the model `{0}` does not exist; GET /v1/models lists the served models")]
    ModelNotFound(String),
    /// Something the path names does not exist (e.g. a run id).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the resource's state (e.g. approving a finished run).
    #[error("{0}")]
    Conflict(String),
    /// No knowledge base of this name is served here.
    #[error("the knowledge base `{0}` does not exist here")]
    KnowledgeBaseNotFound(String),
    /// The model exists but cannot do this (e.g. chat on an embedding model).
    #[error("the model `{model}` serves {serves}, not {asked}")]
    WrongTask {
        /// The model.
        model: String,
        /// What it serves.
        serves: &'static str,
        /// What was asked.
        asked: &'static str,
    },
    /// The model's engine refused or failed the request, in the engine's own words.
    #[error("{message}")]
    Engine {
        /// What kind of refusal or failure (decides the status code).
        failure: EngineFailure,
        /// The engine's message.
        message: String,
    },
    /// The server is still loading its models.
    #[error("the server is still loading its models; retry shortly")]
    NotReady,
    /// Nothing could answer (every stage of a cascade failed).
    #[error("{0}")]
    Unavailable(String),
    /// Something broke inside the server.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The kinds of engine refusal and failure the error table tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineFailure {
    /// The model's queue is full (429).
    QueueFull,
    /// The prompt plus max_tokens exceeds the context (400 naming `messages`).
    ContextExceeded,
    /// The prompt has no tokens (400).
    EmptyPrompt,
    /// The request's deadline passed (504).
    Timeout,
    /// The server is shutting down (503).
    ShuttingDown,
    /// The model failed while answering (500).
    Failed,
}

impl ApiError {
    /// A 400 naming a field.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidRequest { message: message.into(), param: Some(param) }
    }

    /// The status code, OpenAI error type and code of this error.
    pub fn classify(&self) -> (StatusCode, &'static str, Option<&'static str>) {
        use StatusCode as S;
        match self {
            Self::InvalidRequest { .. } => (S::BAD_REQUEST, "invalid_request_error", None),
            Self::PayloadTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "invalid_request_error", Some("payload_too_large")),
            Self::Unauthorized => (S::UNAUTHORIZED, "invalid_request_error", Some("invalid_api_key")),
            Self::RateLimited { .. } => (S::TOO_MANY_REQUESTS, "rate_limit_error", Some("rate_limit_exceeded")),
            Self::ModelNotFound(_) => (S::NOT_FOUND, "invalid_request_error", Some("model_not_found")),
            Self::NotFound(_) => (S::NOT_FOUND, "invalid_request_error", Some("not_found")),
            Self::Conflict(_) => (S::CONFLICT, "invalid_request_error", Some("conflict")),
            Self::KnowledgeBaseNotFound(_) => (S::NOT_FOUND, "invalid_request_error", Some("knowledge_base_not_found")),
            Self::WrongTask { .. } => (S::BAD_REQUEST, "invalid_request_error", Some("model_task_mismatch")),
            Self::Engine { failure, .. } => match failure {
                EngineFailure::QueueFull => (S::TOO_MANY_REQUESTS, "rate_limit_error", Some("queue_full")),
                EngineFailure::ContextExceeded => {
                    (S::BAD_REQUEST, "invalid_request_error", Some("context_length_exceeded"))
                }
                EngineFailure::EmptyPrompt => (S::BAD_REQUEST, "invalid_request_error", Some("empty_prompt")),
                EngineFailure::Timeout => (S::GATEWAY_TIMEOUT, "timeout_error", Some("timeout")),
                EngineFailure::ShuttingDown => (S::SERVICE_UNAVAILABLE, "server_error", Some("unavailable")),
                EngineFailure::Failed => (S::INTERNAL_SERVER_ERROR, "server_error", Some("internal_error")),
            },
            Self::Unavailable(_) => (S::SERVICE_UNAVAILABLE, "server_error", Some("no_stage_available")),
            Self::NotReady => (S::SERVICE_UNAVAILABLE, "server_error", Some("unavailable")),
            Self::Internal(_) => (S::INTERNAL_SERVER_ERROR, "server_error", Some("internal_error")),
        }
    }

    /// The OpenAI-shaped JSON body.
    pub fn body(&self) -> serde_json::Value {
        let (_, kind, code) = self.classify();
        let param = match self {
            Self::InvalidRequest { param, .. } => *param,
            Self::Engine { failure: EngineFailure::ContextExceeded, .. } => Some("messages"),
            Self::ModelNotFound(_) | Self::WrongTask { .. } => Some("model"),
            _ => None,
        };
        json!({"error": {"message": self.to_string(), "type": kind, "param": param, "code": code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.classify();
        let mut response = (status, Json(self.body())).into_response();
        if let Self::RateLimited { retry_after_seconds, .. } = &self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_seconds));
        } else if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
