"""Profiles: valid values, lookup errors, automatic detection and the COURSE_PROFILE override."""

import pytest

from helpers import profiles
from helpers.profiles import PROFILES, UnknownProfileError, detect_profile_name, get_profile


@pytest.mark.parametrize("profile", PROFILES.values(), ids=list(PROFILES))
def test_profile_values_are_consistent(profile):
    assert profile.dtype in {"float32", "float16", "bfloat16"}
    assert profile.method in {"lora", "qlora"}
    assert profile.lora_alpha == 2 * profile.lora_r  # the course default: alpha = 2 x r
    assert profile.max_length > 0 and profile.max_steps > 0
    assert profile.load_in_4bit == (profile.method == "qlora")
    assert profile.to_dict()["name"] == profile.name


def test_gpu_profiles_use_qlora_with_the_right_precision():
    assert get_profile("t4").dtype == "float16"  # T4 has no bf16
    assert get_profile("24g").dtype == "bfloat16"
    assert all(get_profile(n).load_in_4bit for n in ("t4", "24g"))
    assert not any(get_profile(n).load_in_4bit for n in ("tiny", "cpu-demo"))


def test_get_profile_is_case_insensitive_and_rejects_unknown_names():
    assert get_profile(" CPU-Demo ").name == "cpu-demo"
    with pytest.raises(UnknownProfileError) as err:
        get_profile("a100")
    message = str(err.value)
    assert "a100" in message and all(name in message for name in PROFILES)


@pytest.mark.parametrize(
    ("vram_gb", "cpu_demo", "expected"),
    [
        (None, False, "tiny"),
        (None, True, "cpu-demo"),
        (0.0, True, "cpu-demo"),
        (15.0, False, "t4"),
        (8.0, True, "t4"),
        (24.0, False, "24g"),
        (80.0, True, "24g"),
    ],
)
def test_detect_profile_name(vram_gb, cpu_demo, expected):
    assert detect_profile_name(vram_gb, cpu_demo) == expected


def test_override_wins_over_detection():
    assert profiles.active_profile({"COURSE_PROFILE": "24g"}).name == "24g"
    with pytest.raises(UnknownProfileError):
        profiles.active_profile({"COURSE_PROFILE": "nope"})


def test_detection_without_override_uses_the_hardware(monkeypatch):
    from helpers import env

    monkeypatch.setattr(env, "gpu_info", lambda: None)
    monkeypatch.setattr(profiles, "cpu_demo_installed", lambda: False)
    assert profiles.active_profile({}).name == "tiny"
    monkeypatch.setattr(profiles, "cpu_demo_installed", lambda: True)
    assert profiles.active_profile({}).name == "cpu-demo"
