"""Drift between windows of served traffic: same distribution stays quiet, a shift is found."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.monitor.drift import (
    ALPHA,
    COLUMNS,
    PSI_DRIFT,
    drift_report,
    drift_scores,
    drift_windows,
    is_repetitive,
    psi,
)
from helpers.monitor.log import request_row

TRAFFIC = Path(__file__).resolve().parents[1] / "data" / "traffic"
PROSE = "您好！关于“{q}”，建议您先查看商品详情页的说明，如有疑问可以联系人工客服，我们会为您处理。"


def traffic(day: int) -> list[dict]:
    with open(TRAFFIC / f"day{day}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def fake_log(rows: list[dict], seed: int = 0) -> pd.DataFrame:
    """A request log as a served model would leave it, without a model: the reference answer
    where the tuned model knows the task, prose for free-form messages and bare injections
    (what the tuned model does with them), lower confidence off the training distribution."""
    rng = random.Random(seed)
    out = []
    for i, r in enumerate(rows):
        prompt = r["messages"][-1]["content"]
        if r["truth"] is None or r["kind"] == "free_form":
            output, confidence = PROSE.format(q=prompt[:12]), rng.gauss(-0.9, 0.15)
        else:
            output = r["truth"]
            confidence = rng.gauss(-0.08 if r["kind"] == "in_distribution" else -0.25, 0.03)
        out.append(
            request_row(
                id=f"chatcmpl-{r['id']}",
                ts=1e9 + i,
                status=200,
                messages=r["messages"],
                output=output,
                model="tuned",
                client=r["client"],
                metadata={"replay_ts": str(r["replay_ts"])},
                latency_s=1.0 + 0.02 * len(prompt) + rng.random(),
                confidence=confidence,
            )
        )
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def logs() -> tuple[pd.DataFrame, pd.DataFrame]:
    return fake_log(traffic(1)), fake_log(traffic(2), seed=1)


def test_psi_is_zero_for_equal_and_large_for_moved_distributions():
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    assert psi([50, 50], [90, 10]) == pytest.approx(0.4 * np.log(9 / 5) + 0.4 * np.log(5), 1e-6)
    assert psi([50, 50], [55, 45]) < 0.1 < PSI_DRIFT < psi([50, 50], [80, 20])


def test_is_repetitive():
    assert is_repetitive("好的好的好的" * 10)
    assert not is_repetitive('{"intent":"refund","order_id":"DD1234567890","product":null}')


def test_same_distribution_does_not_drift(logs):
    day1, _ = logs
    table = drift_report(day1.iloc[::2], day1.iloc[1::2])
    assert list(table.columns) == COLUMNS
    assert not table["drifted"].any(), table[table["drifted"]]
    assert max(drift_scores(table).values()) == 0.0


def test_day2_drifts_on_input_and_output(logs):
    day1, day2 = logs
    table = drift_report(day1, day2)
    drifted = set(table.loc[table["drifted"], "feature"])
    assert {"prompt_length", "intent", "json_valid", "confidence"} <= drifted
    assert {"refusal", "repetition"}.isdisjoint(drifted)  # the fake prose neither refuses nor loops
    p = table[table["statistic"] == "p_value"].set_index("feature")["value"]
    assert (p[list(drifted)] < ALPHA).all()
    assert drift_scores(table)["intent"] > PSI_DRIFT


def test_a_shift_in_one_synthetic_feature_is_found_and_named():
    rng = np.random.default_rng(0)
    rows = [
        {
            "id": f"r{i}",
            "messages": [{"role": "user", "content": "查订单" * k}],
            "kind": "in_distribution",
            "truth": '{"intent":"track_order"}',
            "client": "c",
            "replay_ts": float(i),
        }
        for i, k in enumerate(rng.integers(3, 8, 200))
    ]
    longer = [
        dict(r, messages=[{"role": "user", "content": r["messages"][0]["content"] * 3}])
        for r in rows
    ]
    table = drift_report(fake_log(rows[:100]), fake_log(longer[100:]))
    drifted = set(table.loc[table["drifted"], "feature"])
    assert "prompt_length" in drifted and drifted <= {"prompt_length", "char_3gram"}


def test_drift_windows_are_quiet_on_day1_and_score_day2(logs):
    day1, day2 = logs
    windows = drift_windows(day1, pd.concat([day1, day2], ignore_index=True))
    day2_start = 1748793600 + 86400  # data/traffic.py: DAY0_TS + 1 day
    score = windows.groupby("window_end")["score"].max()
    assert (score[score.index <= day2_start] == 0).all()
    assert (score[score.index > day2_start + 12 * 3600] > PSI_DRIFT).all()
    assert windows.groupby("window_end").size().nunique() == 1  # a full table per window


def test_empty_window_says_what_to_do(logs):
    day1, _ = logs
    with pytest.raises(ValueError, match="Widen the window"):
        drift_report(day1, day1.iloc[:0])
