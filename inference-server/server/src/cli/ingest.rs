//! `hearth-server ingest -f stack.yaml`: ingest a stack's knowledge bases, with progress bars.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use hearth_engine::registry::{Registry, ServedModel};

use super::serve::load_into;
use super::up::{default_data_dir, materialize_all, read_stack};
use crate::local::stack::Stores;

/// Flags of `ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// A stack file with the KnowledgeBases and their embedding Models.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Only this knowledge base (default: every one in the file).
    #[arg(long)]
    pub knowledge_base: Option<String>,
    /// The model cache (see `up`).
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// Where the vectors live (see `up`; a running `up` holds it: use its
    /// `POST /v1/knowledgebases/NAME/ingest` instead).
    #[arg(long, env = "HEARTH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where the embedding model runs: cpu, cuda, metal or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Also write a compact summary per knowledge base (JSON lines of
    /// `hearth_crds::runtime::IngestSummary`, an error included) to this file; in a cluster the
    /// ingestion Job points it at `/dev/termination-log` and the operator reads it into status.
    #[arg(long)]
    pub report_file: Option<PathBuf>,
}

/// Runs `ingest` and, when asked, leaves its summary (or why it failed) in the report file.
pub async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let report_file = args.report_file.clone();
    let only = args.knowledge_base.clone().unwrap_or_default();
    let mut summaries = Vec::new();
    let result = ingest_all(args, &mut summaries).await;
    if let Some(path) = report_file {
        if let Err(e) = &result {
            summaries.push(hearth_crds::runtime::IngestSummary {
                knowledge_base: only,
                error: Some(format!("{e:#}")),
                ..Default::default()
            });
        }
        let mut text = String::new();
        for summary in &summaries {
            text.push_str(&serde_json::to_string(summary)?);
            text.push('\n');
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    result
}

/// Runs `ingest`: loads only the embedding models the knowledge bases need, ingests each one
/// and prints its report as JSON.
async fn ingest_all(args: IngestArgs, summaries: &mut Vec<hearth_crds::runtime::IngestSummary>) -> anyhow::Result<()> {
    let shown = args.file.display().to_string();
    let models_dir = args.models_dir.clone().unwrap_or_else(crate::fetch::model_cache_dir);
    let (_, mut plan) = read_stack(&args.file, &models_dir)?;
    if let Some(only) = &args.knowledge_base {
        plan.knowledge_bases.retain(|kb| kb.metadata.name.as_deref() == Some(only.as_str()));
        if plan.knowledge_bases.is_empty() {
            bail!("{shown} has no KnowledgeBase `{only}`");
        }
    }
    if plan.knowledge_bases.is_empty() {
        bail!("{shown} holds no KnowledgeBase to ingest");
    }
    let wanted: std::collections::BTreeSet<&str> =
        plan.knowledge_bases.iter().map(|kb| kb.spec.embedding.model.as_str()).collect();
    let wanted_models = plan.models.iter().filter(|m| wanted.contains(m.name.as_str()));
    let loads = materialize_all(wanted_models, &models_dir, &args.device).await?;
    let registry = Arc::new(Registry::default());
    {
        let registry = registry.clone();
        tokio::task::spawn_blocking(move || load_into(&registry, &loads)).await.context("the loader panicked")??;
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let mut stores = Stores::new(&data_dir);
    let base_dir = args.file.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    for kb in &plan.knowledge_bases {
        let name = kb.metadata.name.clone().unwrap_or_default();
        let Some(ServedModel::Embedding(embedder)) = registry.get(&kb.spec.embedding.model) else {
            bail!("KnowledgeBase `{name}`: spec.embedding.model: `{}` did not load", kb.spec.embedding.model);
        };
        let store = stores.for_spec(&name, &kb.spec)?;
        let opened = hearth_knowledge::KnowledgeBase::open(
            &name,
            kb.spec.clone(),
            &base_dir,
            crate::embedder::in_process(embedder),
            store,
        )
        .await?;
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
            if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} {pos}/{len} chunks embedded, {per_sec}") {
                bar.set_style(style);
            }
            bar.set_message(name.clone());
            bar
        });
        let report = opened
            .ingest_with(&|done, total| {
                if let Some(bar) = &bar {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                }
            })
            .await?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        summaries.push(hearth_crds::runtime::IngestSummary {
            knowledge_base: name.clone(),
            documents: report.documents as u64,
            chunks: opened.count().await?,
            added: report.added as u64,
            removed: report.removed,
            skipped: report.skipped.len() as u64,
            seconds: report.seconds,
            error: None,
        });
        println!("{}", serde_json::json!({"knowledge_base": name, "report": report}));
    }
    Ok(())
}
