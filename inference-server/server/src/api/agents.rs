//! Agents over HTTP: the OpenAI chat API with `model` = the agent's name (the final answer
//! comes back as the assistant's message, streamed when asked), and the runs API, which
//! returns the whole trace and approves or rejects held tool calls:
//!
//! - `POST /v1/agents/{name}/runs` `{"input", "conversation_id"?, "user"?}` → the run;
//! - `GET /v1/agents/{name}/runs/{id}` → the run;
//! - `POST /v1/agents/{name}/runs/{id}/approve` and `…/reject` `{"reason"?}` → the run,
//!   driven on from the held call;
//! - `GET /v1/agents` → the agents and their tools.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, RwLock};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{AppState, RawBody, parse_body};
use hearth_agent::llm::{DEPTH_HEADER, Message};
use hearth_agent::{AgentRuntime, Run, RunError, RunRequest, RunStatus};
use hearth_openai::ApiError;
use hearth_openai::wire::*;
use hearth_openai::{ServedName, unix_now};

/// Header naming the conversation a chat request continues (its turns are remembered).
pub const CONVERSATION_HEADER: &str = "x-hearth-conversation-id";

/// The agents this process serves, by name.
#[derive(Default)]
pub struct Agents {
    agents: RwLock<BTreeMap<String, Arc<AgentRuntime>>>,
}

impl Agents {
    /// Adds (or replaces) an agent.
    pub fn insert(&self, agent: Arc<AgentRuntime>) {
        if let Ok(mut agents) = self.agents.write() {
            agents.insert(agent.name().to_owned(), agent);
        }
    }

    /// The agent of this name.
    pub fn get(&self, name: &str) -> Option<Arc<AgentRuntime>> {
        self.agents.read().ok()?.get(name).cloned()
    }

    /// Every agent.
    pub fn all(&self) -> Vec<Arc<AgentRuntime>> {
        self.agents.read().map(|a| a.values().cloned().collect()).unwrap_or_default()
    }

    /// Whether any agent is served.
    pub fn is_empty(&self) -> bool {
        self.agents.read().map(|a| a.is_empty()).unwrap_or(true)
    }
}

fn lookup(state: &AppState, name: &str) -> Result<Arc<AgentRuntime>, ApiError> {
    state.agents.get(name).ok_or_else(|| ApiError::ModelNotFound(name.to_owned()))
}

fn run_error(error: RunError) -> ApiError {
    match error {
        RunError::Invalid { field, message } => ApiError::invalid(field, message),
        RunError::NotFound(id) => ApiError::NotFound(format!("no run `{id}`")),
        other => ApiError::Conflict(other.to_string()),
    }
}

fn depth(headers: &HeaderMap) -> u32 {
    headers.get(DEPTH_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn run_response(name: &str, run: &Run) -> Response {
    let mut response = Json(run).into_response();
    response.extensions_mut().insert(ServedName(name.to_owned()));
    response
}

/// `POST /v1/agents/{name}/runs`.
pub async fn start_run(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let agent = lookup(&state, &name)?;
    let request: RunRequest = parse_body(&body)?;
    let run = agent.start(request, depth(&headers)).await.map_err(run_error)?;
    Ok(run_response(&name, &run))
}

/// `GET /v1/agents/{name}/runs/{id}`.
pub async fn get_run(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let agent = lookup(&state, &name)?;
    let run = agent.get(&id).ok_or_else(|| ApiError::NotFound(format!("no run `{id}`")))?;
    Ok(run_response(&name, &run))
}

#[derive(serde::Deserialize, Default)]
struct Decision {
    #[serde(default)]
    reason: Option<String>,
}

async fn decide(state: AppState, name: String, id: String, body: &[u8], approve: bool) -> Result<Response, ApiError> {
    let agent = lookup(&state, &name)?;
    let decision: Decision = if body.is_empty() { Decision::default() } else { parse_body(body)? };
    let run = agent.decide(&id, approve, decision.reason).await.map_err(run_error)?;
    Ok(run_response(&name, &run))
}

/// `POST /v1/agents/{name}/runs/{id}/approve`.
pub async fn approve(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    decide(state, name, id, &body, true).await
}

/// `POST /v1/agents/{name}/runs/{id}/reject`.
pub async fn reject(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    decide(state, name, id, &body, false).await
}

/// `GET /v1/agents`.
pub async fn list(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> =
        state.agents.all().iter().map(|a| json!({"name": a.name(), "tools": a.tool_names()})).collect();
    Json(json!({"object": "list", "data": data}))
}

/// What a chat client reads back from a run: the answer, or why there is none.
fn reply_text(run: &Run) -> String {
    match (&run.answer, run.status, &run.pending) {
        (Some(answer), _, _) => answer.clone(),
        (None, RunStatus::PendingApproval, Some(pending)) => format!(
            "This run ({}) is waiting for approval to call `{}`. Approve or reject it with \
             POST /v1/agents/{}/runs/{}/approve (or /reject).",
            run.id, pending.tool, run.agent, run.id
        ),
        _ => format!(
            "The agent stopped without an answer ({}).",
            run.error.clone().unwrap_or_else(|| "no reason recorded".into())
        ),
    }
}

fn hearth_field(run: &Run) -> Value {
    json!({
        "run_id": run.id,
        "conversation_id": run.conversation_id,
        "status": run.status,
        "stop_reason": run.stop_reason,
        "steps": run.steps.len(),
        "tool_calls": run.tool_calls,
    })
}

/// `POST /v1/chat/completions` for an agent: the last message is the goal, earlier user and
/// assistant messages are the conversation (a client's system messages are ignored: the
/// agent's own instructions rule).
pub async fn chat(agent: Arc<AgentRuntime>, headers: HeaderMap, body: &[u8]) -> Result<Response, ApiError> {
    let request: ChatCompletionRequest = parse_body(body)?;
    request.refuse_unsupported()?;
    let mut messages = Vec::with_capacity(request.messages.len());
    for (i, m) in request.messages.into_iter().enumerate() {
        let text = RequestMessage::text(m.content).map_err(|e| match e {
            ApiError::InvalidRequest { message, .. } => {
                ApiError::invalid("messages", format!("messages[{i}]: {message}"))
            }
            other => other,
        })?;
        messages.push(Message { role: m.role, content: text });
    }
    let Some(last) = messages.pop().filter(|m| m.role == "user") else {
        return Err(ApiError::invalid("messages", "the last message must be the user's goal"));
    };
    let conversation_id = headers.get(CONVERSATION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let run_request =
        RunRequest { input: last.content, conversation_id, user: request.sampling.user.clone(), history: messages };
    let depth = depth(&headers);
    let name = agent.name().to_owned();
    let served = name.clone();
    let id = format!("chatcmpl-{}", hearth_agent::random_id());
    let created = unix_now();
    if request.sampling.stream {
        let include_usage = request.sampling.include_usage();
        let run = async move { agent.start(run_request, depth).await };
        let chunk = move |delta: Delta, finish: Option<&str>, usage: Option<Usage>, hearth: Option<Value>| {
            let mut value = serde_json::to_value(ChatCompletionChunk {
                id: id.clone(),
                object: "chat.completion.chunk".into(),
                created,
                model: name.clone(),
                choices: if usage.is_some() && finish.is_none() && delta == Delta::default() {
                    Vec::new()
                } else {
                    vec![ChunkChoice { index: 0, delta, logprobs: None, finish_reason: finish.map(str::to_owned) }]
                },
                usage,
            })
            .unwrap_or_default();
            if let (Some(hearth), Some(object)) = (hearth, value.as_object_mut()) {
                object.insert("hearth".into(), hearth);
            }
            SseEvent::default().data(value.to_string())
        };
        let stream = futures_util::stream::once(run).flat_map(move |result| {
            let mut events: Vec<Result<SseEvent, Infallible>> = Vec::new();
            match result {
                Ok(run) => {
                    events.push(Ok(chunk(Delta { role: Some("assistant".into()), content: None }, None, None, None)));
                    // The answer in word-sized pieces, as a streamed generation would arrive.
                    for piece in reply_text(&run).split_inclusive(' ') {
                        events.push(Ok(chunk(Delta { role: None, content: Some(piece.to_owned()) }, None, None, None)));
                    }
                    events.push(Ok(chunk(Delta::default(), Some("stop"), None, Some(hearth_field(&run)))));
                    if include_usage {
                        let usage = Usage {
                            prompt_tokens: run.usage.prompt_tokens as usize,
                            completion_tokens: run.usage.completion_tokens as usize,
                            total_tokens: run.usage.total_tokens as usize,
                        };
                        events.push(Ok(chunk(Delta::default(), None, Some(usage), None)));
                    }
                }
                Err(e) => {
                    let error = run_error(e);
                    events.push(Ok(
                        SseEvent::default().data(json!({"error": {"message": error.to_string()}}).to_string())
                    ));
                }
            }
            events.push(Ok(SseEvent::default().data("[DONE]")));
            futures_util::stream::iter(events)
        });
        let mut response = Sse::new(stream).keep_alive(KeepAlive::default()).into_response();
        response.extensions_mut().insert(ServedName(served));
        return Ok(response);
    }
    let run = agent.start(run_request, depth).await.map_err(run_error)?;
    let completion = ChatCompletion {
        id,
        object: "chat.completion".into(),
        created,
        model: name.clone(),
        choices: vec![ChatChoice {
            index: 0,
            message: ResponseMessage { role: "assistant".into(), content: reply_text(&run) },
            logprobs: None,
            finish_reason: "stop".into(),
        }],
        usage: Usage {
            prompt_tokens: run.usage.prompt_tokens as usize,
            completion_tokens: run.usage.completion_tokens as usize,
            total_tokens: run.usage.total_tokens as usize,
        },
    };
    let mut value = serde_json::to_value(completion).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(object) = value.as_object_mut() {
        object.insert("hearth".into(), hearth_field(&run));
    }
    let mut response = Json(value).into_response();
    response.extensions_mut().insert(ServedName(name));
    Ok(response)
}
