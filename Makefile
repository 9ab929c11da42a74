# Mail Stronghold: `make run` runs the product, `make test` runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: deps venv corpus model test lint run stop install uninstall bench bench-accuracy bench-peers bench-cluster soak clean

deps:
	@scripts/install-deps.sh

$(VENV)/.installed: setup.cfg setup.py pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

# The native core (stronghold/native/*.c -> stronghold/_*.so), rebuilt when a source changes.
NATIVE_SRC := $(wildcard stronghold/native/*.c stronghold/native/*.h)
$(VENV)/.native: $(VENV)/.installed setup.py $(NATIVE_SRC)
	$(PY) setup.py -q build_ext --inplace
	touch $@

venv: deps $(VENV)/.installed $(VENV)/.native

corpus:
	@python3 corpus/fetch.py

models/model.joblib: stronghold/classifier.py stronghold/chisquare.py stronghold/modelfile.py stronghold/tokens.py stronghold/message.py stronghold/training.py | venv corpus
	$(VENV)/bin/stronghold train --index corpus/data/index.train --model models/model.joblib

model: models/model.joblib

lint: venv
	$(VENV)/bin/ruff check $(wildcard stronghold webui tests bench corpus devtools)
	$(VENV)/bin/mypy stronghold webui devtools

test: lint corpus
	$(PY) -m pytest $(PYTEST_ARGS)

run: venv corpus model
	@scripts/stack.sh start

stop:
	@scripts/stack.sh stop

# The product as a system service (docs/install.md); DESTDIR=... for a scratch root.
install: deps
	@scripts/install.sh

uninstall:
	@scripts/uninstall.sh

bench-accuracy: venv corpus model
	$(PY) -m bench.accuracy

# Accuracy on the standard split, then throughput through Postfix (A B A B at c=1, 8, 32);
# the Markdown report lands in bench/results/latest.md.
bench: venv corpus model
	@mkdir -p bench/results
	@{ echo "# Mail Stronghold benchmarks, $$(date -u '+%Y-%m-%d %H:%M') UTC"; echo; \
	   echo '## Accuracy (`make bench-accuracy`)'; echo; $(PY) -m bench.accuracy; echo; \
	   $(PY) -m bench.throughput --tcp | sed 's/^# Throughput/## Throughput/'; } | tee bench/results/latest.md

# The same, with rspamd 3 (Debian's package) twice: local rules only, and with antivirus on the same
# clamd + Bayes on a private Redis trained on the same split (the fair peer).
bench-peers: venv corpus model
	@dpkg-query -W -f='$${Status}' rspamd 2>/dev/null | grep -q "install ok installed" || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rspamd >/dev/null
	@dpkg-query -W -f='$${Status}' redis-server 2>/dev/null | grep -q "install ok installed" || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
	$(PY) -m bench.throughput --peers --noop | tee bench/results/peers.md

# Mail nodes (Postfix + milter, own data_dir each) on one PostgreSQL: msg/s, connections, database
# CPU and statements per message, list-change propagation, a PostgreSQL restart mid-run (docs/scaling.md).
bench-cluster: venv corpus model
	$(PY) -m bench.cluster --nodes 1 2 4

soak: venv corpus model
	$(PY) -m bench.soak --minutes 20

clean:
	rm -rf $(VENV) var build *.egg-info stronghold/_*.so
