# matterfab: `make run` for a demo, `make test` for the whole suite, `make bench` for numbers.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
MATTERFAB := $(VENV)/bin/matterfab
MFGTOOL_VENV := .venv-mfgtool
APT_PACKAGES := libnl-3-200 libnl-route-3-200 softhsm2 openssl chromium poppler-utils prometheus
STAMP := $(VENV)/.installed

.PHONY: install run demo-device-key up down test lint typecheck unit conformance integration e2e reliability bench schemas clean mfgtool-venv apt

install: $(STAMP)

# Debian packages: the Matter SDK parser needs libnl, the HSM tests need SoftHSM2, the status page
# test needs Chromium, the label tests poppler-utils (pdftoppm, pdftotext), the alert rule tests
# promtool (Debian's prometheus package). Installed only when missing, so a second
# `make install` is silent.
apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml requirements.lock | apt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip==26.3
	@$(PY) -m pip install -q --disable-pip-version-check -c requirements.lock -e '.[test]'
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
	rm -rf $(VENV) $(MFGTOOL_VENV) .matterfab build *.egg-info
