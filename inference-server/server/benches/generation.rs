//! Hearth's speed on the real code paths: prefill and decode through [`TransformerLm`], time to
//! first token and aggregate decode with concurrent streams through the [`Engine`] (continuous
//! batching), MiniLM embeddings through [`EmbeddingModel`], and peak RSS after each phase.
//!
//! ```text
//! cargo bench -p hearth-server --bench generation -- \
//!     --model ~/.cache/hearth/models/gemma3-270m-q4_k_m.gguf \
//!     --prompt-tokens 256 --new-tokens 128 --repeats 3 --streams 8 --threads 2 --json
//! ```
//!
//! Figures are medians over `--repeats`. The human table goes to stdout, or to stderr when
//! `--json` puts one JSON object on stdout (with the prompt ids used, so a peer can run the
//! very same tokens: see `benches/compare.py`).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::Device;
use candle_core::quantized::gguf_file;
use clap::{Parser, ValueEnum};
use hearth_engine::constraint::{Grammar, GrammarCompiler};
use hearth_engine::{Engine, EngineConfig, Event, GenerateRequest, SamplingParams};
use hearth_model::embedding::EmbeddingModel;
use hearth_model::tokenizer::TextTokenizer;
use hearth_model::transformer::QuantizedTransformer;
use hearth_model::{CausalLm, TransformerLm};
use serde_json::{Value, json};

/// Fixed English text whose tokens, repeated and cut, make every prompt.
const PROMPT_TEXT: &str = "The lighthouse keeper rose before dawn, as he had every morning for thirty \
years. He climbed the spiral stairs, trimmed the wick, and polished the great lens until it \
caught the first grey light over the water. Below, the fishing boats were already leaving the \
harbour, their engines coughing in the cold air. He wrote the weather in his log: wind from the \
north-east, a falling barometer, a swell building from the open sea. Later he would walk to the \
village for bread and news, but first he made tea, sat by the window, and watched the gulls \
wheel above the rocks while the kettle ticked as it cooled. ";

/// Words the embedding sentences are cut from.
const EMBED_TEXT: &str = "Retrieval augmented generation grounds a language model in documents \
that the model never saw during training. A knowledge base splits each document into chunks, \
embeds every chunk with a small sentence encoder, and stores the vectors in an index. At query \
time the question is embedded the same way, the nearest chunks are fetched, and the model \
answers with those passages in its context. Hybrid retrieval adds a sparse keyword score to the \
dense similarity and fuses both rankings, which helps with names, codes and rare words that a \
small encoder blurs together. Chunk size matters: short chunks match precisely but lose \
context, long chunks keep context but dilute the match.";

/// The benchmark's phases, selectable with `--phases`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Phase {
    /// Prefill and single-stream greedy decode through `TransformerLm`.
    Direct,
    /// Time to first token through the engine.
    Ttft,
    /// Single-stream and N-stream decode through the engine.
    Streams,
    /// The same decode with every stream held to a JSON schema (grammar masks on), reported
    /// beside the free run.
    Constrained,
    /// MiniLM embeddings.
    Embed,
}

/// Command-line arguments (after `--` with `cargo bench`).
#[derive(Parser, Debug)]
#[command(name = "generation", about = "Hearth generation and embedding benchmark")]
struct Args {
    /// GGUF chat model [default: $HEARTH_CACHE/models/gemma3-270m-q4_k_m.gguf].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Sentence-embedding model directory [default: $HEARTH_CACHE/models/all-minilm-l6-v2].
    #[arg(long)]
    embedding_model: Option<PathBuf>,
    /// Prompt length in tokens (BOS included when the model adds one).
    #[arg(long, default_value_t = 256)]
    prompt_tokens: usize,
    /// Tokens generated per decode measurement and per stream.
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Measurements per figure; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Concurrent streams for the aggregate decode figure.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// CPU threads for model work [default: every core this process may use].
    #[arg(long)]
    threads: Option<usize>,
    /// Compute grammar masks beside the forward pass (true) or before it (false) [default: the
    /// server's rule, `overlap_grammar_on`].
    #[arg(long)]
    overlap_grammar: Option<bool>,
    /// Texts per embedding call.
    #[arg(long, default_value_t = 32)]
    embed_batch: usize,
    /// Tokens per embedding text, [CLS] and [SEP] included (approximate).
    #[arg(long, default_value_t = 60)]
    embed_tokens: usize,
    /// Phases to run.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "direct,ttft,streams,embed")]
    phases: Vec<Phase>,
    /// Print one JSON object on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let threads = match args.threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(t) => t,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if let Some(code) = reexec_with_thread_env(threads)? {
        std::process::exit(code);
    }
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().context("cannot size the rayon pool")?;
    if args.repeats == 0 || args.prompt_tokens == 0 || args.new_tokens == 0 || args.streams == 0 {
        bail!("--repeats, --prompt-tokens, --new-tokens and --streams must be at least 1");
    }

    let report = run(&args, threads)?;
    let table = render_table(&report);
    if args.json {
        eprint!("{table}");
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{table}");
    }
    Ok(())
}

/// candle sizes its CPU thread pools from `CANDLE_NUM_THREADS` / `RAYON_NUM_THREADS` when it
/// first needs them (its quantized matmuls do not use rayon's global pool). Changing the
/// environment of a running process needs `unsafe`, so when the variables disagree with
/// `--threads` the benchmark runs itself again with them set and returns the child's exit code.
fn reexec_with_thread_env(threads: usize) -> Result<Option<i32>> {
    let want = threads.to_string();
    let set = |key: &str| std::env::var(key).ok().as_deref() == Some(want.as_str());
    if set("RAYON_NUM_THREADS") && set("CANDLE_NUM_THREADS") {
        return Ok(None);
    }
    let exe = std::env::current_exe().context("cannot find this executable to re-run it")?;
    let status = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("RAYON_NUM_THREADS", &want)
        .env("CANDLE_NUM_THREADS", &want)
        .status()
        .context("cannot re-run the benchmark with the thread variables set")?;
    Ok(Some(status.code().unwrap_or(1)))
}

/// Where `scripts/fetch-models.py` puts the models.
fn models_dir() -> PathBuf {
    hearth_crds::runtime::model_cache_dir()
}

/// Peak (`VmHWM`) and current (`VmRSS`) resident set of this process, in bytes.
fn rss_bytes() -> Value {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        let kb: u64 = line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    };
    json!({ "peak": field("VmHWM:"), "current": field("VmRSS:") })
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Index of the largest logit (the first on ties), as greedy decoding picks it.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// `n` prompt ids: BOS (when the model adds one) then the text's tokens, repeated from offset
/// `rotate` and cut to length.
fn prompt_ids(tokenizer: &TextTokenizer, n: usize, rotate: usize) -> Result<Vec<u32>> {
    let body = tokenizer.encode(PROMPT_TEXT, false)?;
    if body.is_empty() {
        bail!("the prompt text encodes to no tokens");
    }
    let mut ids = Vec::with_capacity(n);
    if tokenizer.add_bos()
        && let Some(bos) = tokenizer.bos_id()
    {
        ids.push(bos);
    }
    let rest = n.saturating_sub(ids.len());
    ids.extend(body.iter().cycle().skip(rotate % body.len()).take(rest));
    ids.truncate(n);
    Ok(ids)
}

/// The engine's prefill, reproduced: the prompt in chunks of at most `chunk` tokens.
fn prefill(
    lm: &TransformerLm,
    prompt: &[u32],
    chunk: usize,
    cache: &mut <TransformerLm as CausalLm>::Cache,
) -> Result<Vec<f32>> {
    let mut logits = Vec::new();
    for piece in prompt.chunks(chunk) {
        logits = lm.prefill(piece, cache)?;
    }
    Ok(logits)
}

/// One prefill-then-decode measurement.
struct DirectSample {
    prefill_seconds: f64,
    decode_seconds: f64,
    greedy_ids: Vec<u32>,
}

/// Prefills `prompt` into a fresh cache, then runs `new_tokens` single-token greedy steps.
fn direct_sample(lm: &TransformerLm, prompt: &[u32], new_tokens: usize, chunk: usize) -> Result<DirectSample> {
    let mut cache = lm.new_cache();
    let started = Instant::now();
    let logits = prefill(lm, prompt, chunk, &mut cache)?;
    let mut next = argmax(&logits);
    let prefill_seconds = started.elapsed().as_secs_f64();

    let mut greedy_ids = Vec::with_capacity(new_tokens);
    let started = Instant::now();
    for _ in 0..new_tokens {
        greedy_ids.push(next);
        let logits = lm.decode(&[next], &mut [&mut cache])?;
        next = argmax(logits.first().ok_or_else(|| anyhow!("decode returned no logits"))?);
    }
    Ok(DirectSample { prefill_seconds, decode_seconds: started.elapsed().as_secs_f64(), greedy_ids })
}

/// The JSON schema the constrained phase decodes under: one long string field, so that the
/// document cannot close before every stream has run `max_tokens` (as free streams do).
fn bench_schema(new_tokens: usize) -> Value {
    json!({
        "type": "object",
        "properties": {"story": {"type": "string", "minLength": new_tokens * 8}},
        "required": ["story"],
        "additionalProperties": false,
    })
}

/// A greedy request that ignores end-of-sequence tokens, so every stream runs `max_tokens`.
fn bench_request(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt,
        max_tokens,
        sampling: SamplingParams { temperature: 0.0, seed: Some(0), ..SamplingParams::default() },
        stop: Vec::new(),
        ignore_eos: true,
        deadline: Instant::now() + std::time::Duration::from_secs(3600),
        constraint: None,
    }
}

/// Seconds from submitting one request to its first token event.
fn ttft_sample(engine: &Engine, prompt: &[u32]) -> Result<f64> {
    let started = Instant::now();
    let mut rx = engine.submit(bench_request(prompt.to_vec(), 1))?;
    let mut ttft = None;
    while let Some(event) = rx.blocking_recv() {
        match event {
            Event::Token(_) => {
                ttft.get_or_insert_with(|| started.elapsed().as_secs_f64());
            }
            Event::Done(_) => break,
            Event::Failed(e) => return Err(e.into()),
        }
    }
    ttft.ok_or_else(|| anyhow!("the engine produced no token"))
}

/// One run of several concurrent streams through the engine.
struct StreamsSample {
    /// Decode tokens/s over the steady state: from the moment every stream has its first token
    /// (all prefills done) to the last token.
    aggregate_decode: f64,
    /// All generated tokens over the whole run, prefills included.
    end_to_end: f64,
    /// Seconds until every stream had its first token.
    all_first_token_seconds: f64,
}

/// Submits one request per prompt at once and timestamps every token as it arrives.
fn streams_sample(
    engine: &Engine,
    prompts: &[Vec<u32>],
    new_tokens: usize,
    grammar: Option<&GrammarCompiler>,
) -> Result<StreamsSample> {
    let mut requests = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        let mut request = bench_request(prompt.clone(), new_tokens);
        if let Some(compiler) = grammar {
            // Compiling is the API's work, before the request reaches the engine: not timed.
            request.constraint = Some(compiler.compile(&Grammar::JsonSchema(bench_schema(new_tokens)))?);
        }
        requests.push(request);
    }
    let started = Instant::now();
    let mut receivers = Vec::with_capacity(prompts.len());
    for request in requests {
        receivers.push(engine.submit(request)?);
    }
    let listeners: Vec<_> = receivers
        .into_iter()
        .map(|mut rx| {
            std::thread::spawn(move || -> Result<Vec<Instant>> {
                let mut times = Vec::new();
                while let Some(event) = rx.blocking_recv() {
                    match event {
                        Event::Token(_) => times.push(Instant::now()),
                        Event::Done(_) => return Ok(times),
                        Event::Failed(e) => return Err(e.into()),
                    }
                }
                bail!("the engine closed a stream without finishing it")
            })
        })
        .collect();
    let mut streams = Vec::with_capacity(listeners.len());
    for listener in listeners {
        streams.push(listener.join().map_err(|_| anyhow!("a stream listener panicked"))??);
    }
    let first_of = |times: &Vec<Instant>| times.first().copied();
    let last_of = |times: &Vec<Instant>| times.last().copied();
    let all_first = streams.iter().filter_map(first_of).max().ok_or_else(|| anyhow!("no tokens"))?;
    let end = streams.iter().filter_map(last_of).max().ok_or_else(|| anyhow!("no tokens"))?;
    let after: usize = streams.iter().map(|t| t.iter().filter(|&&at| at > all_first).count()).sum();
    let total: usize = streams.iter().map(Vec::len).sum();
    let window = end.duration_since(all_first).as_secs_f64();
    Ok(StreamsSample {
        aggregate_decode: if window > 0.0 { after as f64 / window } else { f64::NAN },
        end_to_end: total as f64 / end.duration_since(started).as_secs_f64(),
        all_first_token_seconds: all_first.duration_since(started).as_secs_f64(),
    })
}

/// One prompt per stream, each starting at its own offset in the text, so no two are equal.
fn stream_prompts(vocab: &TextTokenizer, args: &Args) -> Result<Vec<Vec<u32>>> {
    (0..args.streams).map(|s| prompt_ids(vocab, args.prompt_tokens, s * 11)).collect()
}

/// Decode under a JSON schema against the same decode free, 1 and `--streams` streams, the two
/// interleaved repeat by repeat so that drift on a shared machine hits both alike.
fn constrained_phase(
    engine: &Engine,
    vocab: Arc<TextTokenizer>,
    prompt: &[u32],
    args: &Args,
    report: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    let started = Instant::now();
    let compiler = GrammarCompiler::new(vocab.clone())?;
    report.insert("grammar_compiler_build_seconds".into(), json!(started.elapsed().as_secs_f64()));
    let started = Instant::now();
    compiler.compile(&Grammar::JsonSchema(bench_schema(args.new_tokens)))?;
    report.insert("grammar_compile_seconds".into(), json!(started.elapsed().as_secs_f64()));
    // One mask at a time along a document, on this thread alone (no forward pass beside it).
    let mut constraint = compiler.compile(&Grammar::JsonSchema(bench_schema(args.new_tokens)))?;
    let document = format!("{{\"story\": \"{}", &PROMPT_TEXT[..300]);
    let (mut mask_seconds, mut accept_seconds) = (Vec::new(), Vec::new());
    for token in vocab.encode(&document, false)? {
        let started = Instant::now();
        constraint.mask().map_err(|e| anyhow!(e))?;
        mask_seconds.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        constraint.accept(token).map_err(|e| anyhow!(e))?;
        accept_seconds.push(started.elapsed().as_secs_f64());
    }
    report.insert("mask_microseconds_median".into(), json!(median(&mask_seconds) * 1e6));
    report.insert("accept_microseconds_median".into(), json!(median(&accept_seconds) * 1e6));
    report.insert("streams".into(), json!(args.streams));
    let many = stream_prompts(vocab.as_ref(), args)?;
    let stats = engine.stats();
    let (masks_before, nanos_before) = (stats.grammar_masks.load(Relaxed), stats.grammar_mask_nanos.load(Relaxed));
    for (label, prompts) in [("1", vec![prompt.to_vec()]), ("n", many)] {
        eprintln!("constrained vs free decode, {} stream(s), {} repeats", prompts.len(), args.repeats);
        let (mut free, mut held) = (Vec::new(), Vec::new());
        for _ in 0..args.repeats {
            free.push(streams_sample(engine, &prompts, args.new_tokens, None)?.aggregate_decode);
            held.push(streams_sample(engine, &prompts, args.new_tokens, Some(&compiler))?.aggregate_decode);
        }
        let (free_median, held_median) = (median(&free), median(&held));
        report.insert(format!("free_decode_{label}_stream_tokens_per_second"), json!(free_median));
        report.insert(format!("json_schema_decode_{label}_stream_tokens_per_second"), json!(held_median));
        report.insert(format!("json_schema_vs_free_{label}_stream"), json!(held_median / free_median));
        report.insert(format!("json_schema_decode_{label}_stream_samples"), json!(held));
        report.insert(format!("free_decode_{label}_stream_samples"), json!(free));
    }
    let masks = stats.grammar_masks.load(Relaxed) - masks_before;
    let nanos = stats.grammar_mask_nanos.load(Relaxed) - nanos_before;
    report.insert("engine_mask_microseconds_mean".into(), json!(nanos as f64 / 1e3 / masks.max(1) as f64));
    Ok(())
}

/// Runs `f` `repeats` times and returns every sample.
fn repeat<T>(repeats: usize, mut f: impl FnMut() -> Result<T>) -> Result<Vec<T>> {
    (0..repeats).map(|_| f()).collect()
}

/// `count` deterministic sentences of about `tokens` tokens ([CLS] and [SEP] included).
fn embedding_texts(model: &EmbeddingModel, count: usize, tokens: usize) -> Result<Vec<String>> {
    let words: Vec<&str> = EMBED_TEXT.split_whitespace().collect();
    let target = tokens.saturating_sub(2).max(1);
    (0..count)
        .map(|i| {
            let mut text = String::new();
            for word in words.iter().cycle().skip(i * 7 % words.len()) {
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(word);
                if model.count_tokens(&text)? >= target {
                    break;
                }
            }
            Ok(text)
        })
        .collect()
}

fn run(args: &Args, threads: usize) -> Result<Value> {
    let mut report = serde_json::Map::new();
    report.insert("engine".into(), json!("hearth"));
    report.insert("threads".into(), json!(threads));
    report.insert("repeats".into(), json!(args.repeats));
    let mut rss = serde_json::Map::new();
    rss.insert("start".into(), rss_bytes());
    let wants = |p: Phase| args.phases.contains(&p);
    let generation = wants(Phase::Direct) || wants(Phase::Ttft) || wants(Phase::Streams) || wants(Phase::Constrained);

    if generation {
        let path = args.model.clone().unwrap_or_else(|| models_dir().join("gemma3-270m-q4_k_m.gguf"));
        eprintln!("loading {}", path.display());
        let started = Instant::now();
        let mut file = std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let content = gguf_file::Content::read(&mut file).with_context(|| format!("{} is not GGUF", path.display()))?;
        let tokenizer = TextTokenizer::from_gguf(&content)?;
        let model = QuantizedTransformer::from_gguf(content, &mut file, &Device::Cpu)?;
        let load_seconds = started.elapsed().as_secs_f64();
        let config = model.config().clone();
        let context = config.context_length.min(hearth_crds::model::DEFAULT_CONTEXT_CAP as usize);
        if args.prompt_tokens + args.new_tokens + 1 > context {
            bail!(
                "prompt + new tokens ({}) exceed the served context ({context})",
                args.prompt_tokens + args.new_tokens
            );
        }
        rss.insert("after_load".into(), rss_bytes());
        let prompt = prompt_ids(&tokenizer, args.prompt_tokens, 0)?;
        report.insert("model".into(), json!(path.display().to_string()));
        report.insert("architecture".into(), json!(config.architecture));
        report.insert("load_seconds".into(), json!(load_seconds));
        report.insert("prompt_tokens".into(), json!(args.prompt_tokens));
        report.insert("new_tokens".into(), json!(args.new_tokens));
        report.insert("prompt_text".into(), json!(PROMPT_TEXT));
        report.insert("prompt_text_ids".into(), json!(tokenizer.encode(PROMPT_TEXT, false)?));
        report.insert("prompt_ids".into(), json!(prompt));

        let overlap_grammar = args
            .overlap_grammar
            .unwrap_or_else(|| hearth_engine::overlap_grammar_on(false, candle_core::utils::get_num_threads()));
        report.insert("overlap_grammar".into(), json!(overlap_grammar));
        let engine_config = EngineConfig {
            max_batch_size: args.streams.max(16),
            max_batch_tokens: context * args.streams.max(16),
            overlap_grammar,
            ..EngineConfig::for_context(context)
        };
        let lm = TransformerLm::new(model);
        // Warm-up: thread pools, scratch buffers and page faults are not what we measure.
        direct_sample(&lm, &prompt[..prompt.len().min(32)], 4, engine_config.prefill_chunk)?;

        if wants(Phase::Direct) {
            eprintln!(
                "prefill {} tokens + decode {} tokens, {} repeats",
                args.prompt_tokens, args.new_tokens, args.repeats
            );
            let samples =
                repeat(args.repeats, || direct_sample(&lm, &prompt, args.new_tokens, engine_config.prefill_chunk))?;
            let prefill: Vec<f64> = samples.iter().map(|s| prompt.len() as f64 / s.prefill_seconds).collect();
            let decode: Vec<f64> = samples.iter().map(|s| args.new_tokens as f64 / s.decode_seconds).collect();
            report.insert("prefill_tokens_per_second".into(), json!(median(&prefill)));
            report.insert("prefill_samples".into(), json!(prefill));
            report.insert("decode_tokens_per_second".into(), json!(median(&decode)));
            report.insert("decode_samples".into(), json!(decode));
            report.insert("greedy_ids".into(), json!(samples.first().map(|s| s.greedy_ids.clone())));
            rss.insert("after_direct".into(), rss_bytes());
        }

        if wants(Phase::Ttft) || wants(Phase::Streams) || wants(Phase::Constrained) {
            let vocab = Arc::new(tokenizer);
            let engine = Engine::start(lm, vocab.clone(), engine_config)?;
            if wants(Phase::Ttft) {
                eprintln!("time to first token through the engine, {} repeats", args.repeats);
                let samples = repeat(args.repeats, || ttft_sample(&engine, &prompt))?;
                report.insert("ttft_seconds".into(), json!(median(&samples)));
                report.insert("ttft_samples".into(), json!(samples));
                rss.insert("after_ttft".into(), rss_bytes());
            }
            if wants(Phase::Streams) {
                eprintln!("engine decode: 1 stream, then {} streams, {} repeats", args.streams, args.repeats);
                let one = [prompt.clone()];
                let single = repeat(args.repeats, || streams_sample(&engine, &one, args.new_tokens, None))?;
                let many = stream_prompts(vocab.as_ref(), args)?;
                let batched = repeat(args.repeats, || streams_sample(&engine, &many, args.new_tokens, None))?;
                let single_tps: Vec<f64> = single.iter().map(|s| s.aggregate_decode).collect();
                let agg: Vec<f64> = batched.iter().map(|s| s.aggregate_decode).collect();
                let e2e: Vec<f64> = batched.iter().map(|s| s.end_to_end).collect();
                let first: Vec<f64> = batched.iter().map(|s| s.all_first_token_seconds).collect();
                let single_median = median(&single_tps);
                let agg_median = median(&agg);
                report.insert("streams".into(), json!(args.streams));
                report.insert("stream_prompt_ids".into(), json!(many));
                report.insert("engine_single_stream_decode_tokens_per_second".into(), json!(single_median));
                report.insert("engine_single_stream_samples".into(), json!(single_tps));
                report.insert("aggregate_decode_tokens_per_second".into(), json!(agg_median));
                report.insert("aggregate_decode_samples".into(), json!(agg));
                report.insert("aggregate_speedup_vs_single_stream".into(), json!(agg_median / single_median));
                report.insert("streams_end_to_end_tokens_per_second".into(), json!(median(&e2e)));
                report.insert("streams_all_first_token_seconds".into(), json!(median(&first)));
                rss.insert("after_streams".into(), rss_bytes());
            }
            if wants(Phase::Constrained) {
                constrained_phase(&engine, vocab.clone(), &prompt, args, &mut report)?;
            }
            // Dropping the last handle lets the worker thread finish and free the model.
            drop(engine);
        }
        report.insert("generation_peak_rss_bytes".into(), rss_bytes()["peak"].clone());
    }

    if wants(Phase::Embed) {
        let dir = args.embedding_model.clone().unwrap_or_else(|| models_dir().join("all-minilm-l6-v2"));
        if dir.join("model.safetensors").is_file() {
            eprintln!(
                "embeddings: batch {} of ~{} tokens, {} repeats",
                args.embed_batch, args.embed_tokens, args.repeats
            );
            let model = EmbeddingModel::load(&dir, &Device::Cpu)?;
            let texts = embedding_texts(&model, args.embed_batch, args.embed_tokens)?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let tokens = model.usage_tokens(&refs)?;
            model.embed(&refs)?; // warm-up
            let samples = repeat(args.repeats.max(3), || {
                let started = Instant::now();
                model.embed(&refs)?;
                Ok(refs.len() as f64 / started.elapsed().as_secs_f64())
            })?;
            report.insert("embedding_model".into(), json!(dir.display().to_string()));
            report.insert("embedding_encoder".into(), json!(model.encoder_name()));
            report.insert("embedding_batch".into(), json!(refs.len()));
            report.insert("embedding_texts".into(), json!(texts));
            report.insert("embedding_tokens_per_text".into(), json!(tokens as f64 / refs.len() as f64));
            report.insert("embeddings_per_second".into(), json!(median(&samples)));
            report.insert("embeddings_samples".into(), json!(samples));
            rss.insert("after_embed".into(), rss_bytes());
        } else {
            eprintln!("skipping embeddings: no model.safetensors in {}", dir.display());
            report.insert("embeddings_skipped".into(), json!(format!("no model.safetensors in {}", dir.display())));
        }
    }
    rss.insert("end".into(), rss_bytes());
    report.insert("rss_bytes".into(), Value::Object(rss));
    Ok(Value::Object(report))
}

/// The human-readable summary of a report.
fn render_table(report: &Value) -> String {
    use std::fmt::Write;
    let num = |key: &str| report.get(key).and_then(Value::as_f64);
    let int = |key: &str| report.get(key).and_then(Value::as_u64).unwrap_or(0);
    let mib = |v: Option<&Value>| v.and_then(Value::as_f64).map(|b| b / (1024.0 * 1024.0));
    let streams = int("streams");
    // (label, value, decimals, unit suffix)
    let rows: Vec<(String, Option<f64>, usize, &str)> = vec![
        ("load (s)".into(), num("load_seconds"), 2, ""),
        ("prefill tokens/s".into(), num("prefill_tokens_per_second"), 1, ""),
        ("decode tokens/s".into(), num("decode_tokens_per_second"), 2, ""),
        ("time to first token, engine (ms)".into(), num("ttft_seconds").map(|s| s * 1000.0), 1, ""),
        ("engine decode tokens/s, 1 stream".into(), num("engine_single_stream_decode_tokens_per_second"), 2, ""),
        (format!("aggregate decode tokens/s, {streams} streams"), num("aggregate_decode_tokens_per_second"), 2, ""),
        ("  ratio to 1 stream".into(), num("aggregate_speedup_vs_single_stream"), 2, "x"),
        (format!("  all {streams} first tokens after (s)"), num("streams_all_first_token_seconds"), 2, ""),
        ("grammar mask, one token (µs)".into(), num("mask_microseconds_median"), 0, ""),
        ("grammar accept, one token (µs)".into(), num("accept_microseconds_median"), 0, ""),
        ("grammar mask inside the engine, mean (µs)".into(), num("engine_mask_microseconds_mean"), 0, ""),
        ("free decode tokens/s, 1 stream".into(), num("free_decode_1_stream_tokens_per_second"), 2, ""),
        ("  under a JSON schema".into(), num("json_schema_decode_1_stream_tokens_per_second"), 2, ""),
        ("  ratio".into(), num("json_schema_vs_free_1_stream"), 3, "x"),
        (format!("free decode tokens/s, {streams} streams"), num("free_decode_n_stream_tokens_per_second"), 2, ""),
        ("  under a JSON schema".into(), num("json_schema_decode_n_stream_tokens_per_second"), 2, ""),
        ("  ratio".into(), num("json_schema_vs_free_n_stream"), 3, "x"),
        (format!("embeddings/s (batch {})", int("embedding_batch")), num("embeddings_per_second"), 1, ""),
        ("peak RSS, generation (MiB)".into(), mib(report.get("generation_peak_rss_bytes")), 0, ""),
        ("peak RSS, end (MiB)".into(), mib(report.pointer("/rss_bytes/end/peak")), 0, ""),
    ];

    let mut out = String::new();
    let _ = writeln!(
        out,
        "Hearth — {} ({}), {} threads, prompt {} tokens, {} new tokens, median of {}",
        report.get("model").and_then(Value::as_str).unwrap_or("-"),
        report.get("architecture").and_then(Value::as_str).unwrap_or("-"),
        int("threads"),
        int("prompt_tokens"),
        int("new_tokens"),
        int("repeats"),
    );
    for (label, value, decimals, suffix) in rows {
        if let Some(v) = value {
            let shown = format!("{v:.decimals$}{suffix}");
            let _ = writeln!(out, "  {label:<42} {shown:>10}");
        }
    }
    out
}
