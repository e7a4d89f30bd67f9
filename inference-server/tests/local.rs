//! Local mode end to end: the real `hearth-server up` binary on the one-machine quickstart
//! stack (real models from the cache), spoken to over HTTP; and stacks it must refuse.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_hearth-server");

fn repo_file(relative: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative).display().to_string()
}

/// Kills the process if the test fails before stopping it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `up` on a free port with its data in `data` and returns the process and its base
/// URL, read from the banner.
fn up(stack: &str, data: &Path) -> (Running, String) {
    let mut child = Command::new(BINARY)
        .args(["up", "-f", stack, "--port", "0", "--threads", "1", "--data-dir"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(base) = line.strip_prefix("Hearth is up: ") {
                let _ = tx.send(base.trim().to_owned());
            }
        }
    });
    let child = Running(child);
    let base = rx.recv_timeout(Duration::from_secs(120)).expect("`up` printed no banner within 2 minutes");
    (child, base)
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "`up` did not stop within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn the_local_quickstart_serves_models_embeddings_and_the_cascade() {
    let data = tempfile::tempdir().unwrap();
    let (mut child, base) = up(&repo_file("manifests/examples/local.yaml"), data.path());
    let client = reqwest::Client::new();
    let models: Value = client.get(format!("{base}/models")).send().await.unwrap().json().await.unwrap();
    let mut ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["gemma3-270m", "minilm", "quickstart", "smollm2-135m"]);

    let ask = |model: &str| {
        json!({"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 12, "temperature": 0})
    };
    let response = client.post(format!("{base}/chat/completions")).json(&ask("quickstart")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let stage = response.headers()["x-hearth-cascade-stage"].to_str().unwrap().to_owned();
    let answer: Value = response.json().await.unwrap();
    assert!(["smollm2-135m", "gemma3-270m"].contains(&stage.as_str()), "{stage}");
    assert_eq!(answer["hearth"]["stage"], stage);
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("Paris"), "both stages know this one: {text}");

    let direct: Value = client
        .post(format!("{base}/chat/completions"))
        .json(&ask("gemma3-270m"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(direct["model"], "gemma3-270m");

    let embedded: Value = client
        .post(format!("{base}/embeddings"))
        .json(&json!({"model": "minilm", "input": ["a", "b"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(embedded["data"][1]["embedding"].as_array().unwrap().len(), 384);

    // The handbook knowledge base was ingested from manifests/examples/handbook/.
    let found: Value = client
        .post(format!("{base}/knowledgebases/handbook/query"))
        .json(&json!({"query": "Which expense code is for conference travel?"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let top = &found["data"][0];
    assert_eq!(top["source"], "directory:handbook/expenses.md", "{found}");
    assert!(top["text"].as_str().unwrap().contains("TRV-2291"), "{found}");
    let missing =
        client.post(format!("{base}/knowledgebases/nope/query")).json(&json!({"query": "x"})).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    let status = terminate(&mut child.0);
    assert!(status.success(), "`up` exits cleanly on SIGTERM: {status}");

    // Restarted on the same data, nothing is embedded again.
    let (mut child, base) = up(&repo_file("manifests/examples/local.yaml"), data.path());
    let report: Value =
        client.post(format!("{base}/knowledgebases/handbook/ingest")).send().await.unwrap().json().await.unwrap();
    assert_eq!(report["added"], 0, "{report}");
    assert_eq!(report["removed"], 0, "{report}");
    assert!(report["unchanged"].as_u64().unwrap() >= 3, "{report}");
    terminate(&mut child.0);
}

fn refused(stack: &str) -> String {
    let dir = std::env::temp_dir().join(format!("hearth-up-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("stack-{}.yaml", rand_suffix()));
    std::fs::write(&path, stack).unwrap();
    let output = Command::new(BINARY).args(["up", "-f", path.to_str().unwrap(), "--port", "0"]).output().unwrap();
    assert!(!output.status.success(), "`up` must refuse:\n{stack}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

#[test]
fn invalid_stacks_are_refused_naming_the_document_and_field() {
    let error = refused(
        "apiVersion: hearth.dev/v1alpha1\nkind: Model\nmetadata: {name: m}\nspec:\n  source: {uri: \"ftp://x/y.gguf\"}\n",
    );
    assert!(error.contains("document 1") && error.contains("spec.source.uri"), "{error}");

    let error = refused(
        "apiVersion: hearth.dev/v1alpha1\nkind: Model\nmetadata: {name: m}\nspec:\n  source: {uri: \"file:///nowhere/m.gguf\"}\n---\n\
         apiVersion: hearth.dev/v1alpha1\nkind: Cascade\nmetadata: {name: c}\nspec:\n  stages:\n    - {model: m, minConfidence: 0.5}\n    - {model: ghost}\n",
    );
    assert!(error.contains("spec.stages[1].model: no Model `ghost`"), "{error}");

    let error = refused(
        "apiVersion: hearth.dev/v1alpha1\nkind: Model\nmetadata: {name: m}\nspec:\n  source: {uri: \"file://${HEARTH_TEST_UNSET_VARIABLE}/m.gguf\"}\n",
    );
    assert!(error.contains("HEARTH_TEST_UNSET_VARIABLE is not set"), "{error}");

    let error = refused(
        "apiVersion: hearth.dev/v1alpha1\nkind: Model\nmetadata: {name: m}\nspec:\n  source: {uri: \"file:///nowhere/m.gguf\"}\n",
    );
    assert!(error.contains("Model `m`: spec.source.uri") && error.contains("/nowhere/m.gguf"), "{error}");
}

#[test]
fn ingest_fills_the_store_once_and_then_finds_nothing_new() {
    let data = tempfile::tempdir().unwrap();
    let run = || {
        let output = Command::new(BINARY)
            .args(["ingest", "-f", &repo_file("manifests/examples/local.yaml"), "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let line = String::from_utf8_lossy(&output.stdout).lines().next().unwrap().to_owned();
        serde_json::from_str::<Value>(&line).unwrap()
    };
    let first = run();
    assert_eq!(first["knowledge_base"], "handbook");
    assert_eq!(first["report"]["documents"], 3);
    assert!(first["report"]["added"].as_u64().unwrap() >= 3, "{first}");
    let second = run();
    assert_eq!(second["report"]["added"], 0, "{second}");
    assert_eq!(second["report"]["unchanged"], first["report"]["added"], "{second}");
}

#[tokio::test]
async fn a_knowledge_base_with_a_qdrant_url_is_ingested_into_that_qdrant() {
    use hearth_server::kb::embedded::EmbeddedStore;
    use hearth_server::kb::fake_qdrant::FakeQdrant;
    use hearth_server::kb::qdrant::QdrantStore;
    use hearth_server::kb::store::VectorStore;

    let backing = tempfile::tempdir().unwrap();
    let qdrant = FakeQdrant::start(EmbeddedStore::open(backing.path()).unwrap(), None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stack = dir.path().join("stack.yaml");
    std::fs::write(
        &stack,
        format!(
            "apiVersion: hearth.dev/v1alpha1\nkind: Model\nmetadata: {{name: minilm}}\nspec:\n  task: embedding\n  format: safetensors\n  \
             source: {{uri: \"file://${{HEARTH_MODELS}}/all-minilm-l6-v2\"}}\n---\n\
             apiVersion: hearth.dev/v1alpha1\nkind: KnowledgeBase\nmetadata: {{name: handbook}}\nspec:\n  embedding: {{model: minilm}}\n  \
             sources: [{{directory: {{path: \"{}\"}}}}]\n  chunking: {{chunkTokens: 200, overlapTokens: 20}}\n  \
             store: {{qdrant: {{url: \"{}\", collection: team-handbook}}}}\n",
            repo_file("manifests/examples/handbook"),
            qdrant.url()
        ),
    )
    .unwrap();
    // The fake Qdrant runs on this test's runtime, so the CLI runs on a blocking thread.
    let (stack_path, data) = (stack.clone(), dir.path().join("data"));
    let output = tokio::task::spawn_blocking(move || {
        Command::new(BINARY).arg("ingest").arg("-f").arg(stack_path).arg("--data-dir").arg(data).output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_str(String::from_utf8_lossy(&output.stdout).lines().next().unwrap()).unwrap();
    let added = report["report"]["added"].as_u64().unwrap();
    assert!(added >= 3, "{report}");
    let client = QdrantStore::connect(&qdrant.url(), None).unwrap();
    assert_eq!(client.count("team-handbook").await.unwrap(), added, "the chunks went to Qdrant");
    assert!(!dir.path().join("data/store").exists(), "the embedded store was never opened");
}
