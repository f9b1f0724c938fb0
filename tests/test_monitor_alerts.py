"""Alert rules: promtool checks and unit-tests them; the offline evaluation reads the same file
and, on the generated traffic, stays quiet on day 1 and raises drift and injection on day 2."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from test_monitor_drift import fake_log, traffic

from helpers.monitor import alerts, drift
from helpers.monitor.alerts import ALERTS_YML, OFFLINE, evaluate, load_rules

PROM = ALERTS_YML.parent
DAY2_START = 1748793600 + 86400  # data/traffic.py: DAY0_TS + 1 day


def promtool_or_skip() -> str:
    """promtool's path; skips without it, fails instead if COURSE_REQUIRE_PROMTOOL=1."""
    path = shutil.which("promtool")
    if path is None:
        missing = "no promtool on PATH (Debian/Ubuntu: apt-get install -y prometheus)"
        if os.environ.get("COURSE_REQUIRE_PROMTOOL") == "1":
            pytest.fail(f"COURSE_REQUIRE_PROMTOOL=1 but {missing}")
        pytest.skip(missing)
    return path


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool_or_skip(), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_promtool_checks_rules_and_config(tmp_path):
    res = promtool("check", "rules", "alerts.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(load_rules())} rules found" in res.stdout
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(PROM / name, tmp_path / name)
    (tmp_path / "api_key.txt").write_text("test-key\n")  # the config reads the key from a file
    res = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_unit_tests_pass_and_catch_a_changed_threshold(tmp_path):
    res = promtool("test", "rules", "alerts_test.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    shutil.copy(PROM / "alerts_test.yml", tmp_path)
    text = (PROM / "alerts.yml").read_text(encoding="utf-8")
    (tmp_path / "alerts.yml").write_text(text.replace("> 0.25", "> 0.5"), encoding="utf-8")
    res = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert res.returncode != 0 and "LLMDataDrift" in res.stdout + res.stderr


def test_every_rule_has_an_offline_counterpart_reading_the_same_metric():
    rules = load_rules()
    assert {r.name for r in rules} == set(OFFLINE)
    for r in rules:
        metric, _ = OFFLINE[r.name]
        assert metric in r.expr, (r.name, metric)
        assert r.for_s > 0 and r.severity in ("warning", "critical") and " / " in r.summary


def test_drift_threshold_agrees_with_the_drift_module():
    rule = next(r for r in load_rules() if r.name == "LLMDataDrift")
    assert rule.threshold == drift.PSI_DRIFT


@pytest.fixture(scope="module")
def chain() -> tuple[pd.DataFrame, pd.DataFrame]:
    day1, day2 = fake_log(traffic(1)), fake_log(traffic(2), seed=1)
    log = pd.concat([day1, day2], ignore_index=True)
    return log, drift.drift_windows(day1, log)


def firing(timeline: pd.DataFrame) -> dict[str, set[int]]:
    """Alert name -> the days (1, 2) it fired on."""
    fired = timeline[timeline["firing"]]
    days = (fired["window_end"] >= DAY2_START).map({False: 1, True: 2})
    return fired.assign(day=days).groupby("alert")["day"].agg(set).to_dict()


def test_day1_is_quiet_and_day2_raises_drift_injection_and_quality(chain):
    log, windows = chain
    timeline = evaluate(log, drift=windows)
    assert set(timeline.columns) >= {"window_start", "window_end", "alert", "value", "threshold"}
    fired = firing(timeline)
    assert all(days == {2} for days in fired.values()), fired
    assert {"LLMDataDrift", "LLMInjectionAttempts", "LLMLowJsonValidRate"} <= set(fired)
    first = timeline[timeline["firing"]].groupby("alert")["window_end"].min()
    attack = timeline[(timeline["alert"] == "LLMInjectionAttempts") & timeline["condition"]]
    assert first["LLMInjectionAttempts"] - attack["window_end"].min() >= 5 * 60  # for: 5m


def test_thresholds_and_for_come_from_the_file(chain, tmp_path):
    log, windows = chain
    text = ALERTS_YML.read_text(encoding="utf-8")
    stricter = tmp_path / "alerts.yml"
    stricter.write_text(
        text.replace("[1h])) > 3", "[1h])) > 100").replace("< 0.9", "< 0.5"), encoding="utf-8"
    )
    base = evaluate(log, drift=windows)
    strict = evaluate(log, drift=windows, path=stricter)
    assert "LLMInjectionAttempts" not in firing(strict)
    for name, threshold in (("LLMInjectionAttempts", 100.0), ("LLMLowJsonValidRate", 0.5)):
        assert set(strict.loc[strict["alert"] == name, "threshold"]) == {threshold}
    json_rule = [t[(t["alert"] == "LLMLowJsonValidRate")]["firing"].sum() for t in (base, strict)]
    assert json_rule[0] > json_rule[1]


def test_error_and_latency_rules_fire_on_a_bad_log(chain):
    log, _ = chain
    bad = log.copy()
    hour = alerts.clock(bad).between(DAY2_START + 10 * 3600, DAY2_START + 12 * 3600)
    bad.loc[hour, "status"] = 500
    bad.loc[hour, "latency_s"] = 45.0
    fired = firing(evaluate(bad))
    assert {"LLMHighErrorRate", "LLMHighLatencyP95"} <= set(fired)


def test_a_rule_without_counterpart_is_refused(tmp_path):
    text = ALERTS_YML.read_text(encoding="utf-8").replace("LLMPiiInOutput", "LLMSomethingNew")
    (tmp_path / "alerts.yml").write_text(text, encoding="utf-8")
    with pytest.raises(KeyError, match="LLMSomethingNew.*OFFLINE"):
        evaluate(pd.DataFrame({"ts": [0.0]}), path=tmp_path / "alerts.yml")
