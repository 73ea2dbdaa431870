# Two entry points do all set-up: `make demo` and `make test`. Both create .venv and install into it
# idempotently (the stamp file is rebuilt only when pyproject.toml or constraints.txt change).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= dev,openl3,clap,clamp
LAION_CLAP ?= laion-clap==1.1.7
PYTEST_ARGS ?=
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: demo test install clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	case ",$(EXTRAS)," in *,clap,*) $(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(LAION_CLAP);; esac
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m ray_jobs.demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
