//! The server under load, over loopback, as clients see it: the real `hearth-server serve`
//! process with gemma3-270m, many concurrent streaming clients, a soak that samples the
//! process's memory, and a SIGTERM in the middle of streams.
//!
//! ```text
//! cargo bench -p hearth-server --bench load -- --clients 64 --soak-seconds 300
//! ```
//!
//! Phases:
//! - **burst**: `--clients` streaming requests at once against a server whose queue holds
//!   `--max-queue`: how many are served and how many refused with 429, how fast a refusal
//!   comes (p50/p99/max), time to first token of the served ones (p50/p99), tokens per second
//!   overall, and whether every request ended in a complete stream or a clean error.
//! - **soak**: `--soak-clients` closed-loop clients for `--soak-seconds`; the server's RSS is
//!   sampled every 5 s (first, peak, last) with requests and errors counted.
//! - **drain**: `--drain-streams` streams in flight, then SIGTERM: how many finish with
//!   `[DONE]` and how long the process takes to exit (its drain deadline is `--drain-seconds`).
//!
//! Every count is bounded and every wait has a deadline; the bench fails (non-zero exit) if a
//! request ends in anything but a response or a clean OpenAI error.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures_util::StreamExt;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
struct Args {
    /// GGUF chat model [default: $HEARTH_CACHE/models/gemma3-270m-q4_k_m.gguf].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Concurrent clients in the burst.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// The server's batch size.
    #[arg(long, default_value_t = 8)]
    max_batch_size: usize,
    /// The server's queue (requests beyond batch + queue get 429).
    #[arg(long, default_value_t = 16)]
    max_queue: usize,
    /// Tokens each request generates.
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Closed-loop clients in the soak.
    #[arg(long, default_value_t = 4)]
    soak_clients: usize,
    /// Length of the soak (0 skips it).
    #[arg(long, default_value_t = 300)]
    soak_seconds: u64,
    /// Streams in flight when SIGTERM arrives.
    #[arg(long, default_value_t = 8)]
    drain_streams: usize,
    /// The server's drain deadline.
    #[arg(long, default_value_t = 30)]
    drain_seconds: u64,
    /// CPU threads of the server.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Ignored (cargo bench passes it).
    #[arg(long)]
    bench: bool,
}

fn default_model() -> PathBuf {
    hearth_crds::runtime::model_cache_dir().join("gemma3-270m-q4_k_m.gguf")
}

/// The server process; killed if the bench ends early.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    async fn start(args: &Args, model: &std::path::Path) -> Result<Self> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let child = Command::new(env!("CARGO_BIN_EXE_hearth-server"))
            .args(["serve", "--name", "gemma", "--device", "cpu", "--port", &port.to_string()])
            .arg("--model")
            .arg(model)
            .args(["--threads", &args.threads.to_string()])
            .args(["--max-batch-size", &args.max_batch_size.to_string()])
            .args(["--max-queue", &args.max_queue.to_string()])
            .args(["--drain-seconds", &args.drain_seconds.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting hearth-server")?;
        let server = Self { child, base: format!("http://127.0.0.1:{port}") };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", server.base)).send().await
                && r.status() == 200
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("the server was not ready within 2 minutes");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

/// How one request ended.
#[derive(Debug)]
enum Outcome {
    /// A complete stream: time to first token, tokens received, total time.
    Streamed { ttft: Duration, tokens: usize },
    /// 429 with Retry-After and an OpenAI error body, after this long.
    Refused { after: Duration },
    /// A clean OpenAI error of another status (e.g. 503 while shutting down).
    Error { status: u16 },
    /// Anything else: a transport error, a cut stream, a malformed body.
    Broken(String),
}

async fn stream_once(client: &reqwest::Client, base: &str, new_tokens: usize, salt: usize) -> Outcome {
    let body = json!({
        "model": "gemma", "stream": true, "max_tokens": new_tokens, "ignore_eos": true, "temperature": 0,
        "messages": [{"role": "user", "content": format!("Client {salt}: write a short story about a lighthouse.")}],
    });
    let started = Instant::now();
    let response = match client.post(format!("{base}/v1/chat/completions")).json(&body).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Broken(format!("send: {e}")),
    };
    let status = response.status().as_u16();
    if status != 200 {
        let after = started.elapsed();
        let retry_after = response.headers().get("retry-after").is_some();
        return match response.json::<Value>().await {
            Ok(v) if v["error"]["message"].is_string() && status == 429 && retry_after => Outcome::Refused { after },
            Ok(v) if v["error"]["message"].is_string() => Outcome::Error { status },
            other => Outcome::Broken(format!("status {status} with body {other:?}")),
        };
    }
    let mut stream = response.bytes_stream();
    let mut ttft = None;
    let mut tokens = 0;
    let mut buffer = String::new();
    let mut done = false;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return Outcome::Broken(format!("stream: {e}")),
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                return Outcome::Broken(format!("bad event {data}"));
            };
            if v.get("error").is_some() {
                return Outcome::Error { status: 200 };
            }
            if v["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty()) {
                ttft.get_or_insert_with(|| started.elapsed());
                tokens += 1;
            }
        }
    }
    match (done, ttft) {
        (true, Some(ttft)) => Outcome::Streamed { ttft, tokens },
        (true, None) => Outcome::Streamed { ttft: started.elapsed(), tokens: 0 },
        (false, _) => Outcome::Broken("the stream ended without [DONE]".into()),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

async fn burst(args: &Args, server: &Server) -> Result<()> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|i| {
            let client = client.clone();
            let base = server.base.clone();
            let n = args.new_tokens;
            tokio::spawn(async move { stream_once(&client, &base, n, i).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(tokio::time::timeout(Duration::from_secs(600), t).await.context("a request hung")??);
    }
    let wall = started.elapsed();
    let mut ttfts = Vec::new();
    let mut refusals = Vec::new();
    let (mut tokens, mut errors, mut broken) = (0, Vec::new(), Vec::new());
    for o in &outcomes {
        match o {
            Outcome::Streamed { ttft, tokens: t } => {
                ttfts.push(*ttft);
                tokens += t;
            }
            Outcome::Refused { after } => refusals.push(*after),
            Outcome::Error { status } => errors.push(*status),
            Outcome::Broken(why) => broken.push(why.clone()),
        }
    }
    ttfts.sort();
    refusals.sort();
    println!(
        "## burst: {} clients, batch {}, queue {}, {} tokens each",
        args.clients, args.max_batch_size, args.max_queue, args.new_tokens
    );
    println!(
        "served {} · refused with 429 {} · other clean errors {} {errors:?} · broken {}",
        ttfts.len(),
        refusals.len(),
        errors.len(),
        broken.len()
    );
    println!(
        "429 latency: p50 {} · p99 {} · max {}",
        ms(percentile(&refusals, 0.5)),
        ms(percentile(&refusals, 0.99)),
        ms(refusals.last().copied().unwrap_or_default())
    );
    println!(
        "time to first token (served): p50 {} · p99 {}",
        ms(percentile(&ttfts, 0.5)),
        ms(percentile(&ttfts, 0.99))
    );
    println!("throughput: {:.1} tokens/s over {:.1} s", tokens as f64 / wall.as_secs_f64(), wall.as_secs_f64());
    if !broken.is_empty() {
        bail!("{} requests ended badly, e.g. {}", broken.len(), broken[0]);
    }
    Ok(())
}

async fn soak(args: &Args, server: &Server) -> Result<()> {
    if args.soak_seconds == 0 {
        return Ok(());
    }
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(args.soak_seconds);
    let workers: Vec<_> = (0..args.soak_clients)
        .map(|w| {
            let client = client.clone();
            let base = server.base.clone();
            let n = args.new_tokens;
            tokio::spawn(async move {
                let (mut ok, mut errors, mut broken) = (0usize, 0usize, Vec::new());
                let mut i = 0;
                while Instant::now() < deadline {
                    match stream_once(&client, &base, n, w * 100_000 + i).await {
                        Outcome::Streamed { .. } => ok += 1,
                        Outcome::Refused { .. } | Outcome::Error { .. } => errors += 1,
                        Outcome::Broken(why) => broken.push(why),
                    }
                    i += 1;
                }
                (ok, errors, broken)
            })
        })
        .collect();
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        samples.extend(server.rss_bytes());
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let (mut ok, mut errors, mut broken) = (0, 0, Vec::new());
    for w in workers {
        let (o, e, b) = w.await?;
        ok += o;
        errors += e;
        broken.extend(b);
    }
    samples.extend(server.rss_bytes());
    let first = samples.first().copied().unwrap_or(0);
    let peak = samples.iter().copied().max().unwrap_or(0);
    let last = samples.last().copied().unwrap_or(0);
    println!("## soak: {} clients for {} s", args.soak_clients, args.soak_seconds);
    println!("requests {ok} · clean errors {errors} · broken {}", broken.len());
    println!(
        "RSS: first {} · peak {} · last {} ({} samples; last/first {:.3})",
        mib(first),
        mib(peak),
        mib(last),
        samples.len(),
        last as f64 / first.max(1) as f64
    );
    if !broken.is_empty() {
        bail!("{} soak requests ended badly, e.g. {}", broken.len(), broken[0]);
    }
    Ok(())
}

async fn drain(args: &Args, mut server: Server) -> Result<()> {
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..args.drain_streams)
        .map(|i| {
            let client = client.clone();
            let base = server.base.clone();
            let n = args.new_tokens * 4;
            tokio::spawn(async move { stream_once(&client, &base, n, i).await })
        })
        .collect();
    // Let every stream start before the signal.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let signalled = Instant::now();
    Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status()?;
    let mut finished = 0;
    let mut other = Vec::new();
    for t in tasks {
        match t.await? {
            Outcome::Streamed { .. } => finished += 1,
            o => other.push(format!("{o:?}")),
        }
    }
    let exited = loop {
        if let Some(status) = server.child.try_wait()? {
            break status;
        }
        if signalled.elapsed() > Duration::from_secs(args.drain_seconds + 30) {
            bail!("the server had not exited {} s after SIGTERM", args.drain_seconds + 30);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("## drain: {} streams in flight at SIGTERM, deadline {} s", args.drain_streams, args.drain_seconds);
    println!(
        "finished with [DONE] {finished} · other {} · exit {exited} after {:.2} s",
        other.len(),
        signalled.elapsed().as_secs_f64()
    );
    if !other.is_empty() {
        bail!("streams in flight did not finish: {other:?}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let model = args.model.clone().unwrap_or_else(default_model);
    if !model.exists() {
        bail!("{} is missing: run scripts/fetch-models.py", model.display());
    }
    let server = Server::start(&args, &model).await?;
    println!("# hearth-server under load: {} ({} threads)", model.display(), args.threads);
    println!("RSS after load: {}", mib(server.rss_bytes().unwrap_or(0)));
    burst(&args, &server).await?;
    soak(&args, &server).await?;
    drain(&args, server).await?;
    Ok(())
}
