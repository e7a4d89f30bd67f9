//! What turns text into vectors for a knowledge base: the embedding model in this process
//! (anything that implements [`LocalEmbedding`]; the server hands in its loaded model), or
//! (for processes that only query, like a cluster's agent runtime) an embedding Model's
//! OpenAI-compatible endpoint. Ingestion needs the in-process model: it measures chunks with
//! the model's tokenizer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

/// The vectors of a batch of texts, or why there are none.
pub type EmbedFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<Vec<f32>>, String>> + Send + 'a>>;

/// An embedding model loaded in this process, as a knowledge base uses it.
pub trait LocalEmbedding: Send + Sync {
    /// The model's served name.
    fn name(&self) -> &str;
    /// The vector size.
    fn dimension(&self) -> usize;
    /// Most tokens of a text the model sees (special tokens included); the rest is truncated.
    fn max_tokens(&self) -> usize;
    /// The model's tokenizer without truncation, to measure chunks.
    fn tokenizer(&self) -> &tokenizers::Tokenizer;
    /// Embeds texts, one vector each, in order.
    fn embed(&self, texts: Vec<String>) -> EmbedFuture<'_>;
}

/// An embedding model's endpoint (`POST {endpoint}/embeddings`).
#[derive(Clone)]
pub struct RemoteEmbedder {
    http: reqwest::Client,
    endpoint: String,
    model: String,
    api_key: Option<String>,
    dimension: usize,
}

impl RemoteEmbedder {
    /// Connects to `endpoint` (a base URL ending in `/v1`) and learns the vector size by
    /// embedding one probe text.
    pub async fn connect(endpoint: &str, model: &str, api_key: Option<String>) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        let mut embedder = Self {
            http,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            model: model.to_owned(),
            api_key,
            dimension: 0,
        };
        let probe = embedder.embed(vec!["dimension probe".into()]).await?;
        embedder.dimension = probe.first().map(Vec::len).filter(|d| *d > 0).ok_or("the endpoint returned no vector")?;
        Ok(embedder)
    }

    /// Embeds texts.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, String> {
        let count = texts.len();
        let mut request =
            self.http.post(format!("{}/embeddings", self.endpoint)).json(&json!({"model": self.model, "input": texts}));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| format!("{}: {e}", self.endpoint))?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| format!("{}: bad response: {e}", self.endpoint))?;
        if !status.is_success() {
            let message = body.pointer("/error/message").and_then(Value::as_str).unwrap_or("no message");
            return Err(format!("{}: HTTP {status}: {message}", self.endpoint));
        }
        let data = body.get("data").and_then(Value::as_array).ok_or("the response has no `data`")?;
        let mut vectors = vec![Vec::new(); count];
        for item in data {
            let index = item.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
            let vector: Vec<f32> = item
                .get("embedding")
                .and_then(Value::as_array)
                .ok_or("an item has no `embedding` array")?
                .iter()
                .map(|x| x.as_f64().map(|x| x as f32).ok_or("a vector holds a non-number"))
                .collect::<Result<_, _>>()?;
            *vectors.get_mut(index).ok_or("an item's index is out of range")? = vector;
        }
        if vectors.iter().any(Vec::is_empty) {
            return Err(format!("the endpoint returned {} vectors for {count} texts", data.len()));
        }
        Ok(vectors)
    }
}

/// A knowledge base's embedding model.
#[derive(Clone)]
pub enum Embedder {
    /// Loaded in this process.
    Local(Arc<dyn LocalEmbedding>),
    /// Behind an endpoint (queries and memories only).
    Remote(RemoteEmbedder),
}

impl<T: LocalEmbedding + 'static> From<Arc<T>> for Embedder {
    fn from(model: Arc<T>) -> Self {
        Self::Local(model)
    }
}

impl Embedder {
    /// The model's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Local(model) => model.name(),
            Self::Remote(remote) => &remote.model,
        }
    }

    /// The vector size.
    pub fn dimension(&self) -> usize {
        match self {
            Self::Local(model) => model.dimension(),
            Self::Remote(remote) => remote.dimension,
        }
    }

    /// Embeds texts.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, String> {
        match self {
            Self::Local(model) => model.embed(texts).await,
            Self::Remote(remote) => remote.embed(texts).await,
        }
    }
}
