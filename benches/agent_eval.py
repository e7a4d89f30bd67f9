#!/usr/bin/env python3
"""Task success rate of Hearth's ReAct agent loop with the models available here.

Twelve small multi-step tasks over the example handbook (manifests/examples/handbook): four
need the calculator, four need retrieval, four need both (look a number up, then compute with
it). Each model gets the same agent (calculator + handbook retrieval, 5 iterations) in one
`hearth-server up`; a task succeeds when the final answer contains the expected number.
Printed per model: success by kind, mean steps and tool calls, stop reasons, and seconds per
run. This is the baseline a Cascade (or a larger model) should lift; it is reported as it is.

Usage: benches/agent_eval.py [--models gemma3-270m,smollm2-135m,qwen25-05b] [--binary PATH]
Models come from the cache scripts/fetch-models.py fills (checksums verified there).
"""

import argparse
import collections
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE = pathlib.Path(os.environ.get("HEARTH_CACHE", pathlib.Path.home() / ".cache/hearth")) / "models"

MODELS = {
    "gemma3-270m": ("gemma3-270m-q4_k_m.gguf", 4096),
    "smollm2-135m": ("smollm2-135m-instruct-q4_1.gguf", 2048),
    "qwen25-05b": ("qwen2.5-coder-0.5b-instruct.gguf", 4096),
    "qwen25-15b": ("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 4096),
}

TASKS = [
    ("calculator", "What is 17 times 23?", "391"),
    ("calculator", "What is 1234 plus 5678?", "6912"),
    ("calculator", "What is 15 percent of 240?", "36"),
    ("calculator", "Compute (45 - 18) * 3.", "81"),
    ("retrieval", "How many days of paid annual leave does an employee get per year?", "27"),
    ("retrieval", "How many weeks of parental leave do parents receive?", "20"),
    ("retrieval", "Up to how many euros per day are meals reimbursed on travel days?", "45"),
    ("retrieval", "Within how many days must expense receipts be submitted?", "30"),
    ("composed", "How many days of paid annual leave do two employees get together in a year?", "54"),
    ("composed", "How many days of parental leave is that in days, given the weeks parents receive?", "140"),
    ("composed", "What is the most meal reimbursement for a 3-day trip (all travel days)?", "135"),
    ("composed", "If an employee carries over the maximum unused leave days, how many days do they have in the next year?", "32"),
]

SYSTEM = (
    "You are a careful assistant for a company. Use search_handbook to look up facts about company "
    "policy and calculator for every calculation. Answer with the number and a short sentence."
)


def stack(models):
    docs = []
    for name in models:
        file, context = MODELS[name]
        path = CACHE / file
        if not path.exists():
            sys.exit(f"{path} is missing: run scripts/fetch-models.py")
        docs.append(
            f"apiVersion: hearth.dev/v1alpha1\nkind: Model\nmetadata: {{name: {name}}}\nspec:\n  task: chat\n"
            f"  source: {{uri: 'file://{path}'}}\n  contextLength: {context}\n  serving: {{maxTokens: 1024}}\n"
        )
        docs.append(
            f"apiVersion: hearth.dev/v1alpha1\nkind: Agent\nmetadata: {{name: agent-{name.replace('.', '-')}}}\n"
            f"spec:\n  model: {{model: {name}}}\n  systemPrompt: {json.dumps(SYSTEM)}\n"
            "  tools: [{retrieval: {knowledgeBase: handbook, topK: 2}}, {calculator: {}}]\n"
            "  maxIterations: 5\n  memory: {shortTermTurns: 0, episodic: false}\n"
            "  guardrails: {maxToolCalls: 6, maxTokensPerRun: 12000, maxRunSeconds: 300}\n"
        )
    docs.append(
        f"apiVersion: hearth.dev/v1alpha1\nkind: Model\nmetadata: {{name: minilm}}\nspec:\n  task: embedding\n"
        f"  format: safetensors\n  source: {{uri: 'file://{CACHE / 'all-minilm-l6-v2'}'}}\n  contextLength: 256\n"
    )
    docs.append(
        "apiVersion: hearth.dev/v1alpha1\nkind: KnowledgeBase\nmetadata: {name: handbook}\nspec:\n"
        f"  embedding: {{model: minilm}}\n  sources: [{{directory: {{path: '{ROOT / 'manifests/examples/handbook'}'}}}}]\n"
        "  chunking: {chunkTokens: 200, overlapTokens: 20}\n  retrieval: {mode: hybrid, topK: 2}\n"
    )
    return "\n---\n".join(docs)


def post(url, body, timeout=600):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gemma3-270m,smollm2-135m,qwen25-05b")
    parser.add_argument("--binary", default=None)
    parser.add_argument("--threads", default="2")
    parser.add_argument("--trace", action="store_true", help="print every run's steps")
    parser.add_argument("--tasks", type=int, default=len(TASKS), help="only the first N tasks of each kind")
    args = parser.parse_args()
    models = args.models.split(",")
    binary = args.binary or str(
        pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug/hearth-server"
    )
    with tempfile.TemporaryDirectory() as tmp:
        stack_file = pathlib.Path(tmp) / "stack.yaml"
        stack_file.write_text(stack(models))
        server = subprocess.Popen(
            [binary, "up", "-f", str(stack_file), "--port", "0", "--threads", args.threads, "--data-dir", tmp],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            base = None
            for line in server.stdout:
                if line.startswith("Hearth is up: "):
                    base = line.split(": ", 1)[1].strip()
                    break
            if base is None:
                sys.exit("hearth-server up did not start")
            print(f"{min(args.tasks, 4) * 3} tasks; binary {binary}; threads {args.threads}\n")
            print(f"{'model':14} {'calc':>5} {'retr':>5} {'both':>5} {'all':>6} {'steps':>6} {'tools':>6} {'s/run':>6}  stop reasons")
            for name in models:
                agent = f"agent-{name.replace('.', '-')}"
                wins = collections.Counter()
                kinds = collections.Counter()
                stops = collections.Counter()
                steps = tools = 0
                started = time.time()
                for kind, question, expected in [t for t in TASKS if [x for x in TASKS if x[0] == t[0]].index(t) < args.tasks]:
                    run = post(f"{base}/agents/{agent}/runs", {"input": question})
                    answer = run.get("answer") or ""
                    ok = re.search(rf"(?<![\d.]){re.escape(expected)}(?![\d])", answer) is not None
                    kinds[kind] += 1
                    wins[kind] += ok
                    stops[run.get("stop_reason")] += 1
                    steps += len(run["steps"])
                    tools += run["tool_calls"]
                    if args.trace:
                        print(f"--- {agent}: {question} -> {answer!r} ({'ok' if ok else 'wrong'})")
                        for step in run["steps"]:
                            print(f"    {step['outcome']:18} {step.get('action') or '':16} {json.dumps(step.get('arguments'))[:60]}")
                            if step["outcome"] == "malformed_output":
                                print(f"      output: {step['output'][:300]!r}")
                        if run.get("error"):
                            print(f"    error: {run['error'][:300]}")
                ran = sum(kinds.values())
                seconds = (time.time() - started) / ran
                total = sum(wins.values())
                rate = lambda k: f"{wins[k]}/{kinds[k]}"  # noqa: E731
                reasons = ", ".join(f"{k} {v}" for k, v in stops.most_common())
                print(
                    f"{name:14} {rate('calculator'):>5} {rate('retrieval'):>5} {rate('composed'):>5} "
                    f"{total / ran:>6.2f} {steps / ran:>6.1f} {tools / ran:>6.1f} {seconds:>6.1f}  {reasons}",
                    flush=True,
                )
        finally:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
