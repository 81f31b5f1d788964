# Two commands do all set-up on a fresh machine:
#   make run    create .venv if missing, install pinned dependencies, check the machine
#               (prunestudio doctor: stops with the fix when something blocks), start Prune Studio
#   make test   the same set-up, then the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
READY  := $(VENV)/.prunestudio-ready

.PHONY: run test prune-demo package clean-venv

$(READY): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e ".[gui,dev,cluster]"
	@touch $@

run: $(READY)
	$(VENV)/bin/prunestudio doctor
	PRUNESTUDIO_QT_CHECK=0 $(VENV)/bin/prunestudio-gui

# the default headless job: prune the embedded model with Wanda at 50% on self-generated data
prune-demo: $(READY)
	$(VENV)/bin/prunestudio prune --model demo --method wanda --sparsity 0.5 \
		--calibration selfgen --nsamples 64 --seqlen 512 --out out/demo-wanda-50 --overwrite \
		--report out/demo-wanda-50.report.json

test: $(READY)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q

package: $(READY)
	$(PY) -m pip install -q --disable-pip-version-check "pyinstaller==6.22.3" "pyinstaller-hooks-contrib==2026.9"
	$(PY) -m PyInstaller --noconfirm --distpath dist --workpath build/pyinstaller packaging/prunestudio.spec
	bash packaging/smoke_test.sh

clean-venv:
	rm -rf $(VENV)
