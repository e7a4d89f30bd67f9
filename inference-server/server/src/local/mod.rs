//! Local mode: `hearth-server up -f stack.yaml` serves a whole stack (the same YAML a
//! cluster takes) from one process on one port. Models are fetched into the cache when
//! missing and loaded; each Cascade routes over this same process's loopback address, so
//! it runs exactly the code a cluster's router pod runs.
//!
//! In a stack file, `${VAR}` and `${VAR:-default}` in a source URI are replaced from the
//! environment, and `${HEARTH_MODELS}` is the model cache: `file://${HEARTH_MODELS}/x.gguf`
//! names a file `scripts/fetch-models.py` fetched, on any machine.

pub mod stack;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hearth_crds::model::ModelTask;
use hearth_crds::router::{RouterConfig, RouterStage};
use hearth_crds::{Agent, Cascade, KnowledgeBase, Model, Resource};

use hearth_engine::registry::ServingLimits;

/// A Model of the stack, resolved to what the process loads.
#[derive(Clone, Debug)]
pub struct LocalModel {
    /// The name clients pass as `model`.
    pub name: String,
    /// Chat or embeddings.
    pub task: ModelTask,
    /// The source URI with variables replaced.
    pub uri: String,
    /// Expected SHA-256 (of the file, or of `model.safetensors` in a directory).
    pub sha256: Option<String>,
    /// Limits from `spec.serving` and `spec.contextLength`.
    pub limits: ServingLimits,
}

/// What `up` serves, worked out from a stack before anything is loaded.
#[derive(Clone, Debug)]
pub struct StackPlan {
    /// Models, in document order.
    pub models: Vec<LocalModel>,
    /// Cascades, with every stage's endpoint left for [`StackPlan::routers`] to fill.
    pub cascades: Vec<Cascade>,
    /// Knowledge bases, served from the embedded store.
    pub knowledge_bases: Vec<KnowledgeBase>,
    /// Agents, reasoning through this process's own chat API.
    pub agents: Vec<Agent>,
}

/// Replaces `${VAR}` and `${VAR:-default}` from `lookup`; an unset variable without a
/// default is an error naming it.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("`${{` without a closing `}}` in {text:?}"))?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{inner}}}` is not a variable name"));
        }
        match lookup(name).filter(|v| !v.is_empty()).or_else(|| default.map(str::to_owned)) {
            Some(value) => out.push_str(&value),
            None => return Err(format!("the environment variable {name} is not set (write ${{{name}:-default}})")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn model_name(model: &Model) -> String {
    model.metadata.name.clone().unwrap_or_default()
}

/// Checks the stack as a whole (what a cluster resolves by name) and plans what to serve.
/// `models_dir` is what `${HEARTH_MODELS}` expands to.
pub fn plan(resources: Vec<Resource>, models_dir: &Path) -> anyhow::Result<StackPlan> {
    let lookup = |name: &str| {
        if name == "HEARTH_MODELS" { Some(models_dir.display().to_string()) } else { std::env::var(name).ok() }
    };
    let mut models = Vec::new();
    let mut cascades = Vec::new();
    let mut knowledge_bases = Vec::new();
    let mut agents = Vec::new();
    let mut errors = Vec::new();
    for resource in resources {
        match resource {
            Resource::Model(model) => {
                let name = model_name(&model);
                if models.iter().any(|m: &LocalModel| m.name == name) {
                    errors.push(format!("Model `{name}`: metadata.name: two Models share this name"));
                    continue;
                }
                match expand(&model.spec.source.uri, lookup) {
                    Ok(uri) => models.push(LocalModel {
                        name,
                        task: model.spec.task,
                        uri,
                        sha256: model.spec.source.sha256.clone(),
                        limits: ServingLimits::from(&model.spec),
                    }),
                    Err(e) => errors.push(format!("Model `{name}`: spec.source.uri: {e}")),
                }
            }
            Resource::Cascade(cascade) => cascades.push(*cascade),
            Resource::KnowledgeBase(kb) => knowledge_bases.push(*kb),
            Resource::Agent(agent) => agents.push(*agent),
        }
    }
    for cascade in &cascades {
        let name = cascade.metadata.name.clone().unwrap_or_default();
        if models.iter().any(|m| m.name == name) {
            errors.push(format!(
                "Cascade `{name}`: metadata.name: a Model has this name; clients could not tell them apart"
            ));
        }
        for (i, stage) in cascade.spec.stages.iter().enumerate() {
            match models.iter().find(|m| m.name == stage.model) {
                None => errors
                    .push(format!("Cascade `{name}`: spec.stages[{i}].model: no Model `{}` in the stack", stage.model)),
                Some(m) if m.task != ModelTask::Chat => errors.push(format!(
                    "Cascade `{name}`: spec.stages[{i}].model: `{}` is an embedding model; stages must be chat models",
                    stage.model
                )),
                Some(_) => {}
            }
        }
    }
    for kb in &knowledge_bases {
        let name = kb.metadata.name.clone().unwrap_or_default();
        match models.iter().find(|m| m.name == kb.spec.embedding.model) {
            None => errors.push(format!(
                "KnowledgeBase `{name}`: spec.embedding.model: no Model `{}` in the stack",
                kb.spec.embedding.model
            )),
            Some(m) if m.task != ModelTask::Embedding => errors.push(format!(
                "KnowledgeBase `{name}`: spec.embedding.model: `{}` is a chat model; it must have task: embedding",
                kb.spec.embedding.model
            )),
            Some(_) => {}
        }
        for (i, source) in kb.spec.sources.iter().enumerate() {
            if source.config_map.is_some() || source.pvc.is_some() {
                errors.push(format!(
                    "KnowledgeBase `{name}`: spec.sources[{i}]: configMap and pvc sources exist only in a cluster; \
                     use directory or url in local mode"
                ));
            }
        }
    }
    check_agents(&agents, &models, &cascades, &knowledge_bases, &mut errors);
    if !errors.is_empty() {
        bail!("the stack is inconsistent:\n  {}", errors.join("\n  "));
    }
    Ok(StackPlan { models, cascades, knowledge_bases, agents })
}

/// What a cluster resolves for Agents by name: the model or cascade, the knowledge bases and
/// the agents delegated to must be in the stack; names must not collide with other
/// `model` names.
fn check_agents(
    agents: &[Agent],
    models: &[LocalModel],
    cascades: &[Cascade],
    knowledge_bases: &[KnowledgeBase],
    errors: &mut Vec<String>,
) {
    let named = |name: &Option<String>, wanted: &str| name.as_deref() == Some(wanted);
    for agent in agents {
        let name = agent.metadata.name.clone().unwrap_or_default();
        if models.iter().any(|m| m.name == name) || cascades.iter().any(|c| named(&c.metadata.name, &name)) {
            errors.push(format!(
                "Agent `{name}`: metadata.name: a Model or Cascade has this name; clients could not tell them apart"
            ));
        }
        if agents.iter().filter(|a| named(&a.metadata.name, &name)).count() > 1 {
            errors.push(format!("Agent `{name}`: metadata.name: two Agents share this name"));
        }
        match (&agent.spec.model.model, &agent.spec.model.cascade) {
            (Some(model), _) => match models.iter().find(|m| &m.name == model) {
                None => errors.push(format!("Agent `{name}`: spec.model.model: no Model `{model}` in the stack")),
                Some(m) if m.task != ModelTask::Chat => errors.push(format!(
                    "Agent `{name}`: spec.model.model: `{model}` is an embedding model; agents reason with chat models"
                )),
                Some(_) => {}
            },
            (None, Some(cascade)) => {
                if !cascades.iter().any(|c| named(&c.metadata.name, cascade)) {
                    errors.push(format!("Agent `{name}`: spec.model.cascade: no Cascade `{cascade}` in the stack"));
                }
            }
            (None, None) => errors.push(format!("Agent `{name}`: spec.model: set model or cascade")),
        }
        let mut wanted_kbs: Vec<(String, &str)> = Vec::new();
        for (i, tool) in agent.spec.tools.iter().enumerate() {
            if let Some(retrieval) = &tool.retrieval {
                wanted_kbs.push((format!("spec.tools[{i}].retrieval.knowledgeBase"), &retrieval.knowledge_base));
            }
            if let Some(delegate) = &tool.agent
                && !agents.iter().any(|a| named(&a.metadata.name, &delegate.name))
            {
                errors.push(format!(
                    "Agent `{name}`: spec.tools[{i}].agent.name: no Agent `{}` in the stack",
                    delegate.name
                ));
            }
        }
        if let Some(long_term) = &agent.spec.memory.long_term {
            wanted_kbs.push(("spec.memory.longTerm.knowledgeBase".into(), &long_term.knowledge_base));
        }
        for (field, kb) in wanted_kbs {
            if !knowledge_bases.iter().any(|k| named(&k.metadata.name, kb)) {
                errors.push(format!("Agent `{name}`: {field}: no KnowledgeBase `{kb}` in the stack"));
            }
        }
    }
}

impl StackPlan {
    /// Router configurations whose stages call `base` (this process, e.g.
    /// `http://127.0.0.1:8080/v1`), with each Model's price.
    pub fn routers(&self, base: &str, stack: &[Model]) -> Vec<RouterConfig> {
        let prices: BTreeMap<String, _> =
            stack.iter().filter_map(|m| Some((model_name(m), m.spec.cost.clone()?))).collect();
        self.cascades
            .iter()
            .map(|cascade| RouterConfig {
                name: cascade.metadata.name.clone().unwrap_or_default(),
                namespace: "local".into(),
                confidence: cascade.spec.confidence,
                max_escalation_ratio: cascade.spec.max_escalation_ratio,
                escalation_window: cascade.spec.escalation_window,
                stages: cascade
                    .spec
                    .stages
                    .iter()
                    .map(|stage| RouterStage {
                        model: stage.model.clone(),
                        endpoint: base.to_owned(),
                        min_confidence: stage.min_confidence,
                        timeout_seconds: stage.timeout_seconds,
                        cost: prices.get(&stage.model).cloned(),
                    })
                    .collect(),
            })
            .collect()
    }
}

/// Makes a model's weights local: fetches remote sources into `cache` (with a progress
/// bar), checks the SHA-256, and returns the path to load.
pub async fn materialize(model: &LocalModel, cache: &Path, progress: bool) -> anyhow::Result<PathBuf> {
    let fetched = crate::fetch::fetch(&model.uri, model.sha256.as_deref(), cache, progress)
        .await
        .with_context(|| format!("Model `{}`: spec.source.uri", model.name))?;
    let path = fetched.path;
    if path.is_dir()
        && let Some(expected) = &model.sha256
    {
        let weights = path.join("model.safetensors");
        let found = crate::fetch::sha256_file(&weights)
            .with_context(|| format!("Model `{}`: cannot read {}", model.name, weights.display()))?;
        if !found.eq_ignore_ascii_case(expected) {
            bail!(
                "Model `{}`: spec.source.sha256: {} has SHA-256 {found}, expected {expected}; not serving it",
                model.name,
                weights.display()
            );
        }
    }
    Ok(path)
}

/// The Models of a stack.
pub fn stack_models(resources: &[Resource]) -> Vec<Model> {
    resources
        .iter()
        .filter_map(|r| match r {
            Resource::Model(m) => Some((**m).clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/me".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn variables_expand_with_defaults() {
        assert_eq!(expand("file://${HOME}/m.gguf", env).unwrap(), "file:///home/me/m.gguf");
        assert_eq!(expand("a${MISSING:-b}c", env).unwrap(), "abc");
        assert_eq!(expand("${EMPTY:-d}", env).unwrap(), "d", "an empty variable takes the default");
        assert_eq!(expand("no variables", env).unwrap(), "no variables");
    }

    #[test]
    fn bad_variables_are_named() {
        assert!(expand("${MISSING}", env).unwrap_err().contains("MISSING is not set"));
        assert!(expand("${HOME", env).unwrap_err().contains("closing"));
        assert!(expand("${a b}", env).unwrap_err().contains("not a variable name"));
    }

    const STACK: &str = r#"
apiVersion: hearth.dev/v1alpha1
kind: Model
metadata: {name: small}
spec:
  source: {uri: "file://${HEARTH_MODELS}/small.gguf"}
  cost: {inputPerMillionTokens: 1, outputPerMillionTokens: 2}
---
apiVersion: hearth.dev/v1alpha1
kind: Model
metadata: {name: embed}
spec:
  task: embedding
  format: safetensors
  source: {uri: "file:///models/embed"}
---
apiVersion: hearth.dev/v1alpha1
kind: Cascade
metadata: {name: both}
spec:
  stages:
    - {model: small, minConfidence: 0.5}
    - {model: STAGE}
"#;

    fn stack(last_stage: &str) -> Vec<Resource> {
        hearth_crds::parse_stack(&STACK.replace("STAGE", last_stage), "stack.yaml").unwrap()
    }

    #[test]
    fn a_consistent_stack_plans_models_and_routers() {
        let resources = stack("small2");
        let mut resources = resources;
        let mut second = stack_models(&resources)[0].clone();
        second.metadata.name = Some("small2".into());
        resources.push(Resource::Model(Box::new(second)));
        let plan = plan(resources.clone(), Path::new("/cache")).unwrap();
        assert_eq!(plan.models[0].uri, "file:///cache/small.gguf");
        let routers = plan.routers("http://127.0.0.1:9/v1", &stack_models(&resources));
        assert_eq!(routers[0].stages[0].endpoint, "http://127.0.0.1:9/v1");
        assert_eq!(routers[0].stages[0].cost.as_ref().unwrap().output_per_million_tokens, 2.0);
        assert_eq!(routers[0].stages[1].min_confidence, None);
    }

    #[test]
    fn dangling_and_wrong_task_stages_name_the_field() {
        let error = plan(stack("nowhere"), Path::new("/cache")).unwrap_err().to_string();
        assert!(error.contains("Cascade `both`: spec.stages[1].model: no Model `nowhere`"), "{error}");
        let error = plan(stack("embed"), Path::new("/cache")).unwrap_err().to_string();
        assert!(error.contains("spec.stages[1].model: `embed` is an embedding model"), "{error}");
    }
}
