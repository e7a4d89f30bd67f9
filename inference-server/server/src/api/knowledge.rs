//! `POST /v1/knowledgebases/{name}/query` (retrieval with citations) and the admin
//! `POST /v1/knowledgebases/{name}/ingest`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{AppState, RawBody, parse_body};
use hearth_knowledge::{KbError, KnowledgeBase, QueryRequest};
use hearth_openai::ApiError;

/// The knowledge bases this process serves, by name (added once their embedding model loads).
#[derive(Default)]
pub struct KnowledgeBases {
    bases: RwLock<BTreeMap<String, Arc<KnowledgeBase>>>,
}

impl KnowledgeBases {
    /// Adds (or replaces) a knowledge base.
    pub fn insert(&self, kb: Arc<KnowledgeBase>) {
        if let Ok(mut bases) = self.bases.write() {
            bases.insert(kb.name().to_owned(), kb);
        }
    }

    /// The knowledge base of this name.
    pub fn get(&self, name: &str) -> Option<Arc<KnowledgeBase>> {
        self.bases.read().ok()?.get(name).cloned()
    }

    /// Every name.
    pub fn names(&self) -> Vec<String> {
        self.bases.read().map(|b| b.keys().cloned().collect()).unwrap_or_default()
    }
}

fn lookup(state: &AppState, name: &str) -> Result<Arc<KnowledgeBase>, ApiError> {
    state.knowledge_bases.get(name).ok_or_else(|| ApiError::KnowledgeBaseNotFound(name.to_owned()))
}

fn kb_error(error: KbError) -> ApiError {
    match error {
        KbError::Invalid { field, message } => ApiError::invalid(field, message),
        other => ApiError::Internal(other.to_string()),
    }
}

/// `POST /v1/knowledgebases/{name}/query`: `{"query": "...", "top_k"?, "mode"?, "score_threshold"?, "sources"?}`.
pub async fn query(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let kb = lookup(&state, &name)?;
    let request: QueryRequest = parse_body(&body)?;
    let hits = kb.query(&request).await.map_err(kb_error)?;
    Ok(Json(json!({"object": "list", "knowledge_base": name, "data": hits})).into_response())
}

/// `POST /v1/knowledgebases/{name}/ingest`: re-reads the sources and returns what changed.
pub async fn ingest(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let kb = lookup(&state, &name)?;
    let report = kb.ingest().await.map_err(kb_error)?;
    Ok(Json(report).into_response())
}
