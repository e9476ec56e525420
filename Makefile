# The map of the pipeline. Two commands do all the set-up on a fresh machine:
#   make reproduce   - venv, every notebook in order (papermill), results/*.json, the book
#   make test        - venv, the test suite
# PROFILE=toy (default: embedded ShapesWorld models, CPU), PROFILE=paper (SDXL Turbo) or
# PROFILE=standin (the paper profile on random-weight SDXL-architecture models, GPU).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PROFILE ?= toy
TORCH_VERSION ?= 2.13.0
# Extra pip arguments for torch alone, e.g. PyTorch's CPU wheel index on CPU-only machines
# elsewhere, so that pip does not pull the multi-GB CUDA build (see README).
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=
NB ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.repro-installed
CHAPTERS := $(sort $(basename $(notdir $(wildcard notebooks/[0-9]*.md))))

.PHONY: help venv reproduce notebooks chapter book test test-fast lab publish toy-model clean

help:
	@echo "make reproduce [PROFILE=toy|paper|standin]  run every chapter and build the book (book/_build/html)"
	@echo "make test                          run the test suite"
	@echo "make chapter NB=00_overview        run one chapter"
	@echo "make book                          rebuild the site from executed chapters"
	@echo "make lab                           JupyterLab on the notebooks"
	@echo "make publish                       push the built site to the gh-pages branch"
	@echo "chapters: $(CHAPTERS)"

venv: $(STAMP)

# Re-install when the dependency list changes. torch first, pinned, so that nothing
# later in the list can pull another build of it.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION) $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install --quiet -e '.[test,interop]'
	@touch $@

reproduce: notebooks book
	@echo "results: results/*.json   book: book/_build/html/index.html"

notebooks: $(STAMP)
	$(BIN)/repro notebook run --profile $(PROFILE) $(CHAPTERS)

chapter: $(STAMP)
	@test -n "$(NB)" || { echo "usage: make chapter NB=<name>  (one of: $(CHAPTERS))"; exit 2; }
	$(BIN)/repro notebook run --profile $(PROFILE) $(NB)

book: $(STAMP)
	$(BIN)/repro book build

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

# The built site, pushed as the whole content of PUBLISH_BRANCH of PUBLISH_REMOTE (tests point these elsewhere).
SITE ?= book/_build/html
PUBLISH_REMOTE ?= origin
PUBLISH_BRANCH ?= gh-pages

publish: $(STAMP)
	@test -f $(SITE)/index.html || { echo "no built book in $(SITE): run make reproduce (or make book) first"; exit 2; }
	$(BIN)/ghp-import --no-jekyll --push --force --remote $(PUBLISH_REMOTE) --branch $(PUBLISH_BRANCH) $(SITE)

toy-model: $(STAMP)
	$(BIN)/repro toy train

clean:
	rm -rf book/_build book/chapters build results
