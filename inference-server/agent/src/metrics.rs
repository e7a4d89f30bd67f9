//! The agents' Prometheus metrics. Labels are bounded: agents and tools come from the specs,
//! outcomes from fixed lists.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-agent series; `outcome` is empty where it does not apply.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    /// The Agent's name.
    pub agent: String,
    /// How runs ended: final_answer, max_iterations, max_tool_calls, token_budget,
    /// time_budget, malformed_output, model_error or pending_approval.
    pub outcome: &'static str,
}

impl RunLabels {
    /// Labels of an agent without an outcome.
    pub fn agent(agent: &str) -> Self {
        Self { agent: agent.to_owned(), outcome: "" }
    }
    /// Labels of an agent and an outcome.
    pub fn outcome(agent: &str, outcome: &'static str) -> Self {
        Self { agent: agent.to_owned(), outcome }
    }
}

/// Labels of tool calls.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabels {
    /// The Agent's name.
    pub agent: String,
    /// The tool (`-` for calls refused before any tool was chosen).
    pub tool: String,
    /// ok, error or refused (unknown tool or invalid arguments: nothing ran).
    pub outcome: &'static str,
}

/// Every agent metric.
#[derive(Clone)]
pub struct AgentMetrics {
    /// Runs by how they ended.
    pub runs: Family<RunLabels, Counter>,
    /// Reasoning steps (model calls).
    pub steps: Family<RunLabels, Counter>,
    /// Tool calls by tool and outcome.
    pub tool_calls: Family<ToolLabels, Counter>,
    /// Run duration (waiting for approval excluded).
    pub run_duration: Family<RunLabels, Histogram, fn() -> Histogram>,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 16))
}

impl AgentMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            runs: Family::default(),
            steps: Family::default(),
            tool_calls: Family::default(),
            run_duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
        };
        registry.register("hearth_agent_runs", "Agent runs by how they ended", m.runs.clone());
        registry.register("hearth_agent_steps", "Reasoning steps (model calls) of agent runs", m.steps.clone());
        registry.register("hearth_agent_tool_calls", "Tool calls by tool and outcome", m.tool_calls.clone());
        registry.register(
            "hearth_agent_run_duration_seconds",
            "Agent run duration, waiting for approval excluded",
            m.run_duration.clone(),
        );
        m
    }
}
