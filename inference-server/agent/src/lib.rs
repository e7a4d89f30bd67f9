//! Agents: a ReAct runtime (observe → reason → act → reflect) with tools, tiered memory,
//! traces and guardrails.
//!
//! A run shows the model the agent's instructions, its tools, what it remembers and the
//! goal; the model answers each step with a tool call or a final answer (see [`prompt`]).
//! A tool call runs only when the tool exists in this agent's spec, its arguments pass the
//! tool's schema, the run still has tool calls left, and the tool is not held for approval;
//! its output comes back as an observation delimited as untrusted data, and the model is
//! asked to reflect (or, when the tool failed, to re-plan). Malformed output gets one
//! corrective re-prompt, then the run fails cleanly. Every run stops on a final answer,
//! maxIterations, maxToolCalls, the token budget or the wall-clock budget, and says which.
//! Every step is recorded with its thought, action, arguments, observation, timings and
//! tokens.

pub mod calculator;
pub mod http_tool;
pub mod llm;
pub mod mcp;
pub mod memory;
pub mod metrics;
pub mod prompt;
pub mod schema;
pub mod tools;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hearth_crds::AgentSpec;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use hearth_knowledge::{KnowledgeBase, MEMORY_SOURCE_PREFIX, QueryRequest};
use llm::{ChatClient, LlmError, Message};
use memory::MemoryStore;
use metrics::{AgentMetrics, RunLabels, ToolLabels};
use prompt::{Decision, ToolCard, parse_decision, untrusted};
use tools::Tool;

/// Most tokens one reasoning step may generate.
const STEP_MAX_TOKENS: u32 = 384;
/// Runs kept for `GET /v1/agents/{name}/runs/{id}` (pending ones are never dropped).
const KEPT_RUNS: usize = 256;
/// Episodes and long-term facts recalled into a prompt.
const RECALLED: usize = 3;
/// Share of the token budget recalled short-term turns may take.
const SHORT_TERM_SHARE: usize = 4;

/// Where a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Working.
    Running,
    /// Waiting for a person to approve or reject a tool call.
    PendingApproval,
    /// Ended with a final answer.
    Completed,
    /// Ended without one (a budget, malformed output, the model failing).
    Failed,
}

/// Why a run stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model answered.
    FinalAnswer,
    /// spec.maxIterations steps were taken.
    MaxIterations,
    /// spec.guardrails.maxToolCalls tools were called.
    MaxToolCalls,
    /// spec.guardrails.maxTokensPerRun tokens were used.
    TokenBudget,
    /// spec.guardrails.maxRunSeconds passed.
    TimeBudget,
    /// The model's output could not be read, even after a corrective re-prompt.
    MalformedOutput,
    /// The model could not be reached or failed.
    ModelError,
}

impl StopReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::FinalAnswer => "final_answer",
            Self::MaxIterations => "max_iterations",
            Self::MaxToolCalls => "max_tool_calls",
            Self::TokenBudget => "token_budget",
            Self::TimeBudget => "time_budget",
            Self::MalformedOutput => "malformed_output",
            Self::ModelError => "model_error",
        }
    }
}

/// What became of a step's action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// The model answered.
    FinalAnswer,
    /// The tool ran and succeeded.
    ToolOk,
    /// The tool ran and failed (or timed out); the model was asked to re-plan.
    ToolError,
    /// The model named a tool this agent does not have; nothing ran.
    UnknownTool,
    /// The arguments failed the tool's schema; nothing ran.
    InvalidArguments,
    /// The output was not a valid step; the model was re-prompted.
    MalformedOutput,
    /// The call waits for approval.
    PendingApproval,
    /// A person rejected the call; nothing ran.
    Rejected,
    /// The run was out of tool calls; nothing ran.
    Refused,
}

/// One step of a run's trace.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Step {
    /// 1-based.
    pub index: usize,
    /// The model's reasoning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thought: Option<String>,
    /// The tool called, when one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Its arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
    /// What the model was shown back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observation: Option<String>,
    /// What became of the action.
    pub outcome: StepOutcome,
    /// The model's raw reply.
    pub output: String,
    /// Time the model took, in milliseconds.
    pub model_ms: u64,
    /// Time the tool took, in milliseconds.
    pub tool_ms: u64,
    /// Prompt tokens of the model call.
    pub prompt_tokens: u64,
    /// Tokens the model generated.
    pub completion_tokens: u64,
    /// The cascade stage that answered, when the agent reasons with a Cascade.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}

/// A tool call waiting for approval.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingCall {
    /// The tool.
    pub tool: String,
    /// Its arguments.
    pub arguments: Value,
    /// The step that asked for it.
    pub step: usize,
}

/// Token counts of a run.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct RunUsage {
    /// Prompt tokens over every model call.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
    /// Their sum, what maxTokensPerRun bounds.
    pub total_tokens: u64,
}

/// A run and its whole trace.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    /// Its id.
    pub id: String,
    /// The agent.
    pub agent: String,
    /// The conversation (memory is kept per conversation).
    pub conversation_id: String,
    /// The user, when given (episodic and long-term memory are recalled per user).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The goal.
    pub input: String,
    /// Where it is.
    pub status: RunStatus,
    /// Why it stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<StopReason>,
    /// The final answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// What went wrong, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The call waiting for approval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingCall>,
    /// Every step.
    pub steps: Vec<Step>,
    /// Tools run.
    pub tool_calls: u32,
    /// Tokens used.
    pub usage: RunUsage,
    /// Unix seconds it started.
    pub created: u64,
    /// Time spent running (waiting for approval excluded), in milliseconds.
    pub duration_ms: u64,
    /// What the model has been shown so far (to resume after approval).
    #[serde(skip)]
    messages: Vec<Message>,
    /// Whether the last step was a corrective re-prompt.
    #[serde(skip)]
    corrected: bool,
    /// Delegation depth of the request that started it.
    #[serde(skip)]
    depth: u32,
}

/// A request for a run.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RunRequest {
    /// The goal.
    pub input: String,
    /// Continue this conversation (a new one when omitted; the run returns its id).
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// Who asks; episodic and long-term memory are recalled per user.
    #[serde(default)]
    pub user: Option<String>,
    /// Earlier turns sent by the client (the chat API); when given they replace the stored
    /// short-term memory of the conversation.
    #[serde(skip)]
    pub history: Vec<Message>,
}

/// Why a run request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A field is wrong.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What was expected.
        message: String,
    },
    /// No run of this id.
    #[error("no run `{0}`")]
    NotFound(String),
    /// The run is not waiting for approval.
    #[error("run `{id}` is {status:?}, not waiting for approval")]
    NotPending {
        /// The run.
        id: String,
        /// Where it is.
        status: RunStatus,
    },
    /// Delegation went too deep.
    #[error("agents are nested {0} deep; the limit is {max}", max = llm::MAX_DELEGATION_DEPTH)]
    TooDeep(u32),
}

/// What a step leaves the run to do next.
enum Next {
    /// Take another step.
    Continue,
    /// The run is over, for this reason.
    Stop(StopReason),
    /// A tool call waits for a person's approval; the run is kept as it is.
    AwaitApproval,
}

/// An agent being served.
pub struct AgentRuntime {
    name: String,
    spec: AgentSpec,
    llm: ChatClient,
    tools: Vec<Tool>,
    system: String,
    /// The answer format again, right before the model answers: small models follow the
    /// instruction nearest the end.
    reminder: String,
    /// The `response_format` every step is asked with (see [`prompt::step_format`]).
    step_format: Value,
    memory: Arc<MemoryStore>,
    long_term: Option<Arc<KnowledgeBase>>,
    metrics: AgentMetrics,
    runs: Mutex<RunTable>,
}

#[derive(Default)]
struct RunTable {
    runs: BTreeMap<String, Run>,
    order: VecDeque<String>,
}

impl AgentRuntime {
    /// An agent reasoning with `llm`, using `tools`, remembering in `memory` (and, for
    /// long-term facts, in `long_term`).
    pub fn new(
        name: &str,
        spec: AgentSpec,
        llm: ChatClient,
        tools: Vec<Tool>,
        memory: Arc<MemoryStore>,
        long_term: Option<Arc<KnowledgeBase>>,
        metrics: AgentMetrics,
    ) -> Self {
        let cards: Vec<ToolCard<'_>> =
            tools.iter().map(|t| ToolCard { name: &t.name, description: &t.description, schema: &t.schema }).collect();
        let system = prompt::system_message(spec.system_prompt.as_deref(), &cards);
        let reminder = prompt::reminder(&cards);
        let step_format = prompt::step_format(&cards);
        Self {
            name: name.to_owned(),
            spec,
            llm,
            tools,
            system,
            reminder,
            step_format,
            memory,
            long_term,
            metrics,
            runs: Mutex::default(),
        }
    }

    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its tools' names.
    pub fn tool_names(&self) -> Vec<&str> {
        self.tools.iter().map(|t| t.name.as_str()).collect()
    }

    /// A run recorded earlier.
    pub fn get(&self, id: &str) -> Option<Run> {
        self.runs.lock().ok()?.runs.get(id).cloned()
    }

    fn keep(&self, run: &Run) {
        let Ok(mut table) = self.runs.lock() else { return };
        if table.runs.insert(run.id.clone(), run.clone()).is_none() {
            table.order.push_back(run.id.clone());
        }
        // Drop the oldest finished runs beyond the limit; pending ones stay.
        let mut scanned = 0;
        while table.runs.len() > KEPT_RUNS && scanned < table.order.len() {
            let Some(oldest) = table.order.pop_front() else { break };
            if table.runs.get(&oldest).is_some_and(|r| r.status == RunStatus::PendingApproval) {
                table.order.push_back(oldest);
                scanned += 1;
            } else {
                table.runs.remove(&oldest);
            }
        }
    }

    /// Starts a run and drives it until it ends or waits for approval.
    pub async fn start(&self, request: RunRequest, depth: u32) -> Result<Run, RunError> {
        if depth > llm::MAX_DELEGATION_DEPTH {
            return Err(RunError::TooDeep(depth));
        }
        let input = request.input.trim().to_owned();
        if input.is_empty() {
            return Err(RunError::Invalid { field: "input", message: "the goal must not be empty".into() });
        }
        let id = format!("run-{}", crate::random_id());
        let conversation_id = request.conversation_id.filter(|c| !c.trim().is_empty()).unwrap_or_else(|| id.clone());
        let mut run = Run {
            id,
            agent: self.name.clone(),
            conversation_id,
            user: request.user.filter(|u| !u.trim().is_empty()),
            input,
            status: RunStatus::Running,
            stop_reason: None,
            answer: None,
            error: None,
            pending: None,
            steps: Vec::new(),
            tool_calls: 0,
            usage: RunUsage::default(),
            created: hearth_openai::unix_now(),
            duration_ms: 0,
            messages: Vec::new(),
            corrected: false,
            depth,
        };
        run.messages = self.opening_messages(&run, request.history).await;
        self.drive(&mut run).await;
        Ok(run)
    }

    /// Approves (runs the held call) or rejects (tells the model so) a pending run, then
    /// drives it on.
    pub async fn decide(&self, id: &str, approve: bool, reason: Option<String>) -> Result<Run, RunError> {
        let mut run = self.get(id).ok_or_else(|| RunError::NotFound(id.to_owned()))?;
        let pending = match (&run.status, run.pending.take()) {
            (RunStatus::PendingApproval, Some(pending)) => pending,
            (status, _) => return Err(RunError::NotPending { id: id.to_owned(), status: *status }),
        };
        run.status = RunStatus::Running;
        let started = Instant::now();
        let tool = self.tools.iter().find(|t| t.name == pending.tool);
        let (outcome, observation, tool_ms) = match (approve, tool) {
            (true, Some(tool)) => {
                let (result, ms) = self.execute(tool, &pending.arguments, run.depth).await;
                run.tool_calls += 1;
                let outcome = if result.ok { StepOutcome::ToolOk } else { StepOutcome::ToolError };
                (outcome, result.observation, ms)
            }
            (true, None) => (StepOutcome::UnknownTool, format!("error: there is no tool `{}`", pending.tool), 0),
            (false, _) => {
                let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
                (StepOutcome::Rejected, format!("error: a person rejected this call of `{}`{why}", pending.tool), 0)
            }
        };
        if let Some(step) = run.steps.iter_mut().find(|s| s.index == pending.step) {
            step.outcome = outcome;
            step.observation = Some(observation.clone());
            step.tool_ms = tool_ms;
        }
        run.messages.push(Message::new("user", observation_message(&pending.tool, &observation, outcome)));
        run.duration_ms += started.elapsed().as_millis() as u64;
        self.drive(&mut run).await;
        Ok(run)
    }

    /// The system message, what is remembered, the conversation so far and the goal.
    async fn opening_messages(&self, run: &Run, history: Vec<Message>) -> Vec<Message> {
        let mut system = self.system.clone();
        let mut recalled = Vec::new();
        if self.spec.memory.episodic {
            match self.memory.episodes(&self.name, &run.conversation_id, run.user.as_deref(), RECALLED) {
                Ok(episodes) => recalled.extend(episodes.into_iter().map(|e| format!("Earlier run: {}", e.summary))),
                Err(e) => tracing::warn!(agent = %self.name, "episodic memory unavailable: {e}"),
            }
        }
        if let Some(kb) = &self.long_term {
            let request = QueryRequest {
                query: run.input.clone(),
                top_k: Some(RECALLED),
                sources: Some(vec![self.memory_source(run)]),
                ..QueryRequest::default()
            };
            match kb.query(&request).await {
                Ok(hits) => recalled.extend(hits.into_iter().map(|h| format!("Fact: {}", h.text))),
                Err(e) => tracing::warn!(agent = %self.name, "long-term memory unavailable: {e}"),
            }
        }
        if !recalled.is_empty() {
            system.push_str("\n\nWhat you remember from earlier runs:\n");
            system.push_str(&untrusted(&recalled.join("\n")));
        }
        let mut messages = vec![Message::new("system", system)];
        let turns = self.spec.memory.short_term_turns as usize;
        let budget = self.spec.guardrails.max_tokens_per_run as usize / SHORT_TERM_SHARE;
        let history = if history.is_empty() {
            self.memory.recent_turns(&self.name, &run.conversation_id, turns, budget).unwrap_or_else(|e| {
                tracing::warn!(agent = %self.name, "short-term memory unavailable: {e}");
                Vec::new()
            })
        } else {
            let skip = history.len().saturating_sub(turns);
            history.into_iter().skip(skip).filter(|m| m.role == "user" || m.role == "assistant").collect()
        };
        messages.extend(history);
        messages.push(Message::new("user", format!("Goal: {}\n\n{}", run.input, self.reminder)));
        messages
    }

    fn memory_source(&self, run: &Run) -> String {
        let whose = run
            .user
            .as_deref()
            .map_or_else(|| format!("conversation:{}", run.conversation_id), |u| format!("user:{u}"));
        format!("{MEMORY_SOURCE_PREFIX}{}:{whose}", self.name)
    }

    async fn execute(&self, tool: &Tool, arguments: &Value, depth: u32) -> (tools::ToolResult, u64) {
        let started = Instant::now();
        let result = tool.call(arguments, depth).await;
        let labels = ToolLabels {
            agent: self.name.clone(),
            tool: tool.name.clone(),
            outcome: if result.ok { "ok" } else { "error" },
        };
        self.metrics.tool_calls.get_or_create(&labels).inc();
        (result, started.elapsed().as_millis() as u64)
    }

    /// Steps the run until it ends or waits; records it.
    async fn drive(&self, run: &mut Run) {
        let started = Instant::now();
        let already = Duration::from_millis(run.duration_ms);
        let stop = loop {
            match self.step(run, already + started.elapsed()).await {
                Next::Continue => {}
                Next::Stop(reason) => break reason,
                Next::AwaitApproval => {
                    run.status = RunStatus::PendingApproval;
                    run.duration_ms = (already + started.elapsed()).as_millis() as u64;
                    self.metrics.runs.get_or_create(&RunLabels::outcome(&self.name, "pending_approval")).inc();
                    self.keep(run);
                    return;
                }
            }
        };
        run.duration_ms = (already + started.elapsed()).as_millis() as u64;
        run.stop_reason = Some(stop);
        run.status = if stop == StopReason::FinalAnswer { RunStatus::Completed } else { RunStatus::Failed };
        if run.status == RunStatus::Failed && run.error.is_none() {
            run.error = Some(format!("the run stopped: {}", stop.as_str()));
        }
        self.metrics.runs.get_or_create(&RunLabels::outcome(&self.name, stop.as_str())).inc();
        self.metrics.run_duration.get_or_create(&RunLabels::agent(&self.name)).observe(run.duration_ms as f64 / 1000.0);
        self.remember(run).await;
        self.keep(run);
    }

    /// One observe → reason step, `elapsed` into the run: checks the budgets, asks the model,
    /// reads its decision (one corrective re-prompt when it cannot be read) and acts on it.
    async fn step(&self, run: &mut Run, elapsed: Duration) -> Next {
        let budget = Duration::from_secs(self.spec.guardrails.max_run_seconds.into());
        if run.steps.len() >= self.spec.max_iterations as usize {
            return Next::Stop(StopReason::MaxIterations);
        }
        if run.usage.total_tokens >= u64::from(self.spec.guardrails.max_tokens_per_run) {
            return Next::Stop(StopReason::TokenBudget);
        }
        let Some(left) = budget.checked_sub(elapsed).filter(|d| !d.is_zero()) else {
            return Next::Stop(StopReason::TimeBudget);
        };
        let tokens_left = u64::from(self.spec.guardrails.max_tokens_per_run) - run.usage.total_tokens;
        let max_tokens = STEP_MAX_TOKENS.min(tokens_left.min(u64::from(u32::MAX)) as u32).max(1);
        let model_started = Instant::now();
        let completion =
            match self.llm.complete_as(&run.messages, max_tokens, left, run.depth, Some(&self.step_format)).await {
                Ok(completion) => completion,
                Err(LlmError::Timeout { .. }) => return Next::Stop(StopReason::TimeBudget),
                Err(e) => {
                    run.error = Some(e.to_string());
                    return Next::Stop(StopReason::ModelError);
                }
            };
        run.usage.prompt_tokens += completion.prompt_tokens;
        run.usage.completion_tokens += completion.completion_tokens;
        run.usage.total_tokens += completion.prompt_tokens + completion.completion_tokens;
        self.metrics.steps.get_or_create(&RunLabels::agent(&self.name)).inc();
        let mut step = Step {
            index: run.steps.len() + 1,
            thought: None,
            action: None,
            arguments: None,
            observation: None,
            outcome: StepOutcome::MalformedOutput,
            output: completion.text.clone(),
            model_ms: model_started.elapsed().as_millis() as u64,
            tool_ms: 0,
            prompt_tokens: completion.prompt_tokens,
            completion_tokens: completion.completion_tokens,
            stage: completion.stage,
        };
        run.messages.push(Message::new("assistant", completion.text.clone()));
        let decision = match parse_decision(&completion.text) {
            Ok(decision) => decision,
            Err(problem) => {
                step.observation = Some(format!("error: {problem}"));
                run.steps.push(step);
                if run.corrected {
                    run.error = Some(format!("the model's output could not be read twice in a row: {problem}"));
                    return Next::Stop(StopReason::MalformedOutput);
                }
                run.corrected = true;
                run.messages.push(Message::new(
                    "user",
                    format!(
                        "Your reply could not be read: {problem}. Reply with exactly one JSON object: \
                         {{\"thought\": ..., \"action\": ..., \"arguments\": {{...}}}} or \
                         {{\"thought\": ..., \"final_answer\": ...}}."
                    ),
                ));
                return Next::Continue;
            }
        };
        run.corrected = false;
        match decision {
            Decision::Finish { thought, answer } => {
                step.thought = thought;
                step.outcome = StepOutcome::FinalAnswer;
                run.steps.push(step);
                run.answer = Some(answer);
                Next::Stop(StopReason::FinalAnswer)
            }
            Decision::Act { thought, action, arguments } => {
                step.thought = thought;
                self.act(run, step, action, arguments).await
            }
        }
    }

    /// Acts on a tool call: refuses an unknown tool or invalid arguments (the model sees why),
    /// stops when no tool calls are left, holds a call that needs approval, or runs the tool;
    /// the observation goes back to the model.
    async fn act(&self, run: &mut Run, mut step: Step, action: String, arguments: Value) -> Next {
        step.action = Some(action.clone());
        step.arguments = Some(arguments.clone());
        let tool = self.tools.iter().find(|t| t.name == action);
        let (outcome, observation) = match tool {
            None => {
                let names = self.tool_names().join(", ");
                (StepOutcome::UnknownTool, format!("error: there is no tool `{action}`; the tools are: {names}"))
            }
            Some(tool) => match tool.check(&arguments) {
                Err(problems) => {
                    (StepOutcome::InvalidArguments, format!("error: invalid arguments for `{action}`: {problems}"))
                }
                Ok(()) if run.tool_calls >= self.spec.guardrails.max_tool_calls => {
                    step.outcome = StepOutcome::Refused;
                    step.observation = Some("error: the run has no tool calls left".into());
                    run.steps.push(step);
                    return Next::Stop(StopReason::MaxToolCalls);
                }
                Ok(()) if self.spec.guardrails.require_approval.contains(&action) => {
                    step.outcome = StepOutcome::PendingApproval;
                    run.pending = Some(PendingCall { tool: action, arguments, step: step.index });
                    run.steps.push(step);
                    return Next::AwaitApproval;
                }
                Ok(()) => {
                    let (result, ms) = self.execute(tool, &arguments, run.depth).await;
                    run.tool_calls += 1;
                    step.tool_ms = ms;
                    let outcome = if result.ok { StepOutcome::ToolOk } else { StepOutcome::ToolError };
                    (outcome, result.observation)
                }
            },
        };
        if matches!(outcome, StepOutcome::UnknownTool | StepOutcome::InvalidArguments) {
            let labels = ToolLabels { agent: self.name.clone(), tool: "-".into(), outcome: "refused" };
            self.metrics.tool_calls.get_or_create(&labels).inc();
        }
        step.outcome = outcome;
        step.observation = Some(observation.clone());
        run.steps.push(step);
        run.messages.push(Message::new("user", observation_message(&action, &observation, outcome)));
        Next::Continue
    }

    /// Writes the run into memory: its turns, its episode, and (answered) a long-term fact.
    async fn remember(&self, run: &Run) {
        let answer = run.answer.clone().unwrap_or_default();
        if run.status == RunStatus::Completed {
            let turns = [Message::new("user", run.input.clone()), Message::new("assistant", answer.clone())];
            if let Err(e) = self.memory.append_turns(&self.name, &run.conversation_id, &turns) {
                tracing::warn!(agent = %self.name, "cannot store the turns: {e}");
            }
        }
        if self.spec.memory.episodic
            && let Err(e) =
                self.memory.add_episode(&self.name, &run.conversation_id, run.user.as_deref(), &episode_summary(run))
        {
            tracing::warn!(agent = %self.name, "cannot store the episode: {e}");
        }
        if let (Some(kb), RunStatus::Completed) = (&self.long_term, run.status) {
            let fact = format!("Q: {}\nA: {}", clip(&run.input, 500), clip(&answer, 1000));
            if let Err(e) = kb.remember(&self.memory_source(run), &fact).await {
                tracing::warn!(agent = %self.name, "cannot store the long-term memory: {e}");
            }
        }
    }
}

/// A random 128-bit id in hex.
pub fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// What the model is told after an action.
fn observation_message(tool: &str, observation: &str, outcome: StepOutcome) -> String {
    match outcome {
        StepOutcome::ToolOk => format!(
            "Observation from `{tool}`:\n{observation}\nReflect on it. If it is enough, reply with \
             {{\"thought\": ..., \"final_answer\": ...}} where final_answer answers the goal itself \
             (not a judgement of this observation); otherwise call another tool. Reply with one JSON object."
        ),
        _ => format!(
            "The call of `{tool}` did not succeed:\n{observation}\nRe-plan: fix the arguments, use another tool, \
             or give your final answer with what you know. Reply with the next JSON object."
        ),
    }
}

fn clip(text: &str, chars: usize) -> String {
    let mut out: String = text.chars().take(chars).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// A run's episode, written without a model call: the goal, the tools used, how it ended.
fn episode_summary(run: &Run) -> String {
    let mut used: BTreeMap<&str, usize> = BTreeMap::new();
    for step in &run.steps {
        if let (Some(action), StepOutcome::ToolOk | StepOutcome::ToolError) = (&step.action, step.outcome) {
            *used.entry(action.as_str()).or_default() += 1;
        }
    }
    let tools = if used.is_empty() {
        "no tools".to_owned()
    } else {
        used.iter()
            .map(|(t, n)| if *n > 1 { format!("{t}×{n}") } else { (*t).to_owned() })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ending = match (&run.answer, run.stop_reason) {
        (Some(answer), _) => format!("answered: {}", clip(answer, 300)),
        (None, Some(reason)) => format!("stopped without an answer ({})", reason.as_str()),
        (None, None) => "unfinished".to_owned(),
    };
    format!("goal: {}; used {tools}; {ending}", clip(&run.input, 200))
}
