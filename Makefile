# Transfer-robustness benchmark. `make help` lists the targets.
PY ?= .venv/bin/python
EXPERIMENT ?= digits
ARGS ?=
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: help install bench test test-fast test-e2e lint format docs perf perf-checkpoints perf-memory gpu-check report dashboard clean mutate

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

install:  ## create .venv and install the suite with its test tools (torch from TORCH_SPEC)
	python3 -m venv .venv
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet -e '.[docs]'  # apart from [test]: see the docs extra in pyproject.toml
	@echo "installed into .venv; next: make bench"

# Without EXPERIMENT on the command line, `make bench` runs every embedded experiment: `digits` and `digits_ssl`
# (paper 3's SSL encoder, its students and the downstream-agnostic attacks; paper 1's CommonInit), in one process
# (`--experiments`: torch and Lightning are imported once, most of a warm rerun's time; every plan is made before any
# work, and with the workers launcher the experiments' stages share one pool of workers).
BENCH_EXPERIMENTS ?= digits digits_ssl
# The stages run on local worker processes (launcher/workers.yaml: one per GPU, or one per CPU core with one torch
# thread each; the stage cache is their only coordination). On the 2-core CPU this is 1.2x faster than one process
# with 2 threads (digits: 214 s against 265 s from an empty cache). BENCH_LAUNCHER=inline runs in this process;
# BENCH_LAUNCHER=slurm submits to a cluster (launcher/slurm.yaml). Every stage runs with numerics.threads torch threads
# (1) whoever runs it, so inline and workers give identical rows (the inline time above was measured with 2 threads).
BENCH_LAUNCHER ?= workers

# A group name runs its experiments together: `make bench EXPERIMENT=fashion` is Fashion-MNIST (docs/fashion.md):
# paper 1 and the defenses on the rotated pair, paper 2 on task transfer, paper 3 and CommonInit with an SSL encoder.
BENCH_GROUP_fashion ?= fashion_shift fashion_task fashion_ssl

bench:  ## run the embedded experiments (digits, digits_ssl), or EXPERIMENT=name; ARGS='defense=pgd_at ...' overrides
ifeq ($(origin EXPERIMENT),command line)
	@$(PY) -m benchmark.run --experiments "$(or $(BENCH_GROUP_$(EXPERIMENT)),$(EXPERIMENT))" launcher=$(BENCH_LAUNCHER) $(ARGS)
else
	@$(PY) -m benchmark.run --experiments "$(BENCH_EXPERIMENTS)" launcher=$(BENCH_LAUNCHER) $(ARGS)
endif

# `make test` spreads the tests over every core (pytest-xdist, one torch thread per worker: the tensors are small and
# two workers with two threads each oversubscribe a 2-core machine); `make test-e2e` runs what needs minutes of its
# own: sweeps in subprocesses (local workers, submitit jobs, DDP), the reference AutoAttack, the golden sweep and
# the experiments that `make test` only plans (ResNet-18 and WRN on 32 px fake images).
TEST_WORKERS ?= auto

test:  ## run the test suite on the CPU (slow tests included, end-to-end ones apart: make test-e2e)
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not e2e" -n $(TEST_WORKERS)

test-fast:  ## run the tests without the slow ones
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not slow and not e2e" -n $(TEST_WORKERS)

test-e2e:  ## the end-to-end tests: subprocess launchers, DDP, reference AutoAttack, golden sweep, every experiment
	$(PY) -m pytest -m e2e -n $(TEST_WORKERS)

lint:  ## ruff lint and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format:  ## ruff format and autofix
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

docs:  ## build the documentation site (docs/, mkdocs.yml) into site/; a broken link or anchor fails it
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

perf:  ## time our PGD against torchattacks' PGD and the bare forward+backward cost
	$(PY) -m benchmark.devtools.perf $(ARGS)

perf-checkpoints:  ## load time and matched tensors of a public checkpoint per format (results/perf_checkpoints.json)
	$(PY) -m benchmark.devtools.perf_checkpoints $(ARGS)

perf-memory:  ## peak RSS of the whole-split steps on a fake 224-px CIFAR-10-size pair (results/perf_memory.json)
	OMP_NUM_THREADS=1 $(PY) -m benchmark.devtools.memory $(ARGS)

gpu-check:  ## on a GPU (< 10 min): fp32 vs bf16 attacks, eval.batch_size=auto, DDP and workers on every GPU (results/gpu_check.json)
	$(PY) -m benchmark.devtools.gpu_check $(ARGS)

report:  ## rebuild leaderboard.md and the plots of results/$(EXPERIMENT) from its results.csv
	@for e in $(or $(BENCH_GROUP_$(EXPERIMENT)),$(EXPERIMENT)); do $(PY) -m benchmark.results.report results/$$e || exit $$?; done

dashboard:  ## save a W&B workspace per pair of results/$(EXPERIMENT) (needs `wandb login`; ARGS='--pair P --seed 0')
	$(PY) -m benchmark.tracking.dashboard results/$(EXPERIMENT) $(ARGS)

# Mutation testing with mutmut 3 rather than cosmic-ray: mutmut works on a copy (./mutants, or a scratch folder per
# module under results/mutation/work) while cosmic-ray's local runner rewrites the source files in place, which is
# unsafe with anyone else editing or testing the tree; mutmut forks every mutant's run from a process that has
# already imported torch and runs only the tests that reach the mutated function, where cosmic-ray starts the whole
# test command afresh per mutant. Modules and their tests: MODULES in tests/mutation/mutate.py. Not part of CI.
mutate:  ## mutation-test the modules that decide the numbers (ARGS='--only attacks/pgd.py --jobs 1'); results/mutation
	OMP_NUM_THREADS=1 $(PY) tests/mutation/mutate.py $(ARGS)

clean:  ## remove results, the stage cache and W&B offline runs
	rm -rf results cache outputs wandb lightning_logs site
