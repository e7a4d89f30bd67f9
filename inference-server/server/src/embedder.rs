//! The embedding model this process serves, as a knowledge base's [`LocalEmbedding`]: the
//! seam that keeps `hearth-knowledge` free of the model code.

use std::sync::Arc;

use hearth_engine::registry::EmbeddingService;
use hearth_knowledge::embedder::{EmbedFuture, Embedder, LocalEmbedding};

/// A served embedding model, lent to knowledge bases.
pub struct InProcess(pub Arc<EmbeddingService>);

impl LocalEmbedding for InProcess {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn dimension(&self) -> usize {
        self.0.dimension
    }

    fn max_tokens(&self) -> usize {
        self.0.max_tokens
    }

    fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.0.tokenizer
    }

    fn embed(&self, texts: Vec<String>) -> EmbedFuture<'_> {
        Box::pin(async move { self.0.embed(texts).await.map(|(vectors, _)| vectors).map_err(|e| e.to_string()) })
    }
}

/// The knowledge-base embedder of a served model.
pub fn in_process(service: Arc<EmbeddingService>) -> Embedder {
    Embedder::from(Arc::new(InProcess(service)))
}
