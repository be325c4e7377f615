"""The Grafana dashboard loads, its panels are well formed, and every metric it queries is one the project produces.

Metric names are checked against their declarations, not a live scrape: the router's in deployments/ingress.py,
vLLM's in the installed vllm/v1/metrics/loggers.py, Serve's in the installed ray/serve package. Ray exports
a metric NAME as ray_NAME, counters with _total, histograms as _bucket/_sum/_count.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

DASHBOARD = ROOT / "docs" / "grafana" / "semantic-router.json"
INGRESS = ROOT / "deployments" / "ingress.py"

# Counter("name", ...), Histogram(name="name", ...), vLLM's self._gauge_cls(name="vllm:name", ...), Serve's
# f"serve_num_{protocol_name}_requests".
DECLARATION = re.compile(r'\b_?(Counter|Gauge|Histogram|counter|gauge|histogram)(?:_cls)?\('
                         r'\s*(?:name\s*=\s*)?f?"([\w:{}]+)"')
EXPORTED_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
FAMILIES = ("router", "vllm", "serve")


def declarations(*files: Path) -> dict[str, str]:
    """Metric name -> kind ("counter", "gauge", "histogram") for every metric these sources declare."""
    found = {}
    for file in files:
        for kind, name in DECLARATION.findall(file.read_text()):
            found[re.sub(r"[^\w{}]", "_", name)] = kind.lower()  # vLLM's "vllm:x" is exported as vllm_x
    return found


def exported_names(declared: dict[str, str]) -> list[re.Pattern]:
    """What Prometheus sees for each declared metric; an f-string field ({protocol_name}) matches one word."""
    return [re.compile("ray_" + re.sub(r"\\\{\w+\\\}", "[a-z]+", re.escape(name)) + suffix)
            for name, kind in declared.items() for suffix in EXPORTED_SUFFIXES[kind]]


def installed(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def produced(family: str) -> list[re.Pattern]:
    if family == "router":
        return exported_names(declarations(INGRESS))
    if family == "vllm":
        vllm = installed("vllm")
        if vllm is None:
            pytest.skip("vLLM is not installed (the cpu or gpu extra)")
        return exported_names(declarations(vllm / "v1" / "metrics" / "loggers.py"))
    return exported_names(declarations(*sorted((installed("ray") / "serve").rglob("*.py"))))


def queried_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression: every ray_* identifier, and any other name a selector {...} follows."""
    return set(re.findall(r"\bray_\w+", expr)) | set(re.findall(r"\b([a-zA-Z_:][\w:]*)\s*\{", expr))


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def panels(dashboard) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


@pytest.fixture(scope="module")
def queries(dashboard, panels) -> dict[str, str]:
    """Where each PromQL expression is (for the failure message) -> the expression, variables' queries included."""
    found = {f"panel {p['title']!r} target {t['refId']}": t["expr"] for p in panels for t in p["targets"]}
    found.update({f"variable {v['name']!r}": v["query"]["query"]
                  for v in dashboard["templating"]["list"] if v["type"] == "query"})
    return found


def test_dashboard_is_a_grafana_dashboard_on_a_prometheus_variable(dashboard, panels):
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in panels:
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_every_panel_has_a_unique_id_a_title_and_a_query(dashboard, panels):
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    assert [p["title"] for p in dashboard["panels"] if p["type"] == "row"] == ["Router", "Models (vLLM engines)",
                                                                              "Serve"]
    for panel in panels:
        assert panel["title"].strip(), f"panel {panel['id']} has no title"
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_every_query_has_balanced_brackets(queries):
    pairs = {")": "(", "]": "[", "}": "{"}
    for where, expr in queries.items():
        stack = []
        for char in re.sub(r'"[^"]*"', '""', expr):  # brackets inside label values do not count
            if char in "([{":
                stack.append(char)
            elif char in pairs:
                assert stack and stack.pop() == pairs[char], f"{where}: unbalanced {char!r} in {expr}"
        assert not stack, f"{where}: unclosed {stack} in {expr}"


def test_every_metric_belongs_to_the_router_vllm_or_serve(queries):
    for where, expr in queries.items():
        names = queried_metrics(expr)
        assert names, f"{where} queries no metric: {expr}"
        strangers = {n for n in names if not n.startswith(tuple(f"ray_{f}_" for f in FAMILIES))}
        assert not strangers, f"{where} queries metrics from none of {FAMILIES}: {sorted(strangers)}"


@pytest.mark.parametrize("family", FAMILIES)
def test_every_metric_is_one_the_project_produces(family, queries):
    known = produced(family)
    used = {name: where for where, expr in queries.items() for name in queried_metrics(expr)
            if name.startswith(f"ray_{family}_")}
    assert used, f"the dashboard charts no ray_{family}_ metric"
    unknown = {name: where for name, where in used.items() if not any(p.fullmatch(name) for p in known)}
    assert not unknown, f"not declared by the {family}'s sources (misspelt, or a missing _total/_bucket?): {unknown}"
