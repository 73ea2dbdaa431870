# Two entry points do all set-up: `make demo` and `make test`. Both create .venv and install into it
# idempotently (the stamp file is rebuilt only when pyproject.toml or constraints.txt change).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= dev,openl3,clap,clamp,musicnn,basic-pitch,hear
# pip byte-compiles what it installs (no --no-compile): where PYTHONDONTWRITEBYTECODE is set, as on the
# build machine, every process would otherwise compile its imports again, Ray workers included.
# Installed --no-deps: their metadata pins old numpy or pulls TensorFlow; what their code really
# imports is listed in the extra of the same name (pyproject.toml).
LAION_CLAP ?= laion-clap==1.1.7
MUSICNN ?= musicnn==0.1.0
BASIC_PITCH ?= basic-pitch==0.4.0
HEAR_PKGS ?= hearbaseline==2021.1.1 hearvalidator==2021.0.2
PYTEST_ARGS ?=
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

GPU_CHECK_OUT ?= bench/results/gpu_check.json
GPU_CHECK_ARGS ?=

.PHONY: demo test bench gpu-check install clean-venv

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	case ",$(EXTRAS)," in *,clap,*) $(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(LAION_CLAP);; esac
	case ",$(EXTRAS)," in *,musicnn,*) $(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(MUSICNN);; esac
	case ",$(EXTRAS)," in *,basic-pitch,*) $(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(BASIC_PITCH);; esac
	case ",$(EXTRAS)," in *,hear,*) $(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(HEAR_PKGS);; esac
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m ray_jobs.demo $(DEMO_ARGS)

# compileall: the project's own modules as .pyc once, read by every process of the run (Ray workers,
# job subprocesses), which under PYTHONDONTWRITEBYTECODE would each compile them again
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m compileall -q analysis embedders training ray_jobs tests bench > /dev/null
	$(PY) -m pytest $(PYTEST_ARGS)

# benchmark scripts end to end (the tests behind the `bench` marker, deselected elsewhere)
bench: $(STAMP)
	$(PY) -m pytest -m bench $(PYTEST_ARGS)

# the prepared GPU check (<= 10 minutes on one GPU; JSON in $(GPU_CHECK_OUT)); GPU_CHECK_ARGS=--dry_run on a CPU
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

clean-venv:
	rm -rf $(VENV)
