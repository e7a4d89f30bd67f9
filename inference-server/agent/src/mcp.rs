//! A Model Context Protocol client over Streamable HTTP (protocol version 2025-06-18), so an
//! agent can list and call the tools of a remote MCP server.
//!
//! Hand-written on `reqwest` rather than the `rmcp` SDK: the agent needs four JSON-RPC
//! exchanges (`initialize`, `notifications/initialized`, `tools/list`, `tools/call`), which is
//! less code than adapting an SDK and keeps its dependency tree out of the server.
//!
//! Every exchange is one POST with `Accept: application/json, text/event-stream`. The answer is
//! either one JSON-RPC message (`application/json`) or an event stream whose events are read
//! until the response with the request's id arrives; the server's notifications and requests on
//! that stream (progress, pings) are ignored. The `Mcp-Session-Id` issued at initialization and
//! the negotiated `MCP-Protocol-Version` go on every later request. Each exchange is bounded by
//! the client's timeout and each answer by [`MAX_RESPONSE_BYTES`]. Not implemented: the
//! optional GET stream for server-initiated messages, resuming broken streams, answering server
//! requests (sampling, elicitation) and OAuth (pass a client with default headers to
//! [`McpClient::connect_with`] for a static token).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

/// The protocol version this client asks for.
pub const PROTOCOL_VERSION: &str = "2025-06-18";

/// Versions a server may answer with that this client can speak.
const SUPPORTED_VERSIONS: &[&str] = &[PROTOCOL_VERSION, "2025-03-26"];

/// The largest answer read from a server, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// How many `tools/list` pages are followed before the server is considered broken.
const MAX_TOOL_PAGES: usize = 50;

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

/// Why an MCP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// The server URL cannot be used.
    #[error("invalid MCP server URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server could not be reached or the connection broke.
    #[error("cannot reach the MCP server: {0}")]
    Transport(String),
    /// No answer within the client's timeout.
    #[error("the MCP server did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The server answered with an HTTP error status.
    #[error("the MCP server answered HTTP {status}: {body}")]
    Http {
        /// The HTTP status code.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// The server no longer knows the session (HTTP 404); connect again.
    #[error("the MCP session has expired (HTTP 404); connect again")]
    SessionExpired,
    /// The server answered with a JSON-RPC error.
    #[error("the MCP server returned error {code}: {message}")]
    Rpc {
        /// The JSON-RPC error code.
        code: i64,
        /// The server's message.
        message: String,
    },
    /// The server's answer does not follow the protocol.
    #[error("unexpected answer from the MCP server: {0}")]
    Protocol(String),
    /// The server's answer is larger than [`MAX_RESPONSE_BYTES`].
    #[error("the MCP server's answer exceeds {0} bytes")]
    TooLarge(usize),
}

/// A tool offered by an MCP server.
#[derive(Debug, Clone, PartialEq)]
pub struct McpToolInfo {
    /// The tool's name, used to call it.
    pub name: String,
    /// What the tool does, for the model (empty when the server gives none).
    pub description: String,
    /// The JSON Schema of the tool's arguments.
    pub input_schema: Value,
}

/// The outcome of a tool call, flattened to text for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpCallResult {
    /// Text content joined with newlines; other content summarized like `[image/png, 1234 bytes]`.
    pub text: String,
    /// Whether the tool reported a failure (`isError`), which the model should see as such.
    pub is_error: bool,
}

/// A connected MCP session.
#[derive(Debug)]
pub struct McpClient {
    http: reqwest::Client,
    url: reqwest::Url,
    timeout: Duration,
    session_id: Option<String>,
    protocol_version: Option<String>,
    next_id: AtomicU64,
}

impl McpClient {
    /// Connects to the MCP endpoint at `url` and initializes a session; `timeout` bounds this
    /// and every later exchange.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, McpError> {
        // A redirect would turn the POST into a GET elsewhere; treat it as an error instead.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| McpError::Transport(error.to_string()))?;
        Self::connect_with(http, url, timeout).await
    }

    /// Like [`McpClient::connect`], with a caller-built HTTP client (for default headers such
    /// as a bearer token, or proxies).
    pub async fn connect_with(http: reqwest::Client, url: &str, timeout: Duration) -> Result<Self, McpError> {
        let invalid = |reason: &str| McpError::InvalidUrl { url: url.to_string(), reason: reason.to_string() };
        let parsed = reqwest::Url::parse(url).map_err(|error| invalid(&error.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        let mut client = McpClient {
            http,
            url: parsed,
            timeout,
            session_id: None,
            protocol_version: None,
            next_id: AtomicU64::new(0),
        };

        let params = json!({
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "hearth", "version": env!("CARGO_PKG_VERSION")},
        });
        let id = client.next_id.fetch_add(1, Ordering::Relaxed);
        let message = json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": params});
        let exchange = async {
            let response = client.post(&message).await?;
            let session = match response.headers().get(SESSION_HEADER) {
                Some(value) => Some(
                    value
                        .to_str()
                        .ok()
                        .filter(|text| !text.is_empty() && text.bytes().all(|b| (0x21..=0x7e).contains(&b)))
                        .ok_or_else(|| McpError::Protocol("the session id is not visible ASCII".to_string()))?
                        .to_string(),
                ),
                None => None,
            };
            Ok::<_, McpError>((session, read_result(response, id).await?))
        };
        let (session, result) =
            tokio::time::timeout(timeout, exchange).await.map_err(|_| McpError::Timeout(timeout))??;

        let version = result.get("protocolVersion").and_then(Value::as_str).unwrap_or_default();
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(McpError::Protocol(format!(
                "the server speaks protocol version `{version}`; supported: {}",
                SUPPORTED_VERSIONS.join(", ")
            )));
        }
        client.protocol_version = Some(version.to_string());
        client.session_id = session;
        client.notify("notifications/initialized").await?;
        Ok(client)
    }

    /// Lists the server's tools, following `nextCursor` pagination (at most 50 pages).
    pub async fn list_tools(&self) -> Result<Vec<McpToolInfo>, McpError> {
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_TOOL_PAGES {
            let params = match &cursor {
                Some(cursor) => json!({"cursor": cursor}),
                None => json!({}),
            };
            let result = self.request("tools/list", params).await?;
            let page = result
                .get("tools")
                .and_then(Value::as_array)
                .ok_or_else(|| McpError::Protocol("tools/list result has no `tools` list".to_string()))?;
            for tool in page {
                let name = tool
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| McpError::Protocol("a tool has no name".to_string()))?;
                tools.push(McpToolInfo {
                    name: name.to_string(),
                    description: tool.get("description").and_then(Value::as_str).unwrap_or_default().to_string(),
                    input_schema: tool.get("inputSchema").cloned().unwrap_or_else(|| json!({"type": "object"})),
                });
            }
            match result.get("nextCursor").and_then(Value::as_str) {
                Some(next) => cursor = Some(next.to_string()),
                None => return Ok(tools),
            }
        }
        Err(McpError::Protocol(format!("tools/list returned more than {MAX_TOOL_PAGES} pages")))
    }

    /// Calls a tool with JSON `arguments` and flattens its content to text.
    pub async fn call_tool(&self, name: &str, arguments: Value) -> Result<McpCallResult, McpError> {
        let result = self.request("tools/call", json!({"name": name, "arguments": arguments})).await?;
        let is_error = result.get("isError").and_then(Value::as_bool).unwrap_or(false);
        let text = match result.get("content").and_then(Value::as_array) {
            Some(content) if !content.is_empty() => {
                content.iter().map(summarize_content).collect::<Vec<_>>().join("\n")
            }
            _ => result.get("structuredContent").map(Value::to_string).unwrap_or_default(),
        };
        Ok(McpCallResult { text, is_error })
    }

    /// Sends a JSON-RPC request and returns its `result`.
    async fn request(&self, method: &str, params: Value) -> Result<Value, McpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let exchange = async {
            let response = self.post(&message).await?;
            read_result(response, id).await
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| McpError::Timeout(self.timeout))?
    }

    /// Sends a JSON-RPC notification, which the server acknowledges with 202 Accepted.
    async fn notify(&self, method: &str) -> Result<(), McpError> {
        let message = json!({"jsonrpc": "2.0", "method": method});
        let response = tokio::time::timeout(self.timeout, self.post(&message))
            .await
            .map_err(|_| McpError::Timeout(self.timeout))??;
        if response.status() != reqwest::StatusCode::ACCEPTED {
            return Err(McpError::Protocol(format!(
                "`{method}` was answered with HTTP {}, not 202",
                response.status()
            )));
        }
        Ok(())
    }

    /// POSTs one message with the session headers and turns HTTP errors into [`McpError`]s.
    async fn post(&self, message: &Value) -> Result<reqwest::Response, McpError> {
        let mut request = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json, text/event-stream")
            .json(message);
        if let Some(session) = &self.session_id {
            request = request.header(SESSION_HEADER, session);
        }
        if let Some(version) = &self.protocol_version {
            request = request.header(VERSION_HEADER, version);
        }
        let response = request.send().await.map_err(|error| McpError::Transport(error.to_string()))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND && self.session_id.is_some() {
            return Err(McpError::SessionExpired);
        }
        if !status.is_success() {
            let (body, _) = read_limited(response, 64 * 1024).await.unwrap_or_default();
            let body: String = String::from_utf8_lossy(&body).chars().take(500).collect();
            return Err(McpError::Http { status: status.as_u16(), body });
        }
        Ok(response)
    }
}

/// Reads the JSON-RPC response with `id` from a JSON or event-stream answer.
async fn read_result(response: reqwest::Response, id: u64) -> Result<Value, McpError> {
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match content_type.as_str() {
        "application/json" => {
            let (body, truncated) = read_limited(response, MAX_RESPONSE_BYTES).await?;
            if truncated {
                return Err(McpError::TooLarge(MAX_RESPONSE_BYTES));
            }
            let message: Value = serde_json::from_slice(&body)
                .map_err(|error| McpError::Protocol(format!("the answer is not JSON: {error}")))?;
            let messages = match message {
                Value::Array(batch) => batch,
                single => vec![single],
            };
            match messages.iter().find_map(|message| response_for(message, id)) {
                Some(outcome) => outcome,
                None => Err(McpError::Protocol(format!("the answer holds no response to request {id}"))),
            }
        }
        "text/event-stream" => {
            let mut parser = SseParser::default();
            let mut received = 0usize;
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|error| McpError::Transport(error.to_string()))?;
                received += chunk.len();
                if received > MAX_RESPONSE_BYTES {
                    return Err(McpError::TooLarge(MAX_RESPONSE_BYTES));
                }
                if let Some(outcome) = parser.push(&chunk).iter().find_map(|data| response_in_event(data, id)) {
                    return outcome;
                }
            }
            match parser.finish().iter().find_map(|data| response_in_event(data, id)) {
                Some(outcome) => outcome,
                None => Err(McpError::Protocol(format!("the event stream ended without a response to request {id}"))),
            }
        }
        "" => Err(McpError::Protocol("the answer has no content type".to_string())),
        other => Err(McpError::Protocol(format!("unexpected content type `{other}`"))),
    }
}

fn response_in_event(data: &[u8], id: u64) -> Option<Result<Value, McpError>> {
    // Events that are not JSON-RPC (priming events with empty data) are skipped.
    let message: Value = serde_json::from_slice(data).ok()?;
    response_for(&message, id)
}

/// The outcome if `message` is the response to request `id`; `None` for anything else
/// (notifications, server requests, responses to other ids).
fn response_for(message: &Value, id: u64) -> Option<Result<Value, McpError>> {
    if message.get("method").is_some() {
        return None;
    }
    let matches = match message.get("id")? {
        Value::Number(number) => number.as_u64() == Some(id),
        Value::String(text) => text == &id.to_string(),
        _ => false,
    };
    if !matches {
        return None;
    }
    if let Some(error) = message.get("error") {
        return Some(Err(McpError::Rpc {
            code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: error.get("message").and_then(Value::as_str).unwrap_or("(no message)").to_string(),
        }));
    }
    Some(
        message
            .get("result")
            .cloned()
            .ok_or_else(|| McpError::Protocol("a response has neither result nor error".into())),
    )
}

/// Reads at most `max_bytes` of a body; the flag says whether more was there.
async fn read_limited(response: reqwest::Response, max_bytes: usize) -> Result<(Vec<u8>, bool), McpError> {
    super::http_tool::read_capped(response, max_bytes).await.map_err(|error| McpError::Transport(error.to_string()))
}

/// One content item of a tool result as text.
fn summarize_content(item: &Value) -> String {
    let field = |key: &str| item.get(key).and_then(Value::as_str);
    match field("type").unwrap_or_default() {
        "text" => field("text").unwrap_or_default().to_string(),
        kind @ ("image" | "audio") => {
            let mime = field("mimeType").unwrap_or(kind);
            format!("[{mime}, {} bytes]", base64_decoded_len(field("data").unwrap_or_default()))
        }
        "resource_link" => format!("[resource link: {}]", field("uri").unwrap_or_default()),
        "resource" => {
            let resource = item.get("resource").cloned().unwrap_or_default();
            let get = |key: &str| resource.get(key).and_then(Value::as_str);
            match (get("text"), get("blob")) {
                (Some(text), _) => text.to_string(),
                (None, blob) => format!(
                    "[{}, {} bytes: {}]",
                    get("mimeType").unwrap_or("resource"),
                    base64_decoded_len(blob.unwrap_or_default()),
                    get("uri").unwrap_or_default()
                ),
            }
        }
        other => format!("[{other} content]"),
    }
}

/// The size of base64 data once decoded, without decoding it.
fn base64_decoded_len(data: &str) -> usize {
    let symbols = data.bytes().filter(|b| !b.is_ascii_whitespace() && *b != b'=').count();
    symbols * 3 / 4
}

/// An incremental `text/event-stream` parser that yields each event's `data`.
#[derive(Debug, Default)]
struct SseParser {
    buffer: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
}

impl SseParser {
    /// Feeds bytes; returns the data of every event completed by them.
    fn push(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.buffer[start..].iter().position(|&b| b == b'\n' || b == b'\r') {
            let end = start + offset;
            let next = if self.buffer[end] == b'\r' {
                match self.buffer.get(end + 1) {
                    // A `\r` at the end of the chunk may be the first half of `\r\n`.
                    None => break,
                    Some(b'\n') => end + 2,
                    Some(_) => end + 1,
                }
            } else {
                end + 1
            };
            let line = self.buffer[start..end].to_vec();
            self.line(&line, &mut events);
            start = next;
        }
        self.buffer.drain(..start);
        events
    }

    /// Ends the stream: a last unterminated line and event are delivered too.
    fn finish(&mut self) -> Vec<Vec<u8>> {
        let mut events = Vec::new();
        let rest = std::mem::take(&mut self.buffer);
        let rest = rest.strip_suffix(b"\r").unwrap_or(&rest);
        if !rest.is_empty() {
            self.line(rest, &mut events);
        }
        self.line(b"", &mut events);
        events
    }

    fn line(&mut self, line: &[u8], events: &mut Vec<Vec<u8>>) {
        if line.is_empty() {
            if self.has_data {
                events.push(std::mem::take(&mut self.data));
                self.has_data = false;
            }
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        if field == b"data" {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use hearth_testkit::mcp::{FakeTool, spawn, spawn_hanging, spawn_with_control};

    fn tools() -> Vec<FakeTool> {
        let mut tools = vec![
            FakeTool::new(
                "add",
                "Adds two numbers.",
                json!({"type": "object", "properties": {"a": {}, "b": {}}}),
                |args| {
                    let sum = args["a"].as_f64().unwrap_or(0.0) + args["b"].as_f64().unwrap_or(0.0);
                    Ok(sum.to_string())
                },
            ),
            FakeTool::new("fail", "Always fails.", json!({"type": "object"}), |_| Err("disk on fire".to_string())),
            FakeTool::new("delete_everything", "Never to be called.", json!({"type": "object"}), |_| Ok("gone".into())),
        ];
        for index in 0..2 {
            tools.push(FakeTool::new(&format!("extra{index}"), "", json!({"type": "object"}), |_| Ok(String::new())));
        }
        tools
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn lists_tools_across_pages() {
        let (url, _server) = spawn(tools()).await;
        let client = McpClient::connect(&url, TIMEOUT).await.unwrap();
        let listed = client.list_tools().await.unwrap();
        let names: Vec<&str> = listed.iter().map(|tool| tool.name.as_str()).collect();
        assert_eq!(names, ["add", "fail", "delete_everything", "extra0", "extra1"]);
        assert_eq!(listed[0].description, "Adds two numbers.");
        assert_eq!(listed[0].input_schema["properties"]["a"], json!({}));
    }

    #[tokio::test]
    async fn calls_a_tool_over_an_event_stream() {
        let (url, _server, control) = spawn_with_control(tools()).await;
        let client = McpClient::connect(&url, TIMEOUT).await.unwrap();
        let result = client.call_tool("add", json!({"a": 2, "b": 3})).await.unwrap();
        assert_eq!(result, McpCallResult { text: "5".to_string(), is_error: false });
        let again = client.call_tool("add", json!({"a": 1, "b": 1})).await.unwrap();
        assert_eq!(again.text, "2");
        assert_eq!(control.calls("add"), 2);
    }

    #[tokio::test]
    async fn reports_tool_failures_as_error_results() {
        let (url, _server) = spawn(tools()).await;
        let client = McpClient::connect(&url, TIMEOUT).await.unwrap();
        let result = client.call_tool("fail", json!({})).await.unwrap();
        assert_eq!(result, McpCallResult { text: "disk on fire".to_string(), is_error: true });
    }

    #[tokio::test]
    async fn unknown_tool_is_an_rpc_error_and_calls_nothing_else() {
        let (url, _server, control) = spawn_with_control(tools()).await;
        let client = McpClient::connect(&url, TIMEOUT).await.unwrap();
        let error = client.call_tool("no_such_tool", json!({})).await.unwrap_err();
        assert!(
            matches!(&error, McpError::Rpc { code: -32602, message } if message == "Unknown tool: no_such_tool"),
            "{error}"
        );
        assert_eq!(control.calls("no_such_tool"), 1);
        assert_eq!(control.calls("delete_everything"), 0);
    }

    #[tokio::test]
    async fn times_out_against_a_hanging_server() {
        let (url, _server) = spawn_hanging().await;
        let started = std::time::Instant::now();
        let error = McpClient::connect(&url, Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(error, McpError::Timeout(_)), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn reports_an_expired_session() {
        let (url, _server, control) = spawn_with_control(tools()).await;
        let client = McpClient::connect(&url, TIMEOUT).await.unwrap();
        control.expire_sessions();
        assert!(matches!(client.list_tools().await.unwrap_err(), McpError::SessionExpired));
    }

    #[tokio::test]
    async fn fake_server_requires_the_session_headers() {
        let (url, _server) = spawn(tools()).await;
        let http = reqwest::Client::new();
        let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        let response =
            http.post(&url).header("accept", "application/json, text/event-stream").json(&list).send().await.unwrap();
        assert_eq!(response.status(), 400);
        let response = http.post(&url).header("accept", "application/json").json(&list).send().await.unwrap();
        assert_eq!(response.status(), 406);
    }

    #[tokio::test]
    async fn reports_http_errors_and_bad_urls() {
        let (url, _server) = spawn(tools()).await;
        let wrong_path = url.replace("/mcp", "/other");
        let error = McpClient::connect(&wrong_path, TIMEOUT).await.unwrap_err();
        assert!(matches!(error, McpError::Http { status: 404, .. }), "{error}");
        assert!(matches!(McpClient::connect("ftp://x/mcp", TIMEOUT).await.unwrap_err(), McpError::InvalidUrl { .. }));
    }

    #[test]
    fn parses_event_streams_split_anywhere() {
        let stream: &[u8] = b": comment\r\nevent: message\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n\
            id: 7\ndata: second\n\ndata: third\rdata: x\r\r";
        for split in 0..stream.len() {
            let mut parser = SseParser::default();
            let mut events = parser.push(&stream[..split]);
            events.extend(parser.push(&stream[split..]));
            events.extend(parser.finish());
            let events: Vec<String> = events.into_iter().map(|e| String::from_utf8(e).unwrap()).collect();
            assert_eq!(events, ["{\"a\":\n1}", "second", "third\nx"], "split at {split}");
        }
        let mut parser = SseParser::default();
        assert!(parser.push(b"data: unterminated").is_empty());
        assert_eq!(parser.finish(), [b"unterminated".to_vec()]);
    }

    #[test]
    fn picks_the_matching_response_and_maps_errors() {
        assert!(response_for(&json!({"jsonrpc": "2.0", "method": "notifications/progress"}), 1).is_none());
        assert!(response_for(&json!({"jsonrpc": "2.0", "id": 2, "result": {}}), 1).is_none());
        assert!(response_for(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}), 1).is_none());
        assert_eq!(response_for(&json!({"id": 1, "result": {"x": 1}}), 1).unwrap().unwrap(), json!({"x": 1}));
        assert_eq!(response_for(&json!({"id": "1", "result": 2}), 1).unwrap().unwrap(), json!(2));
        let error =
            response_for(&json!({"id": 1, "error": {"code": -32601, "message": "nope"}}), 1).unwrap().unwrap_err();
        assert_eq!(error.to_string(), "the MCP server returned error -32601: nope");
    }

    #[test]
    fn summarizes_non_text_content() {
        assert_eq!(summarize_content(&json!({"type": "text", "text": "hi"})), "hi");
        assert_eq!(
            summarize_content(&json!({"type": "image", "mimeType": "image/png", "data": "AQIDBA=="})),
            "[image/png, 4 bytes]"
        );
        assert_eq!(
            summarize_content(&json!({"type": "audio", "mimeType": "audio/wav", "data": "AQID"})),
            "[audio/wav, 3 bytes]"
        );
        assert_eq!(
            summarize_content(&json!({"type": "resource_link", "uri": "file:///a"})),
            "[resource link: file:///a]"
        );
        assert_eq!(summarize_content(&json!({"type": "resource", "resource": {"uri": "u", "text": "body"}})), "body");
        assert_eq!(
            summarize_content(
                &json!({"type": "resource", "resource": {"uri": "u", "mimeType": "application/pdf", "blob": "AAAA"}})
            ),
            "[application/pdf, 3 bytes: u]"
        );
    }
}
