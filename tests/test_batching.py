"""Batch geometry from the data: max_length from p99, the effective batch kept, checkpointing
only when the VRAM estimator says nothing fits without it."""

from __future__ import annotations

import copy

import pytest

from helpers import batching, sft, vram
from helpers.profiles import get_profile
from helpers.rehearsal import rehearse


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


def _rows(profile, words: int = 0):
    rows = copy.deepcopy(sft.training_rows(profile)[0])
    if words:  # longer answers: the same rows, each assistant turn repeated
        for row in rows:
            row["messages"][-1]["content"] = " ".join([row["messages"][-1]["content"]] * words)
    return rows


@pytest.mark.parametrize("name", ["t4", "24g"])
def test_every_split_keeps_the_effective_batch_and_the_choice_is_the_cheapest_that_fits(name):
    profile = get_profile(name)
    table = batching.candidates(profile, max_length=320, vram_gb=vram.USABLE_VRAM_GB[name])
    effective = profile.per_device_batch_size * profile.gradient_accumulation_steps
    assert set(table["micro_batch"] * table["accumulation"]) == {effective}
    assert len(table) == 2 * sum(effective % m == 0 for m in range(1, effective + 1))
    chosen = table[table["chosen"]].iloc[0]
    assert chosen["fits"] and not chosen["checkpointing"]  # ~300-token samples need none
    bigger = table[(table["micro_batch"] > chosen["micro_batch"]) & ~table["checkpointing"]]
    assert not bigger["fits"].any()
    # checkpointing saves memory in every split: the estimator agrees with the reasoning
    by_split = table.pivot(index="micro_batch", columns="checkpointing", values="estimated_gb")
    assert (by_split[True] < by_split[False]).all()


def test_checkpointing_only_when_nothing_fits_without_it():
    profile = get_profile("24g")
    table = batching.candidates(profile, max_length=2048, vram_gb=24.0)
    chosen = table[table["chosen"]].iloc[0]
    assert not table[~table["checkpointing"]]["fits"].any()
    assert chosen["checkpointing"] and chosen["fits"]
    with pytest.raises(RuntimeError, match="No split of the effective batch 16 fits 4 GB"):
        batching.candidates(profile, max_length=2048, vram_gb=4.0)


@pytest.mark.parametrize("name", ["t4", "24g"])
def test_a_rehearsal_sizes_the_batches_for_its_gpu_from_the_samples(name, tokenizer):
    profile = rehearse(get_profile(name))
    fit = batching.fit_batches(profile, _rows(profile), tokenizer)
    chosen = fit.profile
    assert chosen.max_length % batching.ROUND_TO == 0
    assert fit.p99 <= chosen.max_length < fit.p99 + batching.ROUND_TO
    assert fit.truncated_share <= 0.01
    assert (chosen.per_device_batch_size * chosen.gradient_accumulation_steps) == (
        profile.per_device_batch_size * profile.gradient_accumulation_steps
    )
    assert fit.vram_gb == vram.USABLE_VRAM_GB[name]
    assert chosen.substitutions == profile.substitutions  # still the same rehearsal
    changes = fit.changes()
    assert changes.loc["max_length", "profile"] == get_profile(name).max_length
    assert "p99" in changes.loc["max_length", "why"]


def test_longer_samples_get_a_longer_max_length_and_smaller_micro_batches(tokenizer):
    profile = rehearse(get_profile("24g"))
    short = batching.fit_batches(profile, _rows(profile), tokenizer, vram_gb=16.0)
    long = batching.fit_batches(profile, _rows(profile, words=12), tokenizer, vram_gb=16.0)
    assert long.profile.max_length > short.profile.max_length
    assert long.profile.per_device_batch_size < short.profile.per_device_batch_size


def test_a_cpu_profile_keeps_its_geometry(tokenizer):
    profile = get_profile("tiny")
    fit = batching.fit_batches(profile, _rows(profile), tokenizer)
    assert fit.profile == profile and fit.candidates.empty and fit.vram_gb is None
    assert fit.changes()["why"].str.startswith("CPU").all()
