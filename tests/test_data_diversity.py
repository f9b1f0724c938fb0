"""Template clusters recover the generator's templates; the recovery scores are right."""

import random

import pytest

from helpers.data import (
    adjusted_rand_index,
    diversity_report,
    load_split,
    purity,
    template_clusters,
    template_frame,
    user_text,
)


def test_frame_masks_slots_only():
    assert template_frame("订单DD1234567890退款35.5元") == "订单Ⓞ退款Ⓝ元"
    assert template_frame("My ORDER dd1234567890") == "my order Ⓞ"


def test_recovery_scores_on_known_partitions():
    truth = ["a", "a", "b", "b", "c", "c"]
    assert adjusted_rand_index([1, 1, 2, 2, 3, 3], truth) == pytest.approx(1.0)
    assert adjusted_rand_index([7, 7, 5, 5, 9, 9], truth) == pytest.approx(1.0)  # names free
    assert adjusted_rand_index([1, 2, 3, 1, 2, 3], truth) < 0.0  # worse than chance
    assert purity([1, 1, 1, 1, 2, 2], truth) == pytest.approx(4 / 6)
    assert purity(list(range(6)), truth) == 1.0  # singletons are pure: read ARI with it


def test_clusters_separate_two_frames_whatever_the_slots():
    rng = random.Random(0)
    a = [f"订单DD{rng.randint(10**9, 10**10 - 1)}什么时候发货，急" for _ in range(20)]
    b = [f"我要退款{rng.randint(1, 999)}元，商品坏了" for _ in range(20)]
    clusters = template_clusters(a + b)
    assert len(set(clusters[:20])) == 1 and len(set(clusters[20:])) == 1
    assert clusters[0] != clusters[20]


def test_course_templates_are_recovered_and_flagged():
    rows = load_split("train")[:600]
    texts = [user_text(r) for r in rows]
    truth = [r["meta"]["template"] for r in rows]
    clusters = template_clusters(texts)
    assert adjusted_rand_index(clusters, truth) > 0.8
    assert purity(clusters, truth) > 0.9
    assert diversity_report(texts)["over_templated"]


def test_varied_text_is_not_flagged():
    rng = random.Random(0)
    chars = [chr(0x4E00 + i) for i in range(500)]
    varied = ["".join(rng.choice(chars) for _ in range(15)) for _ in range(200)]
    report = diversity_report(varied)
    assert not report["over_templated"] and report["share_in_big_clusters"] < 0.1
