# The README's two commands:
#   make lab    set everything up, then open the course in JupyterLab (127.0.0.1, token auth on)
#   make test   set everything up, then run the whole test suite, the lessons included
# Both install into a virtual environment, .venv, and reinstall only when pyproject.toml or
# this file changes. `make site` writes the course's static pages (below).

PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch 2.13.0 is all the course needs (on Linux, PyPI's plain torch is a
# multi-GB CUDA build). To use a GPU, set TORCH to the build for your CUDA, e.g.
# `make lab TORCH=torch`; kdlearn itself works with any torch >= 2.1.
TORCH ?= torch==2.13.0
JUPYTER_PORT ?= 8888

BIN := $(VENV)/bin
# Jupyter refuses to start as root unless told; containers and cloud machines often run as root.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: lab test setup lessons site clean

lab: $(VENV)/.course
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.port=$(JUPYTER_PORT) --ServerApp.root_dir=lessons $(ALLOW_ROOT)

# One worker per core, each taking whole test files, so that a notebook's cells run in order in one kernel.
test: $(VENV)/.dev
	$(BIN)/python -m pytest -n auto --dist loadfile

setup: $(VENV)/.dev

# Rerun every reference lesson and regenerate the learner versions (instructors, after editing solutions/).
lessons: $(VENV)/.dev
	$(BIN)/python -m kdlearn.course build

# The reference lessons, with their stored outputs, as static pages in site/ (open site/index.html).
# Nothing is run; the pages show every exercise solved, so they are for the open course only.
site: $(VENV)/.course
	$(BIN)/python -m kdlearn.site --out site

$(VENV)/.torch: Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	touch $@

$(VENV)/.course: $(VENV)/.torch pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[course]"
	touch $@

$(VENV)/.dev: $(VENV)/.course
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

clean:
	rm -rf $(VENV)
