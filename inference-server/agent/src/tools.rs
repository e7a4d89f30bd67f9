//! The tools an Agent's spec grants, built once when the agent starts. Only these exist: the
//! model names a tool, the runtime looks it up here, checks the arguments against its schema,
//! and only then runs it. There is no shell and no free URL fetch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hearth_crds::AgentSpec;
use serde_json::{Value, json};

use super::http_tool::Operation;
use super::llm::{ChatClient, MAX_DELEGATION_DEPTH, Message};
use super::mcp::McpClient;
use super::prompt::untrusted;
use super::{calculator, http_tool, schema};
use hearth_knowledge::{KnowledgeBase, MEMORY_SOURCE_PREFIX, QueryRequest};

/// Longest answer a delegated agent may give, in tokens.
const DELEGATE_MAX_TOKENS: u32 = 512;
/// Longest text of one retrieved chunk shown to the model, in characters.
const RETRIEVED_CHARS: usize = 1200;

/// What a tool does when called.
enum Action {
    Calculator,
    Retrieval { kb: Arc<KnowledgeBase>, top_k: Option<u32> },
    Http { operation: Box<Operation>, base_url: String, client: reqwest::Client, max_bytes: usize },
    Delegate { agent: ChatClient },
    Mcp { client: Arc<McpClient>, remote_name: String },
}

/// One tool.
pub struct Tool {
    /// The name the model calls it by.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON schema of its arguments.
    pub schema: Value,
    /// Longest one call may take.
    pub timeout: Duration,
    action: Action,
}

/// How one call ended.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolResult {
    /// What the model is shown.
    pub observation: String,
    /// Whether the tool did its work.
    pub ok: bool,
}

impl ToolResult {
    fn ok(observation: String) -> Self {
        Self { observation, ok: true }
    }
    fn error(message: impl std::fmt::Display) -> Self {
        Self { observation: format!("error: {message}"), ok: false }
    }
}

/// What the tools of an agent can reach.
pub struct ToolEnv<'a> {
    /// The knowledge bases, by name.
    pub knowledge_base: &'a dyn Fn(&str) -> Option<Arc<KnowledgeBase>>,
    /// Other agents' chat endpoints, by name.
    pub agent: &'a dyn Fn(&str) -> Option<ChatClient>,
    /// Where http tools' OpenAPI documents lie: `<dir>/<configmap>/<key>`.
    pub openapi_dir: PathBuf,
}

impl Tool {
    /// Runs the tool with arguments already checked against its schema. `depth` is the
    /// caller's delegation depth.
    pub async fn call(&self, arguments: &Value, depth: u32) -> ToolResult {
        match tokio::time::timeout(self.timeout, self.run(arguments, depth)).await {
            Ok(result) => result,
            Err(_) => ToolResult::error(format!("`{}` timed out after {} s", self.name, self.timeout.as_secs_f64())),
        }
    }

    async fn run(&self, arguments: &Value, depth: u32) -> ToolResult {
        let text = |field: &str| arguments.get(field).and_then(Value::as_str).unwrap_or_default().to_owned();
        match &self.action {
            Action::Calculator => match calculator::evaluate(&text("expression")) {
                Ok(value) => ToolResult::ok(calculator::format_number(value)),
                Err(e) => ToolResult::error(e),
            },
            Action::Retrieval { kb, top_k } => {
                let wanted = arguments
                    .get("top_k")
                    .and_then(Value::as_u64)
                    .map(|k| k as usize)
                    .or(top_k.map(|k| k as usize))
                    .unwrap_or(kb.default_top_k());
                // Agents' memories may share the collection: they are never search results
                // (they belong to one user each), so ask for more and drop them.
                let request = QueryRequest { query: text("query"), top_k: Some(wanted * 3), ..QueryRequest::default() };
                match kb.query(&request).await {
                    Ok(hits) => {
                        let hits: Vec<_> = hits
                            .into_iter()
                            .filter(|h| !h.source.starts_with(MEMORY_SOURCE_PREFIX))
                            .take(wanted)
                            .collect();
                        if hits.is_empty() {
                            return ToolResult::ok("no matching documents".into());
                        }
                        let mut out = String::new();
                        for (i, hit) in hits.iter().enumerate() {
                            let mut body: String = hit.text.chars().take(RETRIEVED_CHARS).collect();
                            if body.len() < hit.text.len() {
                                body.push('…');
                            }
                            out.push_str(&format!(
                                "[{}] source: {} (bytes {}-{})\n{}\n\n",
                                i + 1,
                                hit.source,
                                hit.start,
                                hit.end,
                                body.trim()
                            ));
                        }
                        ToolResult::ok(untrusted(out.trim_end()))
                    }
                    Err(e) => ToolResult::error(e),
                }
            }
            Action::Http { operation, base_url, client, max_bytes } => {
                let request = match operation.request(client, base_url, arguments) {
                    Ok(request) => request,
                    Err(e) => return ToolResult::error(e),
                };
                match request.send().await {
                    Ok(response) => {
                        let status = response.status();
                        match http_tool::read_capped(response, *max_bytes).await {
                            Ok((body, truncated)) => {
                                let mut body = String::from_utf8_lossy(&body).into_owned();
                                if truncated {
                                    body.push_str(&format!("\n[truncated at {max_bytes} bytes]"));
                                }
                                let observation = untrusted(&format!("HTTP {}\n{body}", status.as_u16()));
                                ToolResult { observation, ok: status.is_success() }
                            }
                            Err(e) => ToolResult::error(format!("reading the response failed: {e}")),
                        }
                    }
                    Err(e) => ToolResult::error(format!("the request failed: {e}")),
                }
            }
            Action::Delegate { agent } => {
                if depth + 1 > MAX_DELEGATION_DEPTH {
                    return ToolResult::error(format!(
                        "delegation is nested {MAX_DELEGATION_DEPTH} deep already; answer without `{}`",
                        self.name
                    ));
                }
                let messages = [Message::new("user", text("task"))];
                match agent.complete(&messages, DELEGATE_MAX_TOKENS, self.timeout, depth + 1).await {
                    Ok(answer) => ToolResult::ok(untrusted(&answer.text)),
                    Err(e) => ToolResult::error(e),
                }
            }
            Action::Mcp { client, remote_name } => match client.call_tool(remote_name, arguments.clone()).await {
                Ok(result) if result.is_error => ToolResult::error(untrusted(&result.text)),
                Ok(result) => ToolResult::ok(untrusted(&result.text)),
                Err(e) => ToolResult::error(e),
            },
        }
    }

    /// Checks arguments against the schema; the error lists every problem.
    pub fn check(&self, arguments: &Value) -> Result<(), String> {
        schema::validate(&self.schema, arguments)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
    }
}

fn object_schema(properties: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

/// Reads an OpenAPI document from `<dir>/<configmap>/<key>`; without a key, the directory's
/// only file (or `<dir>/<configmap>` itself when it is a file).
fn read_openapi(dir: &Path, name: &str, key: Option<&str>) -> Result<String, String> {
    let base = dir.join(name);
    let path = match key {
        Some(key) => base.join(key),
        None if base.is_file() => base,
        None => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&base)
                .map_err(|e| format!("cannot read {}: {e}", base.display()))?
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
                .collect();
            if files.len() != 1 {
                return Err(format!("{} holds {} files: set configMapRef.key", base.display(), files.len()));
            }
            files.remove(0)
        }
    };
    std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Builds the tools of a spec. Every error names the spec field at fault.
pub async fn build_tools(spec: &AgentSpec, env: &ToolEnv<'_>) -> Result<Vec<Tool>, String> {
    let mut tools: Vec<Tool> = Vec::new();
    for (i, entry) in spec.tools.iter().enumerate() {
        let field = format!("spec.tools[{i}]");
        if entry.calculator.is_some() {
            tools.push(Tool {
                name: "calculator".into(),
                description: "Evaluates an arithmetic expression exactly (+ - * / % ^, parentheses, sqrt, \
                              round, min, max, ...). Use it for every calculation."
                    .into(),
                schema: object_schema(
                    json!({"expression": {"type": "string", "minLength": 1, "maxLength": 1000}}),
                    &["expression"],
                ),
                timeout: Duration::from_secs(1),
                action: Action::Calculator,
            });
        } else if let Some(retrieval) = &entry.retrieval {
            let kb = (env.knowledge_base)(&retrieval.knowledge_base).ok_or_else(|| {
                format!("{field}.retrieval.knowledgeBase: `{}` is not served here", retrieval.knowledge_base)
            })?;
            tools.push(Tool {
                name: format!("search_{}", retrieval.knowledge_base.replace('-', "_")),
                description: format!(
                    "Searches the knowledge base `{}` and returns the best passages with their sources.",
                    retrieval.knowledge_base
                ),
                schema: object_schema(
                    json!({
                        "query": {"type": "string", "minLength": 1, "maxLength": 2000},
                        "top_k": {"type": "integer", "minimum": 1, "maximum": 20}
                    }),
                    &["query"],
                ),
                timeout: Duration::from_secs(30),
                action: Action::Retrieval { kb, top_k: retrieval.top_k },
            });
        } else if let Some(http) = &entry.http {
            let source = &http.openapi.config_map_ref;
            let document = read_openapi(&env.openapi_dir, &source.name, source.key.as_deref())
                .map_err(|e| format!("{field}.http.openapi: {e}"))?;
            let operations =
                http_tool::parse_operations(&document, &http.allow).map_err(|e| format!("{field}.http: {e}"))?;
            let client = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| format!("{field}.http: {e}"))?;
            for operation in operations {
                tools.push(Tool {
                    name: operation.operation_id.clone(),
                    description: format!("{} (HTTP {} {})", operation.description, operation.method, operation.path),
                    schema: operation.arguments_schema(),
                    timeout: Duration::from_secs(http.timeout_seconds.into()),
                    action: Action::Http {
                        operation: Box::new(operation),
                        base_url: http.base_url.clone(),
                        client: client.clone(),
                        max_bytes: http.max_response_bytes as usize,
                    },
                });
            }
        } else if let Some(delegate) = &entry.agent {
            let agent = (env.agent)(&delegate.name)
                .ok_or_else(|| format!("{field}.agent.name: the Agent `{}` is not known here", delegate.name))?;
            tools.push(Tool {
                name: format!("ask_{}", delegate.name.replace('-', "_")),
                description: format!(
                    "Delegates a self-contained sub-task to the agent `{}` and returns its answer.",
                    delegate.name
                ),
                schema: object_schema(
                    json!({"task": {"type": "string", "minLength": 1, "maxLength": 4000}}),
                    &["task"],
                ),
                timeout: Duration::from_secs(spec.guardrails.max_run_seconds.into()),
                action: Action::Delegate { agent },
            });
        } else if let Some(mcp) = &entry.mcp {
            let timeout = Duration::from_secs(mcp.timeout_seconds.into());
            let client = McpClient::connect(&mcp.url, timeout).await.map_err(|e| format!("{field}.mcp.url: {e}"))?;
            let listed = client.list_tools().await.map_err(|e| format!("{field}.mcp.url: {e}"))?;
            for wanted in &mcp.allow {
                if !listed.iter().any(|t| &t.name == wanted) {
                    return Err(format!("{field}.mcp.allow: the server at {} has no tool `{wanted}`", mcp.url));
                }
            }
            let client = Arc::new(client);
            for remote in listed.into_iter().filter(|t| mcp.allow.is_empty() || mcp.allow.contains(&t.name)) {
                tools.push(Tool {
                    name: remote.name.clone(),
                    description: remote.description.clone(),
                    schema: remote.input_schema.clone(),
                    timeout,
                    action: Action::Mcp { client: client.clone(), remote_name: remote.name },
                });
            }
        }
    }
    for (i, tool) in tools.iter().enumerate() {
        if tools[..i].iter().any(|t| t.name == tool.name) {
            return Err(format!("spec.tools: two tools are named `{}`; each tool name must be unique", tool.name));
        }
    }
    for name in &spec.guardrails.require_approval {
        if !tools.iter().any(|t| &t.name == name) {
            return Err(format!("spec.guardrails.requireApproval: no tool is named `{name}`"));
        }
    }
    Ok(tools)
}
