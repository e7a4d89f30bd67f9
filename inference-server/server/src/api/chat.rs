//! `POST /v1/chat/completions` and `POST /v1/completions`: OpenAI requests in, one engine
//! request each, answers back whole or as server-sent events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::Stream;

use super::generation::{Collected, Generation, Piece, PieceLogprob, build_request};
use super::tenants::Tenant;
use super::{AppState, RawBody, parse_body};
use hearth_cascade::Route;
use hearth_engine::registry::{ChatModel, ServedModel};
use hearth_model::chat_template::ChatMessage;
use hearth_openai::ApiError;
use hearth_openai::unix_now;
use hearth_openai::wire::*;

fn chat_model(state: &AppState, name: &str) -> Result<Arc<ChatModel>, ApiError> {
    match state.registry.get(name) {
        Some(ServedModel::Chat(m)) => Ok(m),
        Some(ServedModel::Embedding(_)) => {
            Err(ApiError::WrongTask { model: name.to_owned(), serves: "embeddings", asked: "text generation" })
        }
        None if !state.registry.is_ready() => Err(ApiError::NotReady),
        None => Err(ApiError::ModelNotFound(name.to_owned())),
    }
}

/// Renders and tokenizes a conversation.
fn chat_prompt(model: &ChatModel, messages: Vec<RequestMessage>) -> Result<Vec<u32>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must contain at least one message"));
    }
    let mut conversation = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::invalid(
                    "messages",
                    format!("messages[{i}].role must be system, developer, user or assistant, got `{other}`"),
                ));
            }
        };
        conversation.push(ChatMessage { role: role.to_owned(), content: RequestMessage::text(m.content)? });
    }
    let text = model.template.render(&conversation, true).map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    encode_prompt(model, &text, true)
}

/// Tokenizes prompt text. With `add_special`, BOS is added when the model wants one; the
/// tokenizer drops a BOS that a rendered chat template already spelled out.
fn encode_prompt(model: &ChatModel, text: &str, add_special: bool) -> Result<Vec<u32>, ApiError> {
    model.tokenizer.encode(text, add_special).map_err(|e| ApiError::invalid("prompt", e.to_string()))
}

/// A server-sent-events response for a stream of chunks.
fn sse_response(stream: impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static, model: &str) -> Response {
    tag(Sse::new(stream).keep_alive(KeepAlive::default()).into_response(), model)
}

/// Labels the response with the served model, for the request metrics.
fn tag(mut response: Response, model: &str) -> Response {
    response.extensions_mut().insert(hearth_openai::ServedName(model.to_owned()));
    response
}

fn completion_id(prefix: &str) -> String {
    format!("{prefix}-{:024x}", rand::random::<u128>() >> 32)
}

fn chat_logprob(lp: &PieceLogprob) -> ContentLogprob {
    ContentLogprob {
        token: lp.token.clone(),
        logprob: lp.logprob,
        bytes: lp.token.as_bytes().to_vec(),
        top_logprobs: lp
            .top
            .iter()
            .map(|(t, l)| TopLogprob { token: t.clone(), logprob: *l, bytes: t.as_bytes().to_vec() })
            .collect(),
    }
}

fn usage(prompt_tokens: usize, completion_tokens: usize) -> Usage {
    Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens }
}

/// `POST /v1/chat/completions`: a cascade's when the model names one, else a local model's.
pub async fn chat_route(
    State(state): State<AppState>,
    tenant: Option<Extension<Arc<Tenant>>>,
    headers: axum::http::HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    if let Some(agent) = state.agent_for(&body) {
        return super::agents::chat(agent, headers, &body).await;
    }
    if let Some(cascade) = state.cascade_for(&body) {
        return Ok(cascade.handle(Route::Chat, parse_body(&body)?).await);
    }
    chat_completions(state, parse_body(&body)?, started, tenant.map(|t| t.0)).await
}

/// `POST /v1/completions`: a cascade's when the model names one, else a local model's.
pub async fn completion_route(
    State(state): State<AppState>,
    tenant: Option<Extension<Arc<Tenant>>>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    if let Some(cascade) = state.cascade_for(&body) {
        return Ok(cascade.handle(Route::Completion, parse_body(&body)?).await);
    }
    completions(state, parse_body(&body)?, started, tenant.map(|t| t.0)).await
}

async fn chat_completions(
    state: AppState,
    request: ChatCompletionRequest,
    started: Instant,
    tenant: Option<Arc<Tenant>>,
) -> Result<Response, ApiError> {
    request.refuse_unsupported()?;
    let model = chat_model(&state, &request.model)?;
    let top_logprobs = request.top_logprobs.unwrap_or(0);
    if !(0..=20).contains(&top_logprobs) {
        return Err(ApiError::invalid(
            "top_logprobs",
            format!("top_logprobs must be between 0 and 20, got {top_logprobs}"),
        ));
    }
    if top_logprobs > 0 && !request.logprobs {
        return Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs: true"));
    }
    let prompt = chat_prompt(&model, request.messages)?;
    let engine_request = build_request(&model, prompt, &request.sampling, request.logprobs, top_logprobs as usize)?;
    let prompt_tokens = engine_request.prompt.len();
    let generation = Generation::start(model.clone(), state.metrics.clone(), engine_request, started)?
        .charged_to(tenant, prompt_tokens);
    let id = completion_id("chatcmpl");
    if request.sampling.stream {
        let stream =
            chat_stream(generation, id, model.name.clone(), request.logprobs, request.sampling.include_usage());
        return Ok(sse_response(stream, &model.name));
    }
    let Collected { text, logprobs, reason, prompt_tokens, completion_tokens } = generation.collect().await?;
    let body = ChatCompletion {
        id,
        object: "chat.completion".into(),
        created: unix_now(),
        model: model.name.clone(),
        choices: vec![ChatChoice {
            index: 0,
            message: ResponseMessage { role: "assistant".into(), content: text },
            logprobs: request
                .logprobs
                .then(|| ChoiceLogprobs { content: logprobs.iter().map(|(lp, _)| chat_logprob(lp)).collect() }),
            finish_reason: reason.as_str().into(),
        }],
        usage: usage(prompt_tokens, completion_tokens),
    };
    Ok(tag(Json(body).into_response(), &model.name))
}

fn sse_json<T: serde::Serialize>(value: &T) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(value).unwrap_or_else(|_| "{}".into()))
}

fn sse_error(error: ApiError) -> SseEvent {
    SseEvent::default().data(error.body().to_string())
}

struct ChatStreamState {
    generation: Option<Generation>,
    id: String,
    model: String,
    created: u64,
    logprobs: bool,
    include_usage: bool,
    sent_role: bool,
    pending: std::collections::VecDeque<SseEvent>,
}

impl ChatStreamState {
    fn chunk(&self, delta: Delta, logprobs: Option<ChoiceLogprobs>, finish_reason: Option<String>) -> SseEvent {
        sse_json(&ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice { index: 0, delta, logprobs, finish_reason }],
            usage: None,
        })
    }
}

fn chat_stream(
    generation: Generation,
    id: String,
    model: String,
    logprobs: bool,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let state = ChatStreamState {
        generation: Some(generation),
        id,
        model,
        created: unix_now(),
        logprobs,
        include_usage,
        sent_role: false,
        pending: Default::default(),
    };
    futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.pending.pop_front() {
                return Some((Ok(event), s));
            }
            let generation = s.generation.as_mut()?;
            let Some(piece) = generation.next().await else {
                s.generation = None;
                s.pending.push_back(SseEvent::default().data("[DONE]"));
                continue;
            };
            if !s.sent_role {
                s.sent_role = true;
                let role = Delta { role: Some("assistant".into()), content: Some(String::new()) };
                s.pending.push_back(s.chunk(role, None, None));
            }
            match piece {
                Piece::Token { text, logprob } => {
                    let lp =
                        logprob.filter(|_| s.logprobs).map(|lp| ChoiceLogprobs { content: vec![chat_logprob(&lp)] });
                    if !text.is_empty() || lp.is_some() {
                        let delta = Delta { role: None, content: Some(text) };
                        s.pending.push_back(s.chunk(delta, lp, None));
                    }
                }
                Piece::Done { tail, reason, prompt_tokens, completion_tokens } => {
                    let delta = Delta { role: None, content: (!tail.is_empty()).then_some(tail) };
                    s.pending.push_back(s.chunk(delta, None, Some(reason.as_str().into())));
                    if s.include_usage {
                        s.pending.push_back(sse_json(&ChatCompletionChunk {
                            id: s.id.clone(),
                            object: "chat.completion.chunk".into(),
                            created: s.created,
                            model: s.model.clone(),
                            choices: Vec::new(),
                            usage: Some(usage(prompt_tokens, completion_tokens)),
                        }));
                    }
                    s.generation = None;
                    s.pending.push_back(SseEvent::default().data("[DONE]"));
                }
                Piece::Failed(e) => {
                    s.generation = None;
                    s.pending.push_back(sse_error(e));
                    s.pending.push_back(SseEvent::default().data("[DONE]"));
                }
            }
        }
    })
}

async fn completions(
    state: AppState,
    request: CompletionRequest,
    started: Instant,
    tenant: Option<Arc<Tenant>>,
) -> Result<Response, ApiError> {
    let model = chat_model(&state, &request.model)?;
    if request.echo {
        return Err(ApiError::invalid("echo", "echo is not supported"));
    }
    let top = request.logprobs.unwrap_or(0);
    if !(0..=5).contains(&top) {
        return Err(ApiError::invalid("logprobs", format!("logprobs must be between 0 and 5, got {top}")));
    }
    let prompt = match request.prompt {
        Prompt::Text(text) => encode_prompt(&model, &text, true)?,
        Prompt::Texts(texts) if texts.len() == 1 => encode_prompt(&model, &texts[0], true)?,
        Prompt::Texts(texts) => {
            return Err(ApiError::invalid(
                "prompt",
                format!("only one prompt per request is supported, got {}", texts.len()),
            ));
        }
        Prompt::Tokens(ids) => ids,
    };
    let vocab = model.tokenizer.vocab_size();
    if let Some(bad) = prompt.iter().find(|&&id| id as usize >= vocab) {
        return Err(ApiError::invalid("prompt", format!("token id {bad} is outside the vocabulary (size {vocab})")));
    }
    let wants_logprobs = request.logprobs.is_some();
    let engine_request = build_request(&model, prompt, &request.sampling, wants_logprobs, top as usize)?;
    let prompt_tokens = engine_request.prompt.len();
    let generation = Generation::start(model.clone(), state.metrics.clone(), engine_request, started)?
        .charged_to(tenant, prompt_tokens);
    let id = completion_id("cmpl");
    if request.sampling.stream {
        let stream =
            completion_stream(generation, id, model.name.clone(), wants_logprobs, request.sampling.include_usage());
        return Ok(sse_response(stream, &model.name));
    }
    let Collected { text, logprobs, reason, prompt_tokens, completion_tokens } = generation.collect().await?;
    let body = Completion {
        id,
        object: "text_completion".into(),
        created: unix_now(),
        model: model.name.clone(),
        choices: vec![CompletionChoice {
            text,
            index: 0,
            logprobs: wants_logprobs.then(|| legacy_logprobs(&logprobs)),
            finish_reason: Some(reason.as_str().into()),
        }],
        usage: Some(usage(prompt_tokens, completion_tokens)),
    };
    Ok(tag(Json(body).into_response(), &model.name))
}

fn legacy_logprobs(entries: &[(PieceLogprob, usize)]) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for (lp, offset) in entries {
        out.tokens.push(lp.token.clone());
        out.token_logprobs.push(lp.logprob);
        out.top_logprobs.push(lp.top.iter().cloned().collect());
        out.text_offset.push(*offset);
    }
    out
}

fn completion_stream(
    generation: Generation,
    id: String,
    model: String,
    logprobs: bool,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let created = unix_now();
    let chunk = move |id: &str, model: &str, choice: Option<CompletionChoice>, usage: Option<Usage>| {
        sse_json(&Completion {
            id: id.to_owned(),
            object: "text_completion".into(),
            created,
            model: model.to_owned(),
            choices: choice.into_iter().collect(),
            usage,
        })
    };
    let state = (Some(generation), std::collections::VecDeque::<SseEvent>::new(), 0usize);
    futures_util::stream::unfold(state, move |(mut generation, mut pending, mut offset)| {
        let id = id.clone();
        let model = model.clone();
        async move {
            loop {
                if let Some(event) = pending.pop_front() {
                    return Some((Ok(event), (generation, pending, offset)));
                }
                let g = generation.as_mut()?;
                let Some(piece) = g.next().await else {
                    generation = None;
                    pending.push_back(SseEvent::default().data("[DONE]"));
                    continue;
                };
                match piece {
                    Piece::Token { text, logprob } => {
                        let lp = logprob.filter(|_| logprobs).map(|lp| legacy_logprobs(&[(lp, offset)]));
                        offset += text.len();
                        if !text.is_empty() || lp.is_some() {
                            let choice = CompletionChoice { text, index: 0, logprobs: lp, finish_reason: None };
                            pending.push_back(chunk(&id, &model, Some(choice), None));
                        }
                    }
                    Piece::Done { tail, reason, prompt_tokens, completion_tokens } => {
                        let choice = CompletionChoice {
                            text: tail,
                            index: 0,
                            logprobs: None,
                            finish_reason: Some(reason.as_str().into()),
                        };
                        pending.push_back(chunk(&id, &model, Some(choice), None));
                        if include_usage {
                            pending.push_back(chunk(&id, &model, None, Some(usage(prompt_tokens, completion_tokens))));
                        }
                        generation = None;
                        pending.push_back(SseEvent::default().data("[DONE]"));
                    }
                    Piece::Failed(e) => {
                        generation = None;
                        pending.push_back(sse_error(e));
                        pending.push_back(SseEvent::default().data("[DONE]"));
                    }
                }
            }
        }
    })
}
