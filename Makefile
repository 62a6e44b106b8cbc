# Two commands on a fresh machine:  make reproduce  (install + smoke reproduction)  and  make test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROFILE ?= smoke

.PHONY: install reproduce test lab report figures clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[test,e2e]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (reproduce)" >/dev/null
	@touch $@

## make reproduce: every notebook with the smoke profile, then the report (PROFILE=cpu for the real runs)
reproduce: install
	$(PY) -m reproduce fetch
	$(PY) -m reproduce run all --profile $(PROFILE) --keep-going
	$(PY) -m reproduce report

## make test: the whole test suite, hub offline (notebooks included)
test: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest

## make lab: JupyterLab with the project's kernel
lab: install
	$(PY) -m jupyter lab notebooks

report: install
	$(PY) -m reproduce report

figures: install
	$(PY) -m reproduce figures --lang en
	$(PY) -m reproduce figures --lang ko

clean:
	rm -rf runs .pytest_cache
