//! Shared by chat and text completions: request fields → engine request, and the engine's
//! events → text pieces with timings recorded in the metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;

use super::metrics::{Metrics, ModelLabels, TenantModelLabels};
use super::tenants::Tenant;
use hearth_engine::constraint::{Constraint, Grammar};
use hearth_engine::registry::ChatModel;
use hearth_engine::{EngineError, Event, FinishReason, GenerateRequest, SamplingParams};
use hearth_openai::wire::{ResponseFormat, SamplingFields};
use hearth_openai::{ApiError, EngineFailure};

/// top_p when a request does not set it.
pub const DEFAULT_TOP_P: f32 = 0.95;
/// top_k when a request does not set it (0 turns it off).
pub const DEFAULT_TOP_K: i64 = 40;

/// Builds the engine request from the shared sampling fields, validating each one.
pub fn build_request(
    model: &ChatModel,
    prompt: Vec<u32>,
    fields: &SamplingFields,
    logprobs: bool,
    top_logprobs: usize,
) -> Result<GenerateRequest, ApiError> {
    if let Some(n) = fields.n
        && n != 1
    {
        return Err(ApiError::invalid("n", format!("only n=1 is supported, got {n}")));
    }
    let temperature = fields.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature must be between 0 and 2, got {temperature}"),
        ));
    }
    // Unset top_p and top_k default to llama.cpp's server defaults: small models sampled
    // from their whole vocabulary at temperature 1 drift into noise within a few tokens.
    let top_p = fields.top_p.unwrap_or(DEFAULT_TOP_P);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", format!("top_p must be in (0, 1], got {top_p}")));
    }
    let top_k = fields.top_k.unwrap_or(DEFAULT_TOP_K);
    if top_k < 0 {
        return Err(ApiError::invalid("top_k", format!("top_k must be 0 (off) or positive, got {top_k}")));
    }
    for (name, value) in
        [("frequency_penalty", fields.frequency_penalty), ("presence_penalty", fields.presence_penalty)]
    {
        if let Some(v) = value
            && !(-2.0..=2.0).contains(&v)
        {
            return Err(ApiError::invalid(name, format!("{name} must be between -2 and 2, got {v}")));
        }
    }
    let repetition_penalty = fields.repetition_penalty.unwrap_or(1.0);
    if !(repetition_penalty > 0.0 && repetition_penalty <= 10.0) {
        return Err(ApiError::invalid(
            "repetition_penalty",
            format!("repetition_penalty must be in (0, 10], got {repetition_penalty}"),
        ));
    }
    let stop = fields.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > 4 {
        return Err(ApiError::invalid("stop", format!("at most 4 stop sequences are allowed, got {}", stop.len())));
    }
    let limit = model.limits.max_tokens;
    let context = model.context_length();
    let max_tokens = match fields.max_completion_tokens.or(fields.max_tokens) {
        Some(m) if m < 1 => {
            return Err(ApiError::invalid("max_tokens", format!("max_tokens must be at least 1, got {m}")));
        }
        Some(m) if m as u64 > limit as u64 => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("max_tokens must be at most {limit} for this model, got {m}"),
            ));
        }
        Some(m) => m as usize,
        // Unspecified: as much as the context allows, within the model's limit.
        None => limit.min(context.saturating_sub(prompt.len())).max(1),
    };
    Ok(GenerateRequest {
        prompt,
        max_tokens,
        sampling: SamplingParams {
            temperature,
            top_p,
            top_k: top_k as usize,
            seed: fields.seed,
            repetition_penalty,
            frequency_penalty: fields.frequency_penalty.unwrap_or(0.0),
            presence_penalty: fields.presence_penalty.unwrap_or(0.0),
            logprobs,
            top_logprobs,
        },
        stop,
        ignore_eos: fields.ignore_eos,
        deadline: Instant::now() + model.limits.timeout,
        constraint: response_constraint(model, fields.response_format()?.as_ref())?,
    })
}

/// The grammar `response_format` asks for, compiled for this model (`None` for free text).
fn response_constraint(model: &ChatModel, format: Option<&ResponseFormat>) -> Result<Option<Constraint>, ApiError> {
    let grammar = match format {
        None | Some(ResponseFormat::Text) => return Ok(None),
        Some(ResponseFormat::JsonObject) => Grammar::JsonSchema(serde_json::json!({"type": "object"})),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            let name = &json_schema.name;
            if name.is_empty()
                || name.len() > 64
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(ApiError::invalid(
                    "response_format",
                    format!("response_format.json_schema.name must be 1-64 of a-z, A-Z, 0-9, _ and -, got {name:?}"),
                ));
            }
            Grammar::JsonSchema(json_schema.schema.clone().unwrap_or_else(|| serde_json::json!({})))
        }
    };
    model.constrain(&grammar).map(Some).map_err(|e| {
        ApiError::invalid("response_format", format!("response_format.json_schema.schema cannot be enforced: {e}"))
    })
}

/// A token's log-probability with texts resolved.
#[derive(Clone, Debug)]
pub struct PieceLogprob {
    /// The chosen token's text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
    /// Alternatives (text, log-probability), best first.
    pub top: Vec<(String, f32)>,
}

/// One step of a generation as the API sees it.
#[derive(Debug)]
pub enum Piece {
    /// New text (possibly empty) and the token's log-probability.
    Token {
        /// Text to send.
        text: String,
        /// Log-probability, when asked for.
        logprob: Option<PieceLogprob>,
    },
    /// The end.
    Done {
        /// Remaining text.
        tail: String,
        /// Why it ended.
        reason: FinishReason,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens.
        completion_tokens: usize,
    },
    /// Failed part-way.
    Failed(ApiError),
}

/// Decrements the in-flight gauge when a request ends, however it ends.
struct InflightGuard {
    metrics: Arc<Metrics>,
    labels: ModelLabels,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.metrics.inflight_requests.get_or_create(&self.labels).dec();
    }
}

/// Charges a tenant for a generation's tokens when it ends, however it ends: a client that
/// hangs up part-way pays for the prompt and what was generated until then.
pub struct TenantCharge {
    tenant: Arc<Tenant>,
    metrics: Arc<Metrics>,
    model: String,
    tokens: usize,
}

impl TenantCharge {
    /// A charge of `tokens` so far (e.g. the prompt) to `tenant` on `model`.
    pub fn new(tenant: Arc<Tenant>, metrics: Arc<Metrics>, model: &str, tokens: usize) -> Self {
        Self { tenant, metrics, model: model.to_owned(), tokens }
    }
}

impl Drop for TenantCharge {
    fn drop(&mut self) {
        self.tenant.charge_tokens(self.tokens);
        let labels = TenantModelLabels { tenant: self.tenant.name().to_owned(), model: self.model.clone() };
        self.metrics.tenant_tokens.get_or_create(&labels).inc_by(self.tokens as u64);
    }
}

/// A running generation: engine events turned into pieces, with timings recorded.
pub struct Generation {
    events: UnboundedReceiver<Event>,
    model: Arc<ChatModel>,
    metrics: Arc<Metrics>,
    labels: ModelLabels,
    started: Instant,
    last_token: Option<Instant>,
    charge: Option<TenantCharge>,
    _inflight: InflightGuard,
}

impl Generation {
    /// Submits the request to the model's engine.
    pub fn start(
        model: Arc<ChatModel>,
        metrics: Arc<Metrics>,
        request: GenerateRequest,
        started: Instant,
    ) -> Result<Self, ApiError> {
        let labels = Metrics::model(&model.name);
        let events = model.engine.submit(request).map_err(engine_error)?;
        metrics.inflight_requests.get_or_create(&labels).inc();
        let guard = InflightGuard { metrics: metrics.clone(), labels: labels.clone() };
        Ok(Self { events, model, metrics, labels, started, last_token: None, charge: None, _inflight: guard })
    }

    /// Charges the generation's tokens to `tenant` when it ends.
    pub fn charged_to(mut self, tenant: Option<Arc<Tenant>>, prompt_tokens: usize) -> Self {
        self.charge = tenant.map(|t| TenantCharge::new(t, self.metrics.clone(), &self.model.name, prompt_tokens));
        self
    }

    /// The next piece; `None` after Done or Failed.
    pub async fn next(&mut self) -> Option<Piece> {
        let event = self.events.recv().await?;
        Some(match event {
            Event::Token(token) => {
                let now = Instant::now();
                match self.last_token {
                    None => {
                        self.metrics.time_to_first_token.get_or_create(&self.labels).observe(secs(now - self.started))
                    }
                    Some(last) => {
                        self.metrics.inter_token_latency.get_or_create(&self.labels).observe(secs(now - last))
                    }
                }
                self.last_token = Some(now);
                if let Some(charge) = self.charge.as_mut() {
                    charge.tokens += 1;
                }
                let tokenizer = &self.model.tokenizer;
                let text_of = |id: u32| tokenizer.token_text(id).unwrap_or_default();
                let logprob = token.logprob.map(|lp| PieceLogprob {
                    token: text_of(token.id),
                    logprob: lp.logprob,
                    top: lp.top.iter().map(|&(id, l)| (text_of(id), l)).collect(),
                });
                Piece::Token { text: token.text, logprob }
            }
            Event::Done(done) => {
                if let Some(charge) = self.charge.as_mut() {
                    charge.tokens = done.prompt_tokens + done.completion_tokens;
                }
                self.metrics.prompt_tokens.get_or_create(&self.labels).inc_by(done.prompt_tokens as u64);
                self.metrics.generated_tokens.get_or_create(&self.labels).inc_by(done.completion_tokens as u64);
                Piece::Done {
                    tail: done.tail,
                    reason: done.reason,
                    prompt_tokens: done.prompt_tokens,
                    completion_tokens: done.completion_tokens,
                }
            }
            Event::Failed(e) => Piece::Failed(engine_error(e)),
        })
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The whole output of a non-streamed generation.
pub struct Collected {
    /// The text.
    pub text: String,
    /// Per-token log-probabilities (when asked), with the text offset of each token.
    pub logprobs: Vec<(PieceLogprob, usize)>,
    /// Why it ended.
    pub reason: FinishReason,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
}

impl Generation {
    /// Runs the generation to the end.
    pub async fn collect(mut self) -> Result<Collected, ApiError> {
        let mut text = String::new();
        let mut logprobs = Vec::new();
        while let Some(piece) = self.next().await {
            match piece {
                Piece::Token { text: t, logprob } => {
                    if let Some(lp) = logprob {
                        logprobs.push((lp, text.len()));
                    }
                    text.push_str(&t);
                }
                Piece::Done { tail, reason, prompt_tokens, completion_tokens } => {
                    text.push_str(&tail);
                    return Ok(Collected { text, logprobs, reason, prompt_tokens, completion_tokens });
                }
                Piece::Failed(e) => return Err(e),
            }
        }
        Err(engine_error(EngineError::ShuttingDown))
    }
}

/// The API's answer to an engine error: the one place the engine's errors meet the error
/// table (the message stays the engine's).
pub fn engine_error(error: EngineError) -> ApiError {
    let failure = match &error {
        EngineError::QueueFull { .. } => EngineFailure::QueueFull,
        EngineError::ContextExceeded { .. } => EngineFailure::ContextExceeded,
        EngineError::EmptyPrompt => EngineFailure::EmptyPrompt,
        EngineError::Timeout => EngineFailure::Timeout,
        EngineError::ShuttingDown => EngineFailure::ShuttingDown,
        EngineError::Backend(_) => EngineFailure::Failed,
    };
    ApiError::Engine { failure, message: error.to_string() }
}
