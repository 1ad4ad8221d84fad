"""The alert rules under a real Prometheus rule engine: `promtool check` and `promtool test rules` with
series for every alert (tests/unit/deploy/promtool/alerts_test.yml). promtool comes with Debian's
`prometheus` package, which scripts/system-deps.sh installs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit.deploy.paths import PROMETHEUS

ALERTS = PROMETHEUS / "alerts.yml"
RULE_TESTS = Path(__file__).with_name("promtool") / "alerts_test.yml"
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: run scripts/system-deps.sh "
                                                         "(apt-get install prometheus)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


def alert_names(rules: Path) -> set[str]:
    doc = yaml.safe_load(rules.read_text())
    return {r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r}


def test_rules_pass_promtool_check() -> None:
    out = promtool("check", "rules", str(ALERTS))
    assert out.returncode == 0, out.stdout + out.stderr


def test_prometheus_config_passes_promtool_check(tmp_path: Path) -> None:
    # the shipped config names the rules where compose mounts them; point it at the repo's copy
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    config["rule_files"] = [str(ALERTS)]
    # and the gateway's metrics token where compose mounts its secret to a file here
    gateway = next(job for job in config["scrape_configs"] if job["job_name"] == "lorafleet-gateway")
    assert gateway["authorization"]["credentials_file"] == "/run/secrets/metrics_token"
    (tmp_path / "metrics_token").write_text("token")
    gateway["authorization"]["credentials_file"] = str(tmp_path / "metrics_token")
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    out = promtool("check", "config", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_firing_case() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text())
    fired = {case["alertname"] for test in doc["tests"] for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert alert_names(ALERTS) - fired == set(), "add series that fire these alerts to " + RULE_TESTS.name
    assert fired <= alert_names(ALERTS)


def test_alert_unit_tests_pass() -> None:
    out = promtool("test", "rules", str(RULE_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    rules = ALERTS.read_text()
    changed = rules.replace("lorafleet_drift_input_far_share > 0.3", "lorafleet_drift_input_far_share > 0.7")
    assert changed != rules
    (tmp_path / "alerts.yml").write_text(changed)
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["rule_files"] = [str(tmp_path / "alerts.yml")]
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(tests))
    out = promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    assert out.returncode != 0 and "LorafleetInputDrift" in out.stdout + out.stderr
