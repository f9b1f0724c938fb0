"""Exercise checks: unanswered returns False, wrong answers fail with a hint, right ones pass."""

import pytest

from helpers import exercises


def test_unanswered_exercises_are_not_failures(capsys):
    assert exercises.check_00_1(None) is False
    assert "还没有作答" in capsys.readouterr().out


def test_00_1_reference_is_the_longest_fitting_sequence():
    best = exercises.t4_longest_sequence()
    assert best in exercises.SEQ_LEN_CHOICES
    assert exercises.check_00_1(best)
    with pytest.raises(AssertionError, match="提示"):
        exercises.check_00_1(best * 2)


def test_00_2_accepts_the_renamed_folder_only():
    right = "/root/autodl-tmp/modelscope/models/Qwen/Qwen2___5-0___5B-Instruct"
    assert exercises.check_00_2(right + "/")
    with pytest.raises(AssertionError, match="___"):
        exercises.check_00_2("/root/autodl-tmp/modelscope/models/Qwen/Qwen2.5-0.5B-Instruct")


def test_01_1_wants_the_normalised_roles():
    assert exercises.check_01_1(list(exercises.SHAREGPT_MESSAGES))
    wrong = [dict(m) for m in exercises.SHAREGPT_MESSAGES]
    wrong[1]["role"] = "human"
    with pytest.raises(AssertionError, match="human→user"):
        exercises.check_01_1(wrong)


def test_01_2_counts_against_trl(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.data import load_split, loss_mask

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    train = load_split("train")
    sample = {"messages": train[0]["messages"] + train[1]["messages"][1:]}
    right = sum(loss_mask(sample, tokenizer, "last_turn")[1])
    assert exercises.check_01_2(right, sample, model, tokenizer)
    with pytest.raises(AssertionError, match="提示"):
        exercises.check_01_2(right + 1, sample, model, tokenizer)


def test_04_exercises_check_perplexity_and_first_divergence():
    import math

    from helpers.evaluation import TokenScores

    scores = TokenScores("x", [5, 6, 7], [0.5, 0.25, 1.0], [5, 9, 7], [0.5, 0.6, 1.0], [1, 2, 0])
    assert exercises.check_04_1(None, scores) is False
    assert exercises.check_04_1(2.0, scores)  # exp((ln 2 + ln 4 + 0) / 3) = 2
    with pytest.raises(AssertionError, match="困惑度"):
        exercises.check_04_1(math.exp(3 * math.log(2)), scores)  # forgot to divide by n
    assert exercises.check_04_2(1, scores)
    with pytest.raises(AssertionError):
        exercises.check_04_2(2, scores)
    same = TokenScores("y", [5], [1.0], [5], [1.0], [0.0])
    assert exercises.check_04_2(-1, same)
