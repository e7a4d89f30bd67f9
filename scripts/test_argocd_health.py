"""Runs Hearth's Argo CD health checks (helm/hearth/argocd/*.health.lua) in Lua 5.1 (the
dialect of gopher-lua, Argo CD's interpreter) against the samples in tests/fixtures/argocd/.

    python3 -m unittest discover -s scripts -p 'test_*.py'
    python3 scripts/test_argocd_health.py

Needs the PyPI packages lupa (Lua 5.1 embedded; `python3 -m pip install lupa pyyaml`) and
PyYAML. Without them the tests fail; they never skip.
"""

from __future__ import annotations

import importlib.util
import unittest
from pathlib import Path

try:
    from lupa import lua51
except ImportError as e:  # reported by every test below, never skipped
    lua51 = None
    _LUPA_ERROR = f"lupa with Lua 5.1 is required: python3 -m pip install lupa ({e})"
try:
    import yaml
except ImportError as e:
    yaml = None
    _YAML_ERROR = f"PyYAML is required: python3 -m pip install pyyaml ({e})"

ROOT = Path(__file__).resolve().parent.parent
ARGOCD = ROOT / "helm" / "hearth" / "argocd"
FIXTURES = ROOT / "tests" / "fixtures" / "argocd"
KINDS = {"model": "Model", "cascade": "Cascade", "knowledgebase": "KnowledgeBase", "agent": "Agent"}
# What Argo CD accepts as a health status.
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

# Runs a check the way Argo CD does: `obj` is the live object, the script's return value is the
# health. The environment holds only the base functions and libraries Argo CD's sandbox opens,
# so a check that reaches for os, io or require fails here too.
_RUNNER = """
local source, name, obj = ...
local check, err = loadstring(source, name)
if check == nil then
  error("does not compile: " .. err)
end
setfenv(check, {
  obj = obj, ipairs = ipairs, pairs = pairs, next = next, type = type, tostring = tostring,
  tonumber = tonumber, error = error, pcall = pcall, select = select, unpack = unpack,
  string = string, table = table, math = math,
})
local hs = check()
if type(hs) ~= "table" then
  error("returned " .. type(hs) .. ", expected a table")
end
return hs.status, hs.message
"""


def _require_tools(test: unittest.TestCase) -> None:
    if lua51 is None:
        test.fail(_LUPA_ERROR)
    if yaml is None:
        test.fail(_YAML_ERROR)


def health(script: str, name: str, obj: dict) -> tuple[str, str]:
    """The (status, message) a check returns for `obj`, in a fresh Lua 5.1 runtime."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    status, message = lua.execute(_RUNNER, script, name, lua.table_from(obj, recursive=True))
    return status, message


def samples(stem: str) -> list[dict]:
    """The sample objects of one kind."""
    return [d for d in yaml.safe_load_all((FIXTURES / f"{stem}.yaml").read_text()) if d]


class HealthChecks(unittest.TestCase):
    """Each kind's check gives the health its samples expect."""

    def setUp(self) -> None:
        _require_tools(self)

    def test_interpreter_is_lua_5_1_like_argo_cd(self) -> None:
        self.assertEqual(lua51.LuaRuntime().eval("_VERSION"), "Lua 5.1")

    def test_every_sample_gets_the_expected_health_and_message(self) -> None:
        for stem, kind in KINDS.items():
            script = (ARGOCD / f"{stem}.health.lua").read_text()
            for obj in samples(stem):
                case = obj["metadata"]["annotations"]["test.hearth.dev/case"]
                with self.subTest(kind=kind, case=case):
                    self.assertEqual(obj["kind"], kind)
                    want = obj["metadata"]["annotations"]
                    status, message = health(script, f"{stem}.health.lua", obj)
                    self.assertIn(status, ARGO_STATUSES)
                    self.assertEqual(status, want["test.hearth.dev/health"])
                    self.assertEqual(message, want["test.hearth.dev/message"])

    def test_every_kind_has_ready_progressing_and_degraded_samples(self) -> None:
        for stem, kind in KINDS.items():
            with self.subTest(kind=kind):
                cases = {o["metadata"]["annotations"]["test.hearth.dev/case"]: o for o in samples(stem)}
                for case, want in [
                    ("ready", "Healthy"),
                    ("no-status", "Progressing"),
                    ("reconciling", "Progressing"),
                    ("stale-generation", "Progressing"),
                    ("stalled", "Degraded"),
                ]:
                    self.assertIn(case, cases, f"tests/fixtures/argocd/{stem}.yaml lacks the {case} sample")
                    self.assertEqual(cases[case]["metadata"]["annotations"]["test.hearth.dev/health"], want)
                self.assertNotIn("status", cases["no-status"])

    def test_degraded_message_is_the_stalled_condition_message(self) -> None:
        for stem, kind in KINDS.items():
            with self.subTest(kind=kind):
                obj = next(o for o in samples(stem) if o["metadata"]["annotations"]["test.hearth.dev/case"] == "stalled")
                stalled = next(c for c in obj["status"]["conditions"] if c["type"] == "Stalled")
                _, message = health((ARGOCD / f"{stem}.health.lua").read_text(), stem, obj)
                self.assertEqual(message, stalled["message"])

    def test_a_check_without_obj_fields_still_returns_progressing(self) -> None:
        # Argo CD may call the check on a freshly created object with only metadata.
        for stem, kind in KINDS.items():
            with self.subTest(kind=kind):
                obj = {"apiVersion": "hearth.dev/v1alpha1", "kind": kind, "metadata": {"name": "x"}}
                status, _ = health((ARGOCD / f"{stem}.health.lua").read_text(), stem, obj)
                self.assertEqual(status, "Progressing")


class ArgoCdSnippet(unittest.TestCase):
    """helm/hearth/argocd/argocd-cm.yaml carries exactly the committed checks."""

    def setUp(self) -> None:
        _require_tools(self)

    def test_snippet_is_up_to_date(self) -> None:
        spec = importlib.util.spec_from_file_location("render_argocd_cm", ROOT / "scripts" / "render-argocd-cm.py")
        render = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(render)
        self.assertEqual(
            (ARGOCD / "argocd-cm.yaml").read_text(),
            render.render(),
            "helm/hearth/argocd/argocd-cm.yaml is out of date: run scripts/render-argocd-cm.py",
        )

    def test_snippet_keys_hold_each_kind_check_verbatim(self) -> None:
        cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
        self.assertEqual((cm["apiVersion"], cm["kind"], cm["metadata"]["name"]), ("v1", "ConfigMap", "argocd-cm"))
        self.assertEqual(
            sorted(cm["data"]), sorted(f"resource.customizations.health.hearth.dev_{k}" for k in KINDS.values())
        )
        for stem, kind in KINDS.items():
            with self.subTest(kind=kind):
                pasted = cm["data"][f"resource.customizations.health.hearth.dev_{kind}"]
                self.assertEqual(pasted, (ARGOCD / f"{stem}.health.lua").read_text())
                ready = next(o for o in samples(stem) if o["metadata"]["annotations"]["test.hearth.dev/case"] == "ready")
                self.assertEqual(health(pasted, kind, ready)[0], "Healthy")


if __name__ == "__main__":
    unittest.main()
