"""The files under deploy/: alert rules pass promtool's checks and their own unit tests, and
every metric the rules and the Grafana dashboard name is one the worker really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client import generate_latest

from dicomcast.model import DirtyMark, Written
from dicomcast.ops.metrics import Metrics
from dicomcast.state.store import StateStore

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dicomcast-dashboard.json"
GUIDE = DEPLOY.parent / "docs" / "operations.md"
METRIC = re.compile(r"\bdicomcast_[a-z_]+")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: ./scripts/test installs it (Debian package prometheus)"
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, check=False, cwd=RULES.parent
    )


def exported_names() -> set[str]:
    """Every sample name a worker with some state exports."""
    store = StateStore("sqlite://")
    store.migrate()
    store.ensure_source("pacs", "orthanc")
    store.record_page("pacs", "2", "2", [DirtyMark("a", 1.0), DirtyMark("b", 1.0)])
    a, b = store.due("pacs", 10)
    store.finish_clean(a, Written("1.2", "h", "p", "s", 1))
    store.finish_failed(b, "refused", "FhirRejected", park=True, retry_at=None)
    metrics = Metrics()
    metrics.watch_state(store, lambda: ["pacs"])
    metrics.observe_fhir("transaction", 200, 0.1)
    metrics.observe_source("pacs", 200)
    metrics.studies.labels("pacs", "synced").inc()
    metrics.sync_lag.labels("pacs").observe(1)
    metrics.study_duration.labels("pacs").observe(1)
    metrics.changes_read.labels("pacs").inc()
    metrics.set_feed("pacs", "2", "2")
    metrics.dependency_up.labels("fhir").set(1)
    metrics.paused.labels("fhir").set(0)
    metrics.heartbeat.set(1)
    return set(METRIC.findall(generate_latest(metrics.registry).decode()))


def test_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts-test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_rules_and_dashboard_name_only_metrics_that_exist() -> None:
    exported = exported_names()
    assert {"dicomcast_sync_lag_seconds_bucket", "dicomcast_studies_failed"} <= exported
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [r["expr"] for r in rules] + [
        t["expr"] for p in dashboard["panels"] for t in p["targets"]
    ]
    named = {m for e in exprs for m in METRIC.findall(e)}
    assert named and named <= exported, named - exported
    for rule in rules:  # every alert links to its section of the operations guide
        anchor = rule["annotations"]["runbook"].split("#")[1]
        assert anchor == rule["alert"].lower()


def test_dashboard_is_importable_and_every_alert_has_a_runbook_section() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(t["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"]
               for t in p["targets"])  # fmt: skip
    guide = GUIDE.read_text()
    for rule in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]:
        assert f"### {rule['alert']}" in guide
