"""Automatic checks for the notebooks' exercises (练习), shared by notebooks and solutions.

A check returns False (and says so) while the answer is still ``None``, raises an
``AssertionError`` with a hint when it is wrong, and returns True when it is right.
The checks of notebooks 00-04 are in ``basics``, those of 05-11 in ``advanced``.

    >>> from helpers.exercises import check_00_1
    >>> check_00_1(None)
    还没有作答：把答案赋给变量后重新运行这一格。
    False
"""

from helpers.exercises.advanced import (
    check_05_1,
    check_05_2,
    check_06_1,
    check_06_2,
    check_07_1,
    check_07_2,
    check_08_1,
    check_08_2,
    check_09_1,
    check_09_2,
    check_10_1,
    check_10_2,
    check_11_1,
    check_11_2,
    low_confidence_precision,
)
from helpers.exercises.basics import (
    SEQ_LEN_CHOICES,
    SHAREGPT_MESSAGES,
    check_00_1,
    check_00_2,
    check_01_1,
    check_01_2,
    check_01_3,
    check_01_4,
    check_01_5,
    check_02_1,
    check_02_2,
    check_03_1,
    check_03_2,
    check_04_1,
    check_04_2,
    check_04_3,
    near_dup_extra_removed,
    t4_fits,
    t4_longest_sequence,
)

__all__ = [
    "SEQ_LEN_CHOICES",
    "t4_fits",
    "t4_longest_sequence",
    "check_00_1",
    "check_00_2",
    "SHAREGPT_MESSAGES",
    "check_01_1",
    "check_01_2",
    "near_dup_extra_removed",
    "check_01_3",
    "check_01_4",
    "check_01_5",
    "check_02_1",
    "check_02_2",
    "check_03_1",
    "check_03_2",
    "check_04_1",
    "check_04_2",
    "check_04_3",
    "check_05_1",
    "check_05_2",
    "check_06_1",
    "check_06_2",
    "low_confidence_precision",
    "check_07_1",
    "check_07_2",
    "check_09_1",
    "check_09_2",
    "check_10_1",
    "check_10_2",
    "check_11_1",
    "check_11_2",
    "check_08_1",
    "check_08_2",
]
