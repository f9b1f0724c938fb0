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
