# matterfab: `make run` for a demo, `make test` for the whole suite, `make bench` for numbers.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
MATTERFAB := $(VENV)/bin/matterfab
MFGTOOL_VENV := .venv-mfgtool
APT_PACKAGES := libnl-3-200 libnl-route-3-200 softhsm2 openssl chromium poppler-utils prometheus gcc
STAMP := $(VENV)/.installed

.PHONY: install run demo-device-key up down test lint typecheck unit conformance integration e2e reliability bench schemas clean mfgtool-venv apt

install: $(STAMP)

# Debian packages: the Matter SDK parser needs libnl, the HSM tests need SoftHSM2, the status page
# test needs Chromium, the label tests poppler-utils (pdftoppm, pdftotext), the alert rule tests
# promtool (Debian's prometheus package), the native extensions (shared/matterfab/matter/_pbkdf2.c,
# _qrmask.c) gcc. Installed only when missing, so a second `make install` is silent.
apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The editable install compiles the native extensions in place (setup.py): the PBKDF2 and the QR
# mask evaluation. They have no slow fallback: without a compiler or Python.h, or when one does
# not compile, `make install` fails with one line naming it.
NATIVE_SRC := setup.py shared/matterfab/matter/_pbkdf2.c shared/matterfab/matter/_qrmask.c
$(STAMP): pyproject.toml requirements.lock $(NATIVE_SRC) | apt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@cc=$$($(PY) -c 'import sysconfig; print((sysconfig.get_config_var("CC") or "cc").split()[0])'); \
	inc=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])'); \
	command -v "$$cc" >/dev/null || { echo "make install: cannot build the native extensions: no C compiler '$$cc' (apt-get install gcc)" >&2; exit 1; }; \
	test -f "$$inc/Python.h" || { echo "make install: cannot build the native extensions: no $$inc/Python.h (install the headers of $(PYTHON))" >&2; exit 1; }
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip==26.3
	@if ! out=$$($(PY) -m pip install -q --disable-pip-version-check -c requirements.lock -e '.[test,local]' 2>&1); then \
	  line=$$(grep -m1 -o "cannot build matterfab's native extension.*" <<<"$$out"); \
	  cause=$$(grep -m1 -o -E "[^ ]*matter/_[a-z0-9]+\.c:[0-9]+:[0-9]+: (fatal )?error: .*" <<<"$$out"); \
	  if [ -n "$$cause" ]; then echo "make install: cannot build a native extension: $$cause" >&2; \
	  elif [ -n "$$line" ]; then echo "make install: $$line" >&2; else echo "$$out" >&2; fi; exit 1; \
	fi; if [ -n "$$out" ]; then echo "$$out"; fi
	@$(PY) -c 'from matterfab.matter import _qrmask, pbkdf2; print("native PBKDF2:", pbkdf2.IMPLEMENTATION, "| native QR mask evaluation: built")'
	@touch $@

# esp-matter-mfg-tool in a venv of its own: the independent implementation we compare against.
mfgtool-venv: $(MFGTOOL_VENV)/.installed
$(MFGTOOL_VENV)/.installed:
	@test -x $(MFGTOOL_VENV)/bin/python || $(PYTHON) -m venv $(MFGTOOL_VENV)
	@$(MFGTOOL_VENV)/bin/pip install -q --disable-pip-version-check esp-matter-mfg-tool==1.0.29
	@touch $@

up: install
	@$(MATTERFAB) up

down:
	@if [ -x $(MATTERFAB) ]; then $(MATTERFAB) down; fi

run: install
	@$(PY) -m matterfab.demo

# dac_storage device-key end to end: stations carry simulated devices' CSRs (docs/device-key.md).
demo-device-key: install
	@$(PY) -m matterfab.demo_device_key

LINT_PATHS := shared tests $(wildcard bench)

lint: install
	@$(VENV)/bin/ruff check $(LINT_PATHS)
	@$(VENV)/bin/ruff format --check $(LINT_PATHS)

typecheck: install
	@$(VENV)/bin/mypy

schemas: install
	@$(PY) -m matterfab.messages.export schemas

test: install mfgtool-venv lint typecheck
	@$(VENV)/bin/pytest -q -p no:cacheprovider tests

# One kind of test alone (tests/<kind>); each folder is a pytest marker of the same name.
unit: install
	@$(VENV)/bin/pytest -q -p no:cacheprovider tests/unit

conformance integration e2e reliability: install mfgtool-venv
	@$(VENV)/bin/pytest -q -p no:cacheprovider tests/$@

bench: install mfgtool-venv
	@$(PY) -m bench.run

clean: down
	rm -rf $(VENV) $(MFGTOOL_VENV) .matterfab build *.egg-info shared/matterfab/matter/_pbkdf2.*.so shared/matterfab/matter/_qrmask.*.so
