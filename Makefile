# Set-up commands (README): `make demo` and `make test` each create .venv, install, and run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format sample bench gpu-data publish publish-trajectories publish-fig3 docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,slurm]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/retina-raf demo

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Rebuild the embedded sample from the full data set: the data set cifar10 of the data root
# (RETINA_RAF_DATA, else data/; `retina-raf data fetch cifar10`), or CIFAR=PATH.
CIFAR ?= cifar10
sample: install
	$(VENV)/bin/retina-raf data sample --source $(CIFAR) --out data/cifar10_gray_sample.npz \
		--train-per-class 400 --test-per-class 100

bench: install
	$(PY) benchmarks/feedback_step.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/dense_layout.py
	$(PY) benchmarks/batch_split.py
	$(PY) benchmarks/rf_extraction.py
	$(PY) benchmarks/rmsprop_step.py
	$(PY) benchmarks/metrics_speed.py
	$(PY) benchmarks/fit_solvers.py
	$(PY) benchmarks/skimage_alternatives.py

# What benchmarks/gpu_check.sh needs on the device machine (carry data/full and benchmarks/wheels).
gpu-data: install
	mkdir -p data/full benchmarks/wheels
	cp $${RETINA_RAF_DATA:-data}/cifar10_gray_uint8.npz data/full/
	$(PY) -m pip download --quiet --no-deps --dest benchmarks/wheels h5netcdf

# Publish an experiment's finished runs under reports/$(EXPERIMENT)/ (docs/design.md#reports): the results
# file (retina_2 RFs by actmax and by gradient; runs not finished yet are listed in its
# missing_runs attribute), the README's findings table, the executed
# compare_ranks, rf_atlas and training reports and the paper panels (`figures/`, written by
# `retina-raf figures` alone: the reports show them and export only their own). E.g. the CPU Fig. 4:
#   make publish EXPERIMENT=cpu_fig4 RUNS=/scratch/runs/cpu_fig4
# TRAJECTORY=1 adds the RFs at every retina snapshot of every started run (runs trained with
# train.retina_snapshots; about 5 minutes per run on 2 cores) in trajectories.nc and the
# rf_trajectory report, e.g. make publish EXPERIMENT=cpu_fig4_long TRAJECTORY=1 RUNS=...
EXPERIMENT ?= cpu_fig4
RUNS ?= runs/$(EXPERIMENT)
# RFs around the mean gray image: cpu_fig4 trains on unstandardized images in [0, 1], whose
# mean pixel (grayscale CIFAR-10's training set) is 0.4734; a black base would probe the
# retina far from anything it saw.
RF_BASE ?= --base gray --gray-level 0.4734
PUBLISHED := reports/$(EXPERIMENT)
publish: install
	$(VENV)/bin/retina-raf sweep experiments/$(EXPERIMENT).yaml --out $(RUNS) --collect \
		--method actmax --method gradient --method sta --results $(PUBLISHED)/results.nc $(RF_BASE)
	$(VENV)/bin/retina-raf findings $(PUBLISHED)/results.nc --out $(PUBLISHED)/findings.md
	$(VENV)/bin/retina-raf report notebooks/compare_ranks.ipynb -p results $(PUBLISHED)/results.nc \
		--out $(PUBLISHED)
	$(VENV)/bin/retina-raf report notebooks/rf_atlas.ipynb -p results $(PUBLISHED)/results.nc \
		--out $(PUBLISHED)
	$(VENV)/bin/retina-raf report notebooks/training.ipynb -p results $(PUBLISHED)/results.nc \
		--out $(PUBLISHED)
	$(VENV)/bin/retina-raf figures $(PUBLISHED)/results.nc --out $(PUBLISHED)/figures
ifneq ($(TRAJECTORY),)
	$(VENV)/bin/retina-raf trajectory --experiment experiments/$(EXPERIMENT).yaml \
		--runs-dir $(RUNS) --method actmax $(RF_BASE) --out $(PUBLISHED)/trajectories.nc
	$(VENV)/bin/retina-raf report notebooks/rf_trajectory.ipynb \
		-p trajectories $(PUBLISHED)/trajectories.nc --out $(PUBLISHED)
endif

# Publish a long experiment as it trains (runs finished or still in flight): the RF metrics of
# every started run at each of its retina snapshots and the RF maps at the milestones and each
# run's last epoch (trajectories.nc, with accuracy and the feedback alignment per epoch; the
# runs not started are listed in it), the findings table at each run's last epoch and at each
# milestone epoch, the weight-decay rate on Kolen-Pollack's feedback of the runs that learn it
# (kp_decay.csv and .md), which of the error's leading directions each run's P spans, added to
# those of earlier publications (error_subspace.csv, .md, .png), the RFs of the readout each
# run's retina learns through, at its checkpoint (feedback_readout.nc, .md and a montage per
# run), and the executed rf_trajectory report with montages at the milestones (a report
# replaces its figures/ as a whole: no montage of an earlier epoch stays), and, with each run
# at its last epoch, the paper panels (`figures/`) and the executed compare_ranks report.
# A run whose folder has gone from RUNS (with the machine that trained it) keeps what the
# earlier publication holds of it (--keep-earlier, the histories), marked as having no
# checkpoint. E.g. the paper-recipe Fig. 4 (standardized images: RFs around the zero image,
# which is the mean image):
#   make publish-trajectories EXPERIMENT=paper_fig4 RUNS=/path/outside/the/tree RF_BASE="--base zeros" \
#       PLATEAU=reports/cpu_fig4/results.nc
MILESTONES ?= 0 10 30 60 120
# PLATEAU=RESULTS.nc adds whether each run's metrics have flattened over its last
# PLATEAU_WINDOW epochs, against the seed spread of its condition in RESULTS.nc
PLATEAU ?=
PLATEAU_WINDOW ?= 20
# the milestones as the notebook's YAML list, [0,10,...], spelled in make (no shell)
COMMA := ,
SPACE := $(subst ,, )
publish-trajectories: install
	$(VENV)/bin/retina-raf trajectory --experiment experiments/$(EXPERIMENT).yaml \
		--runs-dir $(RUNS) --method actmax $(RF_BASE) $(MILESTONES:%=--rf-maps-at %) \
		--keep-earlier --out $(PUBLISHED)/trajectories.nc
	$(VENV)/bin/retina-raf findings $(PUBLISHED)/trajectories.nc $(MILESTONES:%=--epoch %) \
		$(if $(PLATEAU),--plateau $(PLATEAU) --window $(PLATEAU_WINDOW)) --out $(PUBLISHED)/findings.md
	$(VENV)/bin/retina-raf kp-decay --experiment experiments/$(EXPERIMENT).yaml --runs-dir $(RUNS) \
		--history $(PUBLISHED)/kp_decay.csv --out $(PUBLISHED)/kp_decay.md
	$(VENV)/bin/retina-raf error-subspace --experiment experiments/$(EXPERIMENT).yaml \
		--runs-dir $(RUNS) --eigenvectors 4 --history $(PUBLISHED)/error_subspace.csv \
		--figure $(PUBLISHED)/error_subspace.png --out $(PUBLISHED)/error_subspace.md
	$(VENV)/bin/retina-raf feedback-rfs --experiment experiments/$(EXPERIMENT).yaml \
		--runs-dir $(RUNS) $(RF_BASE) --keep-earlier --results $(PUBLISHED)/feedback_readout.nc \
		--figures $(PUBLISHED)/feedback_readout --out $(PUBLISHED)/feedback_readout.md
	$(VENV)/bin/retina-raf report notebooks/rf_trajectory.ipynb \
		-p trajectories $(PUBLISHED)/trajectories.nc \
		-p montage_epochs "[$(subst $(SPACE),$(COMMA),$(strip $(MILESTONES)))]" --out $(PUBLISHED)
	$(VENV)/bin/retina-raf figures $(PUBLISHED)/trajectories.nc --out $(PUBLISHED)/figures
	$(VENV)/bin/retina-raf report notebooks/compare_ranks.ipynb \
		-p results $(PUBLISHED)/trajectories.nc --out $(PUBLISHED)

# Fig. 3a and the offline Fig. 3c for the MLP at CPU scale: the test accuracies of every
# finished run, the table the README quotes, and the executed notebook with its panels.
FIG3_PUBLISHED := reports/fig3_mlp
publish-fig3: install
	$(VENV)/bin/retina-raf sweep experiments/fig3_mlp_cpu.yaml --out $(RUNS) --collect \
		--results $(FIG3_PUBLISHED)/results.nc
	$(VENV)/bin/retina-raf findings $(FIG3_PUBLISHED)/results.nc --out $(FIG3_PUBLISHED)/findings.md
	$(VENV)/bin/retina-raf report notebooks/accuracy_vs_rank.ipynb \
		-p results $(FIG3_PUBLISHED)/results.nc --out $(FIG3_PUBLISHED)

# The documentation site (docs/, mkdocs.yml) into site/ (git-ignored); --strict fails on any
# broken link, anchor or docstring reference. `make test` builds it too (tests/test_docs.py).
docs: install
	$(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache .ruff_cache
