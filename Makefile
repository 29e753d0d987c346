# `make demo` and `make test` set everything up on a fresh machine (a .venv in the checkout).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

# The demo's linear setting: EfficientNet-Lite0 features, Cole et al.'s lr x batch grid per method.
DEMO_FEATURES := efficientnet-lite0__in1k__backbone128
DEMO_METHODS := an an-ls wan epr role em em-apl ll-r ll-ct ll-cp asl hill splc gr-loss

.PHONY: setup demo demo-draws test lint format bench bench-docs clean-demo

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev,onnx]" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	$(PY) -c "import torch, torchvision, webdataset, pyarrow, timm, open_clip, click, tqdm, sklearn, nvidia.dali, matplotlib, onnx, onnxruntime"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) cli.py demo-data --out data/raw/digits
	$(PY) cli.py shard --dataset coco --root data/raw/digits --out data/shards/digits
	$(PY) cli.py info data/shards/digits
	$(PY) cli.py verify data/shards/digits
	$(PY) cli.py cache-features --shards data/shards/digits --backbone efficientnet-lite0 --preset backbone --image-size 128
	$(PY) cli.py train --shards data/shards/digits --method bce --features $(DEMO_FEATURES) --sweep --out runs/demo/bce --overwrite
	for m in $(DEMO_METHODS); do \
		$(PY) cli.py train --shards data/shards/digits --method $$m --features $(DEMO_FEATURES) --sweep --out runs/demo/$$m --overwrite || exit 1; \
	done
	# End to end: PU-MLC on 10% partial labels (EfficientNet-Lite0 ImageNet weights, 64 px, 2 epochs)
	$(PY) cli.py observe data/shards/digits partial --fraction 0.1
	$(PY) cli.py train --shards data/shards/digits --method pu-mlc --backbone efficientnet-lite0 --regime partial -o fraction=0.1 -o image_size=64 --epochs 2 --batch-size 32 --lr 1e-4 -o schedule_epochs=0 --out runs/demo/pu-mlc --overwrite
	# HSPNet smoke run: a tiny random-weight CLIP (no CLIP weights offline), 2 epochs at 32 px
	$(PY) cli.py train --shards data/shards/digits --method hspnet --backbone wsml-tiny-clip --weights none -o image_size=32 --epochs 2 --batch-size 32 --out runs/demo/hspnet --overwrite
	# AEVLP smoke run: DAMP pseudo-labels from the tiny random-weight CLIP's embeddings of each image and its 4x4 tiles, GPR loss on the demo's features
	$(PY) cli.py cache-clip --shards data/shards/digits --model wsml-tiny-clip --pretrained none --crops grid4 --batch-size 1024
	$(PY) cli.py train --shards data/shards/digits --method aevlp --features $(DEMO_FEATURES) --clip wsml-tiny-clip__none --out runs/demo/aevlp --overwrite
	$(PY) cli.py leaderboard runs/demo
	# Use a run: the LL-Ct sweep's pick (the sweep keeps its weights), on four test images
	mkdir -p runs/use
	$(PY) cli.py predict --run runs/demo/ll-ct $(addprefix data/raw/digits/val/digits_val_00000,1.jpg 2.jpg 3.jpg 4.jpg) --out runs/use/predictions.csv --threshold val-f1
	# The study's page: grouped leaderboard, curves, per class, PR curves, label state
	$(PY) cli.py report runs/demo --out runs/demo/report

# After `make demo`: training seeds against draws of the single positives (AN at its grid pick,
# lr 1e-3, batch 8: 2 seeds x 2 draws, draw 1 = Cole's generator at seed 1201), and the report
# again with its seeds x label draws section
demo-draws: $(STAMP)
	$(PY) cli.py observe data/shards/digits single-positive --seed 1201
	$(PY) cli.py train --shards data/shards/digits --method an --features $(DEMO_FEATURES) --lr 1e-3 --batch-size 8 --seeds 0,1 --view-seeds 0,1 --out runs/draws/an --overwrite
	$(PY) cli.py report runs/demo runs/draws --out runs/demo/report

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) cli.py bench shard

# Every table of docs/performance.md, each by the bench that measures it (about 1.5 h on 2 cores;
# run it on a quiet machine). A few: make bench-docs TABLES=shard,loader
TABLES ?= all
bench-docs: $(STAMP)
	$(PY) cli.py bench docs --tables $(TABLES)

clean-demo:
	rm -rf data/raw/digits data/shards/digits runs/demo runs/use runs/draws
