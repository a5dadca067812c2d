"""Alert rules and dashboards, checked offline: promtool and Grafana's dashboard schema.

Whether each query returns data from real components is test_chart_prometheus.py's job.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_harness import DASHBOARDS, RULES_FILE, concrete, dashboard_queries

pytestmark = pytest.mark.unit

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: run dev/install-system-deps.sh"
)

# What issue 10 asks the alerts to cover, by the rule that does it.
EXPECTED_ALERTS = {
    "CoxswainTrainingJobFailed",
    "CoxswainTrainingJobStalled",
    "CoxswainTrainingJobRestartBudgetNearlySpent",
    "CoxswainModelServiceNotReady",
    "CoxswainModelServiceP99High",
    "CoxswainCanaryRolledBack",
}
PANEL_TYPES = {"row", "timeseries", "stat", "bargauge", "gauge", "table"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)


@needs_promtool
def test_promtool_accepts_the_alert_rules() -> None:
    result = promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


def test_alert_rules_cover_the_issue_and_explain_themselves() -> None:
    rules = [r for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == EXPECTED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses a recording rule's expression as Prometheus would: one rule per query.
    queries = dashboard_queries()
    rules = [
        {"record": f"coxswain_dashboard_query_{i}", "expr": concrete(expr)}
        for i, (_, expr) in enumerate(queries)
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(queries) >= 25


def _round_trip_losses(ours: Any, theirs: Any, path: str = "") -> list[str]:
    """Fields of ours that Grafana's schema model dropped: names the schema does not know."""
    if isinstance(ours, dict):
        if not isinstance(theirs, dict):
            return [f"{path}: object became {type(theirs).__name__}"]
        lost = []
        for key, value in ours.items():
            if key not in theirs:
                lost.append(f"{path}.{key}")
            else:
                lost += _round_trip_losses(value, theirs[key], f"{path}.{key}")
        return lost
    if isinstance(ours, list):
        if not isinstance(theirs, list) or len(ours) != len(theirs):
            return [f"{path}: list changed"]
        return [
            loss
            for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
            for loss in _round_trip_losses(a, b, f"{path}[{i}]")
        ]
    return [] if ours == theirs else [f"{path}: {ours!r} became {theirs!r}"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_loads_in_grafanas_schema_model(path: Path) -> None:
    """grafana-foundation-sdk carries Grafana's dashboard schema as typed models; a field it
    does not know is lost on the way through, so a round trip names any such field."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import dashboard as schema

    ours = json.loads(path.read_text())
    theirs = json.loads(json.dumps(schema.Dashboard.from_json(ours), cls=JSONEncoder))
    assert _round_trip_losses(ours, theirs) == []
    # The SDK does not check enumerations on load; its enums are the schema's.
    assert ours["graphTooltip"] in {v.value for v in schema.DashboardCursorSync}
    for var in ours["templating"]["list"]:
        assert var["type"] in {v.value for v in schema.VariableType}
        assert var["hide"] in {v.value for v in schema.VariableHide}
        assert var["refresh"] in {v.value for v in schema.VariableRefresh}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_has_what_grafana_requires(path: Path) -> None:
    board = json.loads(path.read_text())
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"])
    assert board["title"].startswith("Coxswain / ")
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert {"from", "to"} <= board["time"].keys()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert variables["namespace"]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        assert panel["type"] in PANEL_TYPES and panel["title"]
        pos = panel["gridPos"]
        assert all(isinstance(pos[k], int) for k in ("h", "w", "x", "y"))
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, (
            f"{panel['title']} leaves the grid"
        )
        mine = {
            (x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"]


def test_dashboards_cover_the_issue() -> None:
    titles = {q.split(": ", 1)[1].rsplit(" (", 1)[0] for q, _ in dashboard_queries()}
    for wanted in (
        "TrainingJobs by phase",
        "Gang restarts by cause",
        "Training loss",
        "Evaluation metrics",
        "Samples per second",
        "ETA",
        "Requests per second",
        "Latency p50 / p99",
        "Batch size p50 / p99",
        "Queue depth",
        "Replicas",
        "Canary traffic",
        "Reconcile latency p50 / p99",
        "Reconcile errors per second",
        "Reconcile queue",
    ):
        assert wanted in titles
