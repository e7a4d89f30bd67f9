//! An in-process MCP server (Streamable HTTP, JSON-RPC) for tests of MCP clients: tools with
//! handlers, paginated `tools/list`, sessions, and switches to hang or fail on demand.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// The MCP revision this server speaks (Streamable HTTP).
pub const PROTOCOL_VERSION: &str = "2025-06-18";

/// How many tools one `tools/list` page holds, small to exercise pagination.
const PAGE_SIZE: usize = 2;

/// A tool the fake server offers; the handler gets the arguments and returns text or an error.
#[derive(Clone)]
pub struct FakeTool {
    /// The tool's name.
    pub name: String,
    /// The tool's description.
    pub description: String,
    /// The tool's `inputSchema`.
    pub input_schema: Value,
    /// Runs the tool: `Ok` becomes text content, `Err` a result with `isError: true`.
    pub handler: Arc<dyn Fn(Value) -> Result<String, String> + Send + Sync>,
}

impl FakeTool {
    /// Builds a tool from its parts.
    pub fn new(
        name: &str,
        description: &str,
        input_schema: Value,
        handler: impl Fn(Value) -> Result<String, String> + Send + Sync + 'static,
    ) -> Self {
        FakeTool {
            name: name.to_string(),
            description: description.to_string(),
            input_schema,
            handler: Arc::new(handler),
        }
    }
}

/// Observes and steers a running fake server.
#[derive(Clone, Default)]
pub struct FakeControl {
    calls: Arc<Mutex<HashMap<String, usize>>>,
    sessions: Arc<Mutex<HashSet<String>>>,
    next_session: Arc<AtomicU64>,
}

impl FakeControl {
    /// How many `tools/call` requests named `tool` (known or not).
    pub fn calls(&self, tool: &str) -> usize {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).get(tool).copied().unwrap_or(0)
    }

    /// Forgets every session, so the next request with one gets 404.
    pub fn expire_sessions(&self) {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

struct ServerState {
    tools: Vec<FakeTool>,
    control: FakeControl,
}

/// Starts a fake MCP server on a loopback port; returns its endpoint URL and task.
///
/// # Panics
/// When no loopback port can be bound.
pub async fn spawn(tools: Vec<FakeTool>) -> (String, tokio::task::JoinHandle<()>) {
    let (url, task, _) = spawn_with_control(tools).await;
    (url, task)
}

/// Like [`spawn`], also returning a handle to count calls and expire sessions.
pub async fn spawn_with_control(tools: Vec<FakeTool>) -> (String, tokio::task::JoinHandle<()>, FakeControl) {
    let control = FakeControl::default();
    let state = Arc::new(ServerState { tools, control: control.clone() });
    let app = Router::new().route("/mcp", post(handle)).with_state(state);
    let (url, task) = serve(app).await;
    (url, task, control)
}

/// Starts a server that accepts requests and never answers, for timeout tests.
pub async fn spawn_hanging() -> (String, tokio::task::JoinHandle<()>) {
    serve(Router::new().route("/mcp", post(std::future::pending::<()>))).await
}

/// # Panics
/// When no loopback port can be bound: a broken test environment, where failing loudly is right.
async fn serve(app: Router) -> (String, tokio::task::JoinHandle<()>) {
    let bound = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => listener.local_addr().map(|address| (listener, address)),
        Err(error) => Err(error),
    };
    let (listener, address) = match bound {
        Ok(bound) => bound,
        Err(error) => panic!("the fake MCP server cannot bind a loopback port: {error}"),
    };
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{address}/mcp"), task)
}

fn rpc_result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

fn rpc_error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn status(code: StatusCode, text: &'static str) -> Response {
    (code, text).into_response()
}

async fn handle(State(state): State<Arc<ServerState>>, headers: HeaderMap, body: Bytes) -> Response {
    let header_text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default();
    let accept = header_text("accept");
    if !(accept.contains("application/json") && accept.contains("text/event-stream")) {
        return status(StatusCode::NOT_ACCEPTABLE, "Accept must list application/json and text/event-stream");
    }
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "body is not JSON");
    };
    let method = message.get("method").and_then(Value::as_str).unwrap_or_default();
    let id = message.get("id").cloned();

    if method == "initialize" {
        let Some(id) = id else { return status(StatusCode::BAD_REQUEST, "initialize needs an id") };
        let number = state.control.next_session.fetch_add(1, Ordering::Relaxed);
        let session = format!("fake-session-{number}");
        state.control.sessions.lock().unwrap_or_else(PoisonError::into_inner).insert(session.clone());
        let result = json!({
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {"tools": {"listChanged": false}},
            "serverInfo": {"name": "fake", "version": "0"}
        });
        return ([("mcp-session-id", session)], axum::Json(rpc_result(&id, result))).into_response();
    }

    let session = header_text("mcp-session-id");
    if session.is_empty() {
        return status(StatusCode::BAD_REQUEST, "missing Mcp-Session-Id");
    }
    if !state.control.sessions.lock().unwrap_or_else(PoisonError::into_inner).contains(session) {
        return status(StatusCode::NOT_FOUND, "unknown session");
    }
    if header_text("mcp-protocol-version") != PROTOCOL_VERSION {
        return status(StatusCode::BAD_REQUEST, "missing or unsupported MCP-Protocol-Version");
    }
    let Some(id) = id.filter(|_| !method.is_empty()) else {
        // Notifications and responses are acknowledged without a body.
        return StatusCode::ACCEPTED.into_response();
    };
    let params = message.get("params").cloned().unwrap_or_else(|| json!({}));
    match method {
        "tools/list" => {
            let start: usize = params.get("cursor").and_then(Value::as_str).and_then(|c| c.parse().ok()).unwrap_or(0);
            let page: Vec<Value> = state
                .tools
                .iter()
                .skip(start)
                .take(PAGE_SIZE)
                .map(|tool| {
                    json!({"name": tool.name, "description": tool.description, "inputSchema": tool.input_schema})
                })
                .collect();
            let mut result = json!({"tools": page});
            if start + PAGE_SIZE < state.tools.len() {
                result["nextCursor"] = json!((start + PAGE_SIZE).to_string());
            }
            axum::Json(rpc_result(&id, result)).into_response()
        }
        "tools/call" => {
            let name = params.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            *state.control.calls.lock().unwrap_or_else(PoisonError::into_inner).entry(name.clone()).or_default() += 1;
            let Some(tool) = state.tools.iter().find(|tool| tool.name == name) else {
                return axum::Json(rpc_error(&id, -32602, &format!("Unknown tool: {name}"))).into_response();
            };
            let arguments = params.get("arguments").cloned().unwrap_or_else(|| json!({}));
            let (text, is_error) = match (tool.handler)(arguments) {
                Ok(text) => (text, false),
                Err(text) => (text, true),
            };
            let result = json!({"content": [{"type": "text", "text": text}], "isError": is_error});
            sse(vec![
                json!({
                    "jsonrpc": "2.0",
                    "method": "notifications/progress",
                    "params": {"progressToken": 1, "progress": 1, "total": 2}
                }),
                json!({"jsonrpc": "2.0", "id": "server-ping-1", "method": "ping"}),
                rpc_result(&id, result),
            ])
        }
        "ping" => axum::Json(rpc_result(&id, json!({}))).into_response(),
        _ => axum::Json(rpc_error(&id, -32601, &format!("Method not found: {method}"))).into_response(),
    }
}

/// Answers with an event stream, one event per message, with a comment first and each event
/// in its own chunk with CRLF line ends, to exercise the client's parser.
fn sse(messages: Vec<Value>) -> Response {
    let mut chunks = vec![Ok::<_, Infallible>(Bytes::from_static(b": stream opened\r\n\r\n"))];
    for message in messages {
        chunks.push(Ok(Bytes::from(format!("event: message\r\ndata: {message}\r\n\r\n"))));
    }
    let body = Body::from_stream(futures_util::stream::iter(chunks));
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}
