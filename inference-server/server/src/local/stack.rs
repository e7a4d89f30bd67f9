//! A planned stack's knowledge bases and agents, opened and served: the wiring between
//! what [`super::plan`] decided and the API state (`up` and `ingest` use it).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use hearth_engine::registry::{Registry, ServedModel};

use super::StackPlan;
use crate::api::AppState;

/// The stores of a process's knowledge bases: one embedded store (opened when first needed)
/// shared by every knowledge base without `spec.store.qdrant`, one client per Qdrant server.
pub struct Stores {
    data_dir: PathBuf,
    embedded: Option<Arc<hearth_knowledge::any::AnyStore>>,
}

impl Stores {
    /// No store opened yet; the embedded one will live in `data_dir/store`.
    pub fn new(data_dir: &Path) -> Self {
        Self { data_dir: data_dir.to_owned(), embedded: None }
    }

    /// The store a knowledge base's spec asks for. A Qdrant API key comes from the environment
    /// variable QDRANT_API_KEY (in a cluster, from `apiKeySecretRef`).
    pub fn for_spec(
        &mut self,
        name: &str,
        spec: &hearth_crds::KnowledgeBaseSpec,
    ) -> anyhow::Result<Arc<hearth_knowledge::any::AnyStore>> {
        use hearth_knowledge::any::AnyStore;
        if let Some(qdrant) = &spec.store.qdrant {
            let key = std::env::var("QDRANT_API_KEY").ok().filter(|k| !k.is_empty());
            let store = hearth_knowledge::qdrant::QdrantStore::connect(&qdrant.url, key)
                .with_context(|| format!("KnowledgeBase `{name}`: spec.store.qdrant.url"))?;
            return Ok(Arc::new(AnyStore::Qdrant(store)));
        }
        if let Some(store) = &self.embedded {
            return Ok(store.clone());
        }
        let dir = self.data_dir.join("store");
        let store = hearth_knowledge::embedded::EmbeddedStore::open(&dir).with_context(|| {
            format!("cannot open the embedded store in {} (does a running `up` hold it?)", dir.display())
        })?;
        let store = Arc::new(AnyStore::Embedded(store));
        self.embedded = Some(store.clone());
        Ok(store)
    }
}

/// Opens, ingests and serves the plan's knowledge bases (after the models have loaded).
pub async fn serve_knowledge_bases(
    plan: &StackPlan,
    registry: &Registry,
    state: &AppState,
    data_dir: &Path,
    base_dir: &Path,
) -> anyhow::Result<Vec<(String, hearth_knowledge::IngestReport)>> {
    if plan.knowledge_bases.is_empty() {
        return Ok(Vec::new());
    }
    let mut stores = Stores::new(data_dir);
    let mut reports = Vec::new();
    for kb in &plan.knowledge_bases {
        let name = kb.metadata.name.clone().unwrap_or_default();
        let Some(ServedModel::Embedding(embedder)) = registry.get(&kb.spec.embedding.model) else {
            bail!(
                "KnowledgeBase `{name}`: spec.embedding.model: `{}` is not a loaded embedding model",
                kb.spec.embedding.model
            );
        };
        let store = stores.for_spec(&name, &kb.spec)?;
        let schedule = kb
            .spec
            .schedule
            .as_deref()
            .map(hearth_knowledge::schedule::Schedule::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("KnowledgeBase `{name}`: spec.schedule: {e}"))?;
        let opened = hearth_knowledge::KnowledgeBase::open(
            &name,
            kb.spec.clone(),
            base_dir,
            crate::embedder::in_process(embedder),
            store,
        )
        .await?;
        tracing::info!(knowledge_base = %name, "ingesting");
        let report = opened.ingest().await?;
        for skipped in &report.skipped {
            tracing::warn!(knowledge_base = %name, source = %skipped.source, reason = %skipped.reason, "source skipped");
        }
        let opened = Arc::new(opened);
        if let Some(schedule) = schedule {
            tokio::spawn(reindex_on_schedule(opened.clone(), schedule));
        }
        state.knowledge_bases.insert(opened);
        reports.push((name, report));
    }
    Ok(reports)
}

/// Builds and serves the plan's agents (after the knowledge bases): each reasons through
/// this process's own chat API (`base`), so a Cascade works as its model just as in a
/// cluster; memory lives in `data_dir/agents`.
pub async fn serve_agents(
    plan: &StackPlan,
    state: &AppState,
    base: &str,
    key: Option<&str>,
    data_dir: &Path,
    base_dir: &Path,
) -> anyhow::Result<()> {
    use hearth_agent::llm::ChatClient;
    if plan.agents.is_empty() {
        return Ok(());
    }
    let memory = Arc::new(hearth_agent::memory::MemoryStore::open(&data_dir.join("agents"))?);
    let client = |name: &str| ChatClient::new(base, name, key.map(str::to_owned));
    for agent in &plan.agents {
        let name = agent.metadata.name.clone().unwrap_or_default();
        let target = agent.spec.model.model.clone().or_else(|| agent.spec.model.cascade.clone()).unwrap_or_default();
        let knowledge_base = |kb: &str| state.knowledge_bases.get(kb);
        let delegate = |other: &str| Some(client(other));
        let env = hearth_agent::tools::ToolEnv {
            knowledge_base: &knowledge_base,
            agent: &delegate,
            openapi_dir: base_dir.to_owned(),
        };
        let tools = hearth_agent::tools::build_tools(&agent.spec, &env)
            .await
            .map_err(|e| anyhow::anyhow!("Agent `{name}`: {e}"))?;
        let long_term = agent.spec.memory.long_term.as_ref().and_then(|l| state.knowledge_bases.get(&l.knowledge_base));
        state.agents.insert(Arc::new(hearth_agent::AgentRuntime::new(
            &name,
            agent.spec.clone(),
            client(&target),
            tools,
            memory.clone(),
            long_term,
            state.metrics.agent.clone(),
        )));
    }
    Ok(())
}

/// Re-ingests a knowledge base whenever its schedule fires (checked each minute, UTC); a failed
/// run is logged and leaves the store as it was.
pub async fn reindex_on_schedule(
    kb: Arc<hearth_knowledge::KnowledgeBase>,
    schedule: hearth_knowledge::schedule::Schedule,
) {
    loop {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        tokio::time::sleep(std::time::Duration::from_secs(60 - now.as_secs() % 60)).await;
        if !schedule.matches(hearth_knowledge::schedule::Moment::now()) {
            continue;
        }
        match kb.ingest().await {
            Ok(report) => tracing::info!(knowledge_base = %kb.name(), added = report.added, removed = report.removed,
                "scheduled re-index done"),
            Err(e) => tracing::warn!(knowledge_base = %kb.name(), "scheduled re-index failed: {e}"),
        }
    }
}
