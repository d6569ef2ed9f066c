# Two commands for a fresh clone: `make demo` and `make test`. Both create (and then reuse) .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): requirements/lock.txt requirements/btk.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "pip==26.3" "setuptools==84.2.1"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/lock.txt
	# The BTK adapter's pins, without BTK's astropy<7 requirement (requirements/btk.txt, docs/btk.md).
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements/btk.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
		--config-settings editable_mode=compat -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/vae-deblend demo --out demo_output

test: $(STAMP)
	$(BIN)/python -m pytest tests -q

clean:
	rm -rf $(VENV) demo_output
