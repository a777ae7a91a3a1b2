"""The metric catalogue (docs/metrics.md) follows Prometheus naming rules, and the shipped
dashboard and alert rules only use metrics that exist in it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\bdr_agent_[a-z0-9_]+\b")
UNITS = ("_watts", "_seconds", "_bytes", "_total", "_info")


def catalogue() -> dict[str, tuple[str, str]]:
    """name -> (type, labels) from the docs' tables."""
    rows = {}
    for line in (REPO / "docs/metrics.md").read_text().splitlines():
        m = re.match(r"^\| `(dr_agent_[a-z0-9_]+)` \| (\w+) \|\s*([^|]*?)\s*\|", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


def test_catalogue_follows_prometheus_naming() -> None:
    cat = catalogue()
    assert len(cat) >= 35
    for name, (kind, labels) in cat.items():
        assert re.fullmatch(r"dr_agent_[a-z][a-z0-9_]*", name), name
        assert kind in ("gauge", "counter"), name
        assert (kind == "counter") == name.endswith("_total"), (
            f"{name}: counters and only counters end in _total"
        )
        assert "kilowatt" not in name and "_kw" not in name, f"{name}: base units (watts)"
        assert "event_id" not in labels, f"{name}: an event id label grows a series per event"
    # Units in the name where the value has one.
    assert all(n.endswith(UNITS) for n in cat if "power" in n or "_load_" in n or "duration" in n)


def promql_names(text: str) -> set[str]:
    return set(NAME.findall(text))


def test_dashboard_uses_only_catalogued_metrics() -> None:
    dash = json.loads((REPO / "config/grafana/dr-agent.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dash["annotations"]["list"]]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    used = set().union(*(promql_names(e) for e in exprs))
    assert used <= set(catalogue()), used - set(catalogue())
    # What the issue asks the dashboard to show.
    for must in (
        "dr_agent_site_load_watts",
        "dr_agent_event_baseline_watts",
        "dr_agent_event_band_lower_watts",
        "dr_agent_event_band_upper_watts",
        "dr_agent_event_realized_curtailment_watts",
        "dr_agent_event_active_steps",
        "dr_agent_device_up",
    ):
        assert must in used, must
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dash["panels"])


def test_alert_rules_use_only_catalogued_metrics() -> None:
    rules = yaml.safe_load((REPO / "config/prometheus/dr-agent.rules.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert len(alerts) >= 6
    for r in alerts:
        assert r["alert"] and r["expr"] and r["annotations"]["summary"]
        assert promql_names(r["expr"]) <= set(catalogue()), r["expr"]
    scrape = yaml.safe_load((REPO / "config/prometheus/prometheus.yml").read_text())
    job = scrape["scrape_configs"][0]
    assert job["job_name"] == "dr-agent" and "dr-agent.rules.yml" in scrape["rule_files"]
    assert all(t.endswith(":9464") for c in job["static_configs"] for t in c["targets"])
