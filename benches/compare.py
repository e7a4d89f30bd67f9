#!/usr/bin/env python3
"""Hearth against llama.cpp on the same GGUF, the same prompt token ids and the same threads.

Runs, per model, two subprocesses one after the other (so each one's peak RSS is its own):

  * Hearth: the Rust bench `inference-server/server/benches/generation.rs` (built here with
    `cargo bench --no-run`), which prints one JSON object including the prompt ids it used;
  * llama.cpp: this script again (`--peer-worker`), driving llama.cpp through the low-level
    API of the PyPI package llama-cpp-python with exactly those ids.

Then prints one table per model: metric, Hearth, llama.cpp, Hearth / llama.cpp.

    benches/compare.py                                   # gemma3-270m, 3 repeats
    benches/compare.py --models gemma3-270m,smollm2-135m --repeats 3 --json out.json
    benches/compare.py --model /path/to/other.gguf --bandwidth

Short model names resolve through `scripts/fetch-models.py --print-path NAME`.
Standard library plus llama-cpp-python (and numpy, which it depends on).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = "gemma3-270m"
EMBEDDING_MODEL = "minilm"

LLAMA_CPP_INSTALL = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON '
    '-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" pip install llama-cpp-python==0.3.36'
)


# ---------------------------------------------------------------------------
# Small helpers shared by both processes
# ---------------------------------------------------------------------------


def proc_status_bytes(key: str) -> int | None:
    """A `VmHWM:`-style field of /proc/self/status, in bytes (None off Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss() -> dict:
    """Peak and current resident set of this process, in bytes (the Rust bench's shape)."""
    return {"peak": proc_status_bytes("VmHWM:"), "current": proc_status_bytes("VmRSS:")}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# The llama.cpp side (runs in its own process: `compare.py --peer-worker SPEC OUT`)
# ---------------------------------------------------------------------------


def peer_worker(spec_path: str, out_path: str) -> int:
    """Measures llama.cpp as the spec asks and writes a JSON report shaped like the Rust bench's."""
    spec = json.loads(Path(spec_path).read_text())
    report: dict = {"engine": "llama.cpp", "rss_bytes": {"start": rss()}}
    try:
        import llama_cpp as L
        import numpy as np
    except ImportError as e:
        report["error"] = f"llama-cpp-python is not installed ({e}); install it with: {LLAMA_CPP_INSTALL}"
        Path(out_path).write_text(json.dumps(report))
        return 2
    report["llama_cpp_python_version"] = getattr(L, "__version__", "?")
    report["rss_bytes"]["after_import"] = rss()

    if spec.get("generation"):
        run_peer_generation(spec, report, L, np)
    if spec.get("embedding_texts"):
        run_peer_embeddings(spec, report)
    report["rss_bytes"]["end"] = rss()
    Path(out_path).write_text(json.dumps(report))
    return 0


def run_peer_generation(spec: dict, report: dict, L, np) -> None:  # noqa: N803 (module alias)
    import ctypes

    threads = spec["threads"]
    prompt: list[int] = spec["prompt_ids"]
    new_tokens: int = spec["new_tokens"]
    repeats: int = spec["repeats"]
    streams: int = spec["streams"]
    n_batch = 512

    # llama.cpp logs every load step to stderr; keep errors only.
    @L.llama_log_callback
    def quiet(level, text, _user):  # pragma: no cover - C callback
        if level == 4 and text:  # GGML_LOG_LEVEL_ERROR
            sys.stderr.write(text.decode("utf-8", "replace"))

    L.llama_log_set(quiet, None)
    L.llama_backend_init()
    report["system_info"] = L.llama_print_system_info().decode("utf-8", "replace").strip()

    started = time.perf_counter()
    mparams = L.llama_model_default_params()
    model = L.llama_model_load_from_file(spec["model"].encode(), mparams)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {spec['model']}")
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    report["load_seconds"] = time.perf_counter() - started
    report["model"] = spec["model"]
    report["prompt_tokens"] = len(prompt)
    report["new_tokens"] = new_tokens
    report["threads"] = threads
    report["repeats"] = repeats
    report["rss_bytes"]["after_load"] = rss()

    # Tokenizer agreement: the Rust side sent its ids for the bare prompt text.
    text = spec.get("prompt_text")
    if text is not None:
        raw = text.encode("utf-8")
        buf = (L.llama_token * (len(raw) + 16))()
        n = L.llama_tokenize(vocab, raw, len(raw), buf, len(buf), False, False)
        report["prompt_text_ids"] = list(buf[:n]) if n >= 0 else None

    def make_context(n_ctx: int, n_seq: int, flash_attn: int | None = None):
        params = L.llama_context_default_params()
        if flash_attn is not None:
            params.flash_attn_type = flash_attn
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.n_threads = threads
        params.n_threads_batch = threads
        ctx = L.llama_init_from_model(model, params)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {n_ctx} tokens, {n_seq} sequences")
        settings = {
            "n_ctx": L.llama_n_ctx(ctx),
            "n_batch": n_batch,
            "n_seq_max": n_seq,
            "flash_attn_type": params.flash_attn_type,
            "kv_unified": bool(params.kv_unified),
            "swa_full": bool(params.swa_full),
            "type_k": params.type_k,
        }
        return ctx, settings

    batch = L.llama_batch_init(max(n_batch, streams), 0, max(streams, 1))

    def fill(tokens, positions, seqs, want_logits) -> None:
        batch.n_tokens = len(tokens)
        for i, (tok, pos, seq, want) in enumerate(zip(tokens, positions, seqs, want_logits)):
            batch.token[i] = tok
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = 1 if want else 0

    def decode(ctx) -> None:
        rc = L.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def argmax(ctx, index: int) -> int:
        ptr = L.llama_get_logits_ith(ctx, index)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(n_vocab,))))

    def prefill(ctx, ids: list[int], seq: int) -> int:
        """Runs a prompt in n_batch chunks and returns the greedy first token."""
        for start in range(0, len(ids), n_batch):
            chunk = ids[start : start + n_batch]
            last = start + len(chunk) == len(ids)
            fill(chunk, range(start, start + len(chunk)), [seq] * len(chunk), [last and i == len(chunk) - 1 for i in range(len(chunk))])
            decode(ctx)
        return argmax(ctx, batch.n_tokens - 1)

    def continue_greedily(ctx, nxt: int) -> list[int]:
        """`new_tokens` greedy tokens of sequence 0 after the prompt, starting with `nxt`."""
        ids = []
        for step in range(new_tokens):
            ids.append(nxt)
            fill([nxt], [len(prompt) + step], [0], [True])
            decode(ctx)
            nxt = argmax(ctx, 0)
        return ids

    def clear(ctx) -> None:
        L.llama_memory_clear(L.llama_get_memory(ctx), True)

    # --- single stream: prefill, then greedy decode --------------------------------------
    ctx, settings = make_context(len(prompt) + new_tokens + 64, 1)
    report["context_settings"] = settings
    prefill(ctx, prompt[:32], 0)  # warm-up: thread pool, buffers, page faults
    for i in range(4):
        fill([prompt[0]], [32 + i], [0], [True])
        decode(ctx)
    clear(ctx)

    prefill_tps, decode_tps, ttft = [], [], []
    greedy: list[int] = []
    for r in range(repeats):
        clear(ctx)
        t0 = time.perf_counter()
        nxt = prefill(ctx, prompt, 0)
        t_prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids = continue_greedily(ctx, nxt)
        t_decode = time.perf_counter() - t0
        prefill_tps.append(len(prompt) / t_prefill)
        decode_tps.append(new_tokens / t_decode)
        ttft.append(t_prefill)
        if r == 0:
            greedy = ids
    report["prefill_tokens_per_second"] = statistics.median(prefill_tps)
    report["prefill_samples"] = prefill_tps
    report["decode_tokens_per_second"] = statistics.median(decode_tps)
    report["decode_samples"] = decode_tps
    # No server in front of llama.cpp here: its time to first token is the prefill plus the
    # first greedy pick, in-process (Hearth's goes through its engine's queue and worker thread).
    report["ttft_seconds"] = statistics.median(ttft)
    report["ttft_note"] = "in-process prefill + first argmax, no server queue"
    report["greedy_ids"] = greedy
    report["rss_bytes"]["after_direct"] = rss()
    L.llama_free(ctx)

    # The same greedy run with flash attention off (0 = LLAMA_FLASH_ATTN_TYPE_DISABLED). On CPU
    # llama.cpp's flash-attention decode rounds differently from its batched path, enough to flip
    # near-ties in a tiny model's greedy output; with it off the continuation is the reference.
    ctx, _ = make_context(len(prompt) + new_tokens + 64, 1, flash_attn=0)
    report["greedy_ids_flash_attn_off"] = continue_greedily(ctx, prefill(ctx, prompt, 0))
    L.llama_free(ctx)

    # --- several streams: one sequence id each, decoded together in one batch -------------
    if streams > 1:
        per_seq = len(prompt) + new_tokens + 64
        ctx, settings = make_context(per_seq * streams, streams)
        report["streams_context_settings"] = settings
        prompts = spec.get("stream_prompts") or [prompt] * streams
        agg, first_all = [], []
        for _ in range(repeats):
            clear(ctx)
            t_start = time.perf_counter()
            # Prefill each stream on its own, like a server admitting requests one by one.
            nxt = [prefill(ctx, p, s) for s, p in enumerate(prompts)]
            t_first = time.perf_counter()
            lengths = [len(p) for p in prompts]
            t0 = time.perf_counter()
            for step in range(new_tokens - 1):
                fill(nxt, [n + step for n in lengths], range(streams), [True] * streams)
                decode(ctx)
                nxt = [argmax(ctx, s) for s in range(streams)]
            elapsed = time.perf_counter() - t0
            agg.append(streams * (new_tokens - 1) / elapsed)
            first_all.append(t_first - t_start)
        report["streams"] = streams
        report["aggregate_decode_tokens_per_second"] = statistics.median(agg)
        report["aggregate_decode_samples"] = agg
        report["aggregate_speedup_vs_single_stream"] = report["aggregate_decode_tokens_per_second"] / report["decode_tokens_per_second"]
        report["streams_all_first_token_seconds"] = statistics.median(first_all)
        report["rss_bytes"]["after_streams"] = rss()
        L.llama_free(ctx)

    report["generation_peak_rss_bytes"] = rss()["peak"]
    L.llama_batch_free(batch)
    L.llama_model_free(model)


def run_peer_embeddings(spec: dict, report: dict) -> None:
    """The same texts through sentence-transformers when it is installed, else through ONNX
    Runtime on a graph built from the same weights (benches/minilm_onnx.py; no torch needed)."""
    texts = spec["embedding_texts"]
    try:
        from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]
        import torch  # type: ignore[import-not-found]
    except ImportError:
        SentenceTransformer = None
    if SentenceTransformer is not None:
        torch.set_num_threads(spec["threads"])
        model = SentenceTransformer(spec["embedding_model"], device="cpu")
        model.encode(texts, batch_size=len(texts))
        samples = []
        for _ in range(max(spec["repeats"], 3)):
            t0 = time.perf_counter()
            model.encode(texts, batch_size=len(texts), normalize_embeddings=True)
            samples.append(len(texts) / (time.perf_counter() - t0))
        report["embeddings_peer"] = f"sentence-transformers (torch {torch.__version__})"
        report["embeddings_per_second"] = statistics.median(samples)
        report["embeddings_samples"] = samples
        report["rss_bytes"]["after_embed"] = rss()
        return
    try:
        sys.path.insert(0, str(ROOT / "benches"))
        import minilm_onnx  # noqa: PLC0415
    except ImportError as err:
        report["embeddings_skipped"] = f"neither sentence-transformers nor onnx + onnxruntime + tokenizers is installed ({err})"
        return
    model_dir = Path(spec["embedding_model"])
    result = minilm_onnx.benchmark(model_dir, texts, spec["threads"], spec["repeats"])
    fixture = ROOT / "tests" / "fixtures" / "reference" / "all-minilm-l6-v2.embeddings.json"
    if fixture.exists() and model_dir.name == "all-minilm-l6-v2":
        result["embeddings_peer_min_cosine_vs_sentence_transformers"] = minilm_onnx.check(model_dir, fixture, spec["threads"])
    report.update(result)
    report["embeddings_peer"] = f"{result['embeddings_peer_version']} (graph built by benches/minilm_onnx.py)"
    report["rss_bytes"]["after_embed"] = rss()


# ---------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------


def resolve_model(name: str) -> Path:
    """A path as given, else a short name through scripts/fetch-models.py --print-path."""
    if os.sep in name or name.endswith(".gguf") or Path(name).exists():
        return Path(name).expanduser().resolve()
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fetch-models.py"), "--print-path", name],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(f"cannot resolve model {name!r}: {out.stderr.strip() or out.stdout.strip()}")
    return Path(out.stdout.strip())


def build_bench(profile: str | None) -> Path:
    """Builds the Rust bench and returns its executable."""
    cmd = ["cargo", "bench", "-p", "hearth-server", "--bench", "generation", "--no-run", "--message-format=json-render-diagnostics"]
    if profile:
        cmd += ["--profile", profile]
    log("building: " + " ".join(cmd))
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit("cargo could not build the bench (see above)")
    exe = None
    for line in proc.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "generation" and msg.get("executable"):
            exe = msg["executable"]
    if not exe:
        sys.exit("cargo built no `generation` bench executable")
    return Path(exe)


def run_child(cmd: list[str], env: dict) -> dict:
    """Runs the Rust bench; returns its JSON report (the last line of its stdout)."""
    with tempfile.TemporaryFile(mode="w+") as out:
        code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out).returncode
        out.seek(0)
        text = out.read()
    if code != 0:
        sys.exit(f"{cmd[0]} failed with exit code {code}:\n{text[-2000:]}")
    lines = [line for line in text.splitlines() if line.strip()]
    return json.loads(lines[-1])


def run_hearth(exe: Path, model: Path, args, phases: str) -> dict:
    cmd = [
        str(exe),
        "--model", str(model),
        "--prompt-tokens", str(args.prompt_tokens),
        "--new-tokens", str(args.new_tokens),
        "--repeats", str(args.repeats),
        "--streams", str(args.streams),
        "--threads", str(args.threads),
        "--phases", phases,
        "--json",
    ]  # fmt: skip
    if args.embedding_model:
        cmd += ["--embedding-model", str(args.embedding_model)]
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), CANDLE_NUM_THREADS=str(args.threads))
    log(f"hearth: {model.name}")
    return run_child(cmd, env)


def run_peer(model: Path, hearth: dict, args, embed_texts: list[str] | None) -> dict:
    spec = {
        "model": str(model),
        "generation": "prompt_ids" in hearth,
        "prompt_ids": hearth.get("prompt_ids"),
        "prompt_text": hearth.get("prompt_text"),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "streams": args.streams,
        "threads": args.threads,
        "embedding_texts": embed_texts,
        "embedding_model": hearth.get("embedding_model"),
    }
    if "stream_prompt_ids" in hearth:
        spec["stream_prompts"] = hearth["stream_prompt_ids"]
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp, "spec.json")
        out_path = Path(tmp, "out.json")
        spec_path.write_text(json.dumps(spec))
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS="1")
        log(f"llama.cpp: {model.name}")
        cmd = [sys.executable, __file__, "--peer-worker", str(spec_path), str(out_path)]
        code = subprocess.run(cmd, env=env).returncode
        if not out_path.exists():
            sys.exit(f"the llama.cpp worker failed with exit code {code}")
        report = json.loads(out_path.read_text())
    if "error" in report:
        sys.exit(report["error"])
    return report


def machine() -> dict:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f" {f}" in flags]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "simd": simd,
        "load_average_1min": load,
        "python": platform.python_version(),
    }


def bandwidth(threads: int) -> dict | None:
    """A STREAM-like copy (numpy): bytes read + written per second, 1 and `threads` threads."""
    try:
        import numpy as np
    except ImportError:
        return None
    n = 32 * 1024 * 1024  # 256 MiB of float64 per array, far beyond any cache
    a = np.ones(n)
    b = np.empty_like(a)
    np.copyto(b, a)

    def best_copy(parts: int) -> float:
        chunks = [(a[i * n // parts : (i + 1) * n // parts], b[i * n // parts : (i + 1) * n // parts]) for i in range(parts)]
        best = float("inf")
        for _ in range(5):
            workers = [threading.Thread(target=np.copyto, args=(dst, src)) for src, dst in chunks]
            t0 = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            best = min(best, time.perf_counter() - t0)
        return 2 * a.nbytes / best

    result = {"copy_1_thread_bytes_per_second": best_copy(1), f"copy_{threads}_threads_bytes_per_second": best_copy(threads)}
    del a, b
    return result


# (label, key, scale, decimals, lower_is_better)
ROWS = [
    ("load (s)", "load_seconds", 1.0, 2, True),
    ("prefill tokens/s", "prefill_tokens_per_second", 1.0, 1, False),
    ("decode tokens/s", "decode_tokens_per_second", 1.0, 2, False),
    ("time to first token (ms)", "ttft_seconds", 1000.0, 1, True),
    ("aggregate decode tokens/s, {streams} streams", "aggregate_decode_tokens_per_second", 1.0, 2, False),
    ("  speedup over 1 stream", "aggregate_speedup_vs_single_stream", 1.0, 2, False),
    ("  all {streams} prompts prefilled after (s)", "streams_all_first_token_seconds", 1.0, 2, True),
    ("embeddings/s (MiniLM, batch {batch})", "embeddings_per_second", 1.0, 1, False),
    ("peak RSS, generation (MiB)", "generation_peak_rss_bytes", 1 / 2**20, 0, True),
]


def fmt(value, decimals: int) -> str:
    return "—" if value is None else f"{value:,.{decimals}f}"


def print_table(name: str, hearth: dict, peer: dict | None, streams: int) -> None:
    batch = hearth.get("embedding_batch", 32)
    print(f"\n{name}  ({hearth.get('architecture', '?')}, prompt {hearth.get('prompt_tokens')} tokens, "
          f"{hearth.get('new_tokens')} new, {hearth.get('threads')} threads, median of {hearth.get('repeats')}; "
          f"load average {hearth.get('load_average_before', float('nan')):.2f} before the run)")
    print(f"  {'metric':<44} {'Hearth':>11} {'llama.cpp':>11} {'Hearth/llama':>13}")
    for label, key, scale, decimals, lower in ROWS:
        h = hearth.get(key)
        p = (peer or {}).get(key)
        if h is None and p is None:
            continue
        h = None if h is None else h * scale
        p = None if p is None else p * scale
        comparable = key != "aggregate_speedup_vs_single_stream"
        ratio = f"{h / p:.2f}" + (" ↓" if lower else "") if comparable and h is not None and p else "—"
        print(f"  {label.format(streams=streams, batch=batch):<44} {fmt(h, decimals):>11} {fmt(p, decimals):>11} {ratio:>13}")
    notes = ["ratio = Hearth / llama.cpp; on rows marked ↓ lower is better, elsewhere higher is better"]
    if hearth.get("engine_single_stream_decode_tokens_per_second"):
        notes.append(
            f"Hearth's speedup is over its engine's own 1-stream decode "
            f"({hearth['engine_single_stream_decode_tokens_per_second']:.2f} tokens/s); llama.cpp's over its decode row"
        )
    if peer and peer.get("ttft_note"):
        notes.append(f"llama.cpp time to first token: {peer['ttft_note']}; Hearth's goes through its engine")
    if peer and hearth.get("prompt_text_ids") is not None and peer.get("prompt_text_ids") is not None:
        same = hearth["prompt_text_ids"] == peer["prompt_text_ids"]
        notes.append(f"tokenizers agree on the prompt text: {'yes' if same else 'NO'} (both ran the same ids regardless)")
    if peer and hearth.get("greedy_ids") and peer.get("greedy_ids"):
        a, b = hearth["greedy_ids"], peer["greedy_ids"]
        for label, key in (("flash attention as configured", "greedy_ids"), ("flash attention off", "greedy_ids_flash_attn_off")):
            b = peer.get(key)
            if b:
                agree = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                notes.append(f"greedy continuations agree with llama.cpp ({label}) for the first {agree} of {min(len(a), len(b))} tokens")
    if hearth.get("embeddings_per_second") is not None and peer and peer.get("embeddings_skipped"):
        notes.append(f"embeddings peer skipped: {peer['embeddings_skipped']}")
    if peer and peer.get("embeddings_peer"):
        line = f"embeddings peer: {peer['embeddings_peer']}, not llama.cpp"
        if peer.get("embeddings_per_second_fused") is not None:
            line += (f"; fused graph {peer['embeddings_per_second_fused']:.1f}/s, plain {peer['embeddings_per_second_plain']:.1f}/s, "
                     "the faster is the row")
        if peer.get("embeddings_peer_min_cosine_vs_sentence_transformers") is not None:
            line += f"; its minimum cosine with sentence-transformers {peer['embeddings_peer_min_cosine_vs_sentence_transformers']:.6f}"
        notes.append(line)
    if hearth.get("embedding_encoder"):
        notes.append(f"Hearth's embeddings encoder: {hearth['embedding_encoder']}")
    if peer:
        before = (peer["rss_bytes"]["after_import"]["current"] or 0) / 2**20
        notes.append(f"peak RSS is each process's VmHWM; llama.cpp's includes Python + numpy ({before:.0f} MiB before the model)")
        settings = peer.get("context_settings", {})
        notes.append(f"llama.cpp context: {settings}; {peer.get('system_info', '')[:160]}")
    for note in notes:
        print(f"  · {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated short names or GGUF paths")
    parser.add_argument("--model", action="append", default=[], help="another GGUF (short name or path); repeatable")
    parser.add_argument("--embedding-model", help="MiniLM directory [default: fetch-models.py --print-path minilm]")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", help="cargo profile for the Rust bench [default: bench, i.e. release]")
    parser.add_argument("--no-embeddings", action="store_true", help="skip the embeddings figure")
    parser.add_argument("--no-peer", action="store_true", help="run Hearth only")
    parser.add_argument("--bandwidth", action="store_true", help="also measure copy bandwidth (numpy)")
    parser.add_argument("--json", metavar="OUT", help="write every report to this file")
    parser.add_argument("--peer-worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.peer_worker:
        return peer_worker(*args.peer_worker)

    if not args.no_peer:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            sys.exit(f"llama-cpp-python is not installed. Install it with:\n  {LLAMA_CPP_INSTALL}\n"
                     "(the default native build takes an AMX path that crashes on VMs without AMX)")

    names = [m for m in args.models.split(",") if m] + args.model
    models = [(name, resolve_model(name)) for name in names]
    if not args.no_embeddings and not args.embedding_model:
        args.embedding_model = resolve_model(EMBEDDING_MODEL)

    info = machine()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
        f"SIMD {' '.join(info['simd'])}, load average {info['load_average_1min']:.2f} (busy neighbours make every figure noisy)"
    )
    results: dict = {"machine": info, "models": {}}
    bw = None
    if args.bandwidth:
        bw = bandwidth(args.threads)
        results["bandwidth"] = bw
        if bw is None:
            print("bandwidth: skipped (numpy is not installed)")
        else:
            shown = ", ".join(f"{k.split('_bytes')[0].replace('_', ' ')} {v / 1e9:.1f} GB/s" for k, v in bw.items())
            print(f"memory bandwidth (read + write, numpy copy): {shown}")

    exe = build_bench(args.profile)
    for index, (name, path) in enumerate(models):
        phases = "direct,ttft,streams" + (",embed" if index == 0 and not args.no_embeddings else "")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        hearth = run_hearth(exe, path, args, phases)
        hearth["load_average_before"] = load
        embed_texts = hearth.get("embedding_texts")
        peer = None if args.no_peer else run_peer(path, hearth, args, embed_texts)
        results["models"][name] = {"hearth": hearth, "llama.cpp": peer, "file_bytes": path.stat().st_size}
        print_table(name, hearth, peer, args.streams)
        if bw:
            best = max(bw.values())
            print(f"  · decode ceiling ≈ {best / path.stat().st_size:.1f} tokens/s "
                  f"(best copy bandwidth / GGUF size, the weights read once per token)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
