"""deploy/prometheus checked by Prometheus' own tool: the rules and the configuration are valid
(``promtool check``), each alert fires over synthetic series when it should and not before its
``for:`` (``promtool test rules``, deploy/prometheus/tests/rules_test.yml), and each alert's
``runbook_url`` is a section of docs/operations.md. The live check, a real Prometheus scraping the
real services, is tests/integration/test_prometheus.py."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from harness.prometheus import promtool

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))


def run(*args: str) -> str:
    done = subprocess.run([str(promtool()), *args], capture_output=True, text=True, timeout=60, check=False, cwd=PROMETHEUS_DIR)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_rules_and_the_configuration_are_valid() -> None:
    assert "SUCCESS" in run("check", "rules", *map(str, RULE_FILES))
    assert "SUCCESS" in run("check", "config", "prometheus.yml")


def test_each_alert_fires_on_synthetic_series_when_it_should() -> None:
    assert "SUCCESS" in run("test", "rules", "tests/rules_test.yml")


def alerting_rules() -> list[dict[str, object]]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "rules" / "alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings of a page: lower case, punctuation dropped, spaces as dashes."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda rule: str(rule["alert"]))
def test_each_alert_has_a_severity_a_summary_and_a_runbook_section(rule: dict[str, object]) -> None:
    labels, annotations = rule["labels"], rule["annotations"]
    assert isinstance(labels, dict) and labels["severity"] in ("critical", "warning", "info")
    assert isinstance(annotations, dict) and annotations["summary"]
    page, _, anchor = str(annotations["runbook_url"]).partition("#")
    assert anchor in anchors((REPO / page).read_text()), f"{rule['alert']}: no section #{anchor} in {page}"


def test_the_grafana_dashboard_reads_the_provisioned_prometheus_where_compose_mounts_it() -> None:
    grafana = REPO / "deploy" / "grafana"
    [datasource] = yaml.safe_load((grafana / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090"  # the compose service of deploy/prometheus
    [provider] = yaml.safe_load((grafana / "provisioning" / "dashboards" / "model-quality-monitor.yml").read_text())["providers"]
    compose = yaml.safe_load((REPO / "deploy" / "compose.yml").read_text())
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in compose["services"]["grafana"]["volumes"]
    dashboard = json.loads((grafana / "dashboards" / "model-quality-monitor.json").read_text())
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert panels and all(panel["datasource"]["uid"] == datasource["uid"] for panel in panels)
    assert all(target["datasource"]["uid"] == datasource["uid"] for panel in panels for target in panel["targets"])
