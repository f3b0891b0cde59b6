# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
#
# By default the venv gets the known-good set in constraints/lock.txt, so a first run does not
# depend on what the package index serves that day. Other sets:
#   make test CONSTRAINTS=                                           newest the index resolves
#   make test VENV=.venv-floor CONSTRAINTS=constraints/floor.txt     lowest versions we support
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints/lock.txt
PYTEST_ARGS ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(subst /,_,$(or $(CONSTRAINTS),newest))
PIP_SET := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),--upgrade --upgrade-strategy eager)

.PHONY: demo test lint versions clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check $(PIP_SET) -e '.[demo,export,dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# Train a small SeqAttention CCT on the bundled 5,000-digit MNIST subset, on the CPU.
demo: $(STAMP)
	$(PY) -m gaheads.train -c demo --output runs/demo --overwrite

versions: $(STAMP)
	@$(PY) -c "import importlib.metadata as m, platform; print('python', platform.python_version(), '|', ' '.join(f'{p}=={m.version(p)}' for p in ('torch', 'torchvision', 'timm', 'numpy', 'pillow', 'matplotlib', 'safetensors', 'onnx', 'onnxruntime', 'onnxscript', 'mlxtend')))"

test: $(STAMP) versions
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) tools/check_imports.py src

clean:
	rm -rf .venv .venv-floor .venv-newest runs build *.egg-info src/*.egg-info
