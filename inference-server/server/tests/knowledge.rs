//! Knowledge bases end to end with the real MiniLM embedder and the embedded store: ingest,
//! idempotent re-ingest, changed / deleted / unreadable sources, retrieval modes, restarts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::PathBuf;
use std::sync::Arc;

use hearth_crds::KnowledgeBaseSpec;
use hearth_crds::knowledge_base::RetrievalMode;
use hearth_engine::registry::{EmbeddingService, ServingLimits};
use hearth_knowledge::embedded::EmbeddedStore;
use hearth_knowledge::embedder::Embedder;
use hearth_knowledge::{KnowledgeBase, QueryRequest};

fn minilm() -> Embedder {
    static MODEL: std::sync::OnceLock<Embedder> = std::sync::OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = hearth_testkit::models::required("all-minilm-l6-v2");
            let service =
                EmbeddingService::load("minilm", &dir, &ServingLimits::default(), &candle_core::Device::Cpu).unwrap();
            hearth_server::embedder::in_process(Arc::new(service))
        })
        .clone()
}

fn spec(chunk_tokens: u32) -> KnowledgeBaseSpec {
    serde_yaml::from_str(&format!(
        "embedding: {{model: minilm}}\nsources: [{{directory: {{path: docs}}}}]\n\
         chunking: {{chunkTokens: {chunk_tokens}, overlapTokens: 10}}\nretrieval: {{mode: hybrid, topK: 3}}\n"
    ))
    .unwrap()
}

struct Fixture {
    root: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("docs")).unwrap();
        Self { root }
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.root.path().join("docs").join(name), text).unwrap();
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.root.path().join("docs").join(name)).unwrap();
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    async fn open(&self) -> KnowledgeBase<EmbeddedStore> {
        let store = Arc::new(EmbeddedStore::open(&self.data()).unwrap());
        KnowledgeBase::open("handbook", spec(60), self.root.path(), minilm(), store).await.unwrap()
    }
}

fn ask(query: &str, mode: RetrievalMode) -> QueryRequest {
    QueryRequest { query: query.into(), mode: Some(mode), ..QueryRequest::default() }
}

const LEAVE: &str = "# Leave\n\n## Annual leave\n\nEvery employee has 27 days of paid annual leave per year.\n\n\
                     ## Sick leave\n\nTell your manager before ten o'clock on the first day of illness.\n";
const TRAVEL: &str =
    "# Travel\n\nBook trains through the travel desk. Expense code TRV-2291 is for conference travel.\n";

#[tokio::test]
async fn re_ingesting_unchanged_sources_writes_nothing() {
    let f = Fixture::new();
    f.write("leave.md", LEAVE);
    f.write("travel.md", TRAVEL);
    let kb = f.open().await;
    let first = kb.ingest().await.unwrap();
    assert_eq!(first.documents, 2);
    assert!(first.chunks >= 2 && first.added == first.chunks, "{first:?}");
    let second = kb.ingest().await.unwrap();
    assert_eq!((second.added, second.removed, second.unchanged), (0, 0, first.chunks), "{second:?}");
    assert_eq!(kb.count().await.unwrap(), first.chunks as u64);
}

#[tokio::test]
async fn changed_and_deleted_sources_lose_their_stale_chunks_and_unreadable_ones_keep_theirs() {
    let f = Fixture::new();
    f.write("leave.md", LEAVE);
    f.write("travel.md", TRAVEL);
    f.write("security.md", "# Security\n\nLaptops lock after five minutes.\n");
    let kb = f.open().await;
    let first = kb.ingest().await.unwrap();

    // Changed: the old chunk goes, the new one comes.
    f.write("travel.md", "# Travel\n\nFlights need approval from a director.\n");
    // Unreadable now (invalid UTF-8): skipped, and its chunks stay.
    std::fs::write(f.root.path().join("docs/security.md"), [0xff, 0xfe, 0x00, 0x41]).unwrap();
    let second = kb.ingest().await.unwrap();
    assert_eq!(second.skipped.len(), 1, "{second:?}");
    assert!(second.skipped[0].source.ends_with("security.md"), "{second:?}");
    assert_eq!(second.added, 1, "one changed chunk: {second:?}");
    assert_eq!(second.removed, 1, "{second:?}");
    assert_eq!(kb.count().await.unwrap(), first.chunks as u64);
    let hits = kb.query(&ask("laptops lock", RetrievalMode::Sparse)).await.unwrap();
    assert!(hits[0].source.ends_with("security.md"), "the unreadable source's chunk is still there: {hits:?}");
    let hits = kb.query(&ask("TRV-2291", RetrievalMode::Sparse)).await.unwrap();
    assert!(hits.iter().all(|h| !h.text.contains("TRV-2291")), "stale text is gone: {hits:?}");

    // Deleted: every chunk of it goes.
    f.remove("leave.md");
    let third = kb.ingest().await.unwrap();
    assert!(third.removed >= 1, "{third:?}");
    let hits = kb.query(&ask("annual leave days", RetrievalMode::Hybrid)).await.unwrap();
    assert!(hits.iter().all(|h| !h.source.ends_with("leave.md")), "{hits:?}");
}

#[tokio::test]
async fn retrieval_modes_find_the_right_chunk_with_citations() {
    let f = Fixture::new();
    f.write("leave.md", LEAVE);
    f.write("travel.md", TRAVEL);
    let kb = f.open().await;
    kb.ingest().await.unwrap();
    // Semantic: no shared keyword but the meaning.
    let hits = kb.query(&ask("How many vacation days do I get?", RetrievalMode::Dense)).await.unwrap();
    assert!(hits[0].source.ends_with("leave.md"), "{hits:?}");
    // Lexical: an exact code.
    let hits = kb.query(&ask("TRV-2291", RetrievalMode::Sparse)).await.unwrap();
    assert!(hits[0].text.contains("TRV-2291"), "{hits:?}");
    // Hybrid: both signals.
    let hits = kb.query(&ask("which expense code for conference travel", RetrievalMode::Hybrid)).await.unwrap();
    let top = &hits[0];
    assert!(top.text.contains("TRV-2291"), "{hits:?}");
    // Citations: offsets point into the document.
    let document = std::fs::read_to_string(f.root.path().join("docs/travel.md")).unwrap();
    assert_eq!(&document[top.start..top.end], top.text);
    assert_eq!(top.headings, ["Travel"]);
    // A source filter keeps only that source.
    let only =
        QueryRequest { query: "days".into(), sources: Some(vec![top.source.clone()]), ..QueryRequest::default() };
    assert!(kb.query(&only).await.unwrap().iter().all(|h| h.source == top.source));
    // An empty query names the field.
    let error = kb.query(&ask("  ", RetrievalMode::Hybrid)).await.unwrap_err().to_string();
    assert!(error.starts_with("query:"), "{error}");
}

#[tokio::test]
async fn the_data_survives_a_restart() {
    let f = Fixture::new();
    f.write("leave.md", LEAVE);
    let chunks = {
        let kb = f.open().await;
        kb.ingest().await.unwrap().chunks
    };
    let kb = f.open().await;
    assert_eq!(kb.count().await.unwrap(), chunks as u64);
    let hits = kb.query(&ask("sick leave", RetrievalMode::Hybrid)).await.unwrap();
    assert!(hits[0].text.contains("illness"), "{hits:?}");
    assert_eq!(kb.ingest().await.unwrap().added, 0, "nothing to redo after a restart");
}
