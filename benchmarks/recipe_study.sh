#!/usr/bin/env bash
# The CIFAR-10 recipe study of docs/RESULTS.md: one fixed budget (a seeded 10,000-image subset of the training
# split, 10 epochs, the full 5,000-image validation split every epoch, the test split once at the end), varying
# one thing at a time along three axes, each against its own reference row: input size and architecture from
# the SGD base (64 px, SGD nesterov lr 0.1, one-cycle, label smoothing 0.1, basic augmentation); the optimizer;
# then regularisation from the AdamW row, the optimizer axis's winner. Every row names its optimizer and the
# base its input size and batch, so the cifar10 preset's defaults changing later cannot change what a row means. Rows run one after another so each row's
# wall-clock minutes are its own. Every row checkpoints each epoch and a rerun resumes it (a session that ends
# mid-row loses at most one epoch; the history, and so the minutes of training steps, carry over).
#
#   bash benchmarks/recipe_study.sh ../shared/data/cifar10 runs/study      # all rows; or name some:
#   bash benchmarks/recipe_study.sh ../shared/data/cifar10 runs/study 96px adamw
#   python -m benchmarks.compare_runs runs/study/* --plot docs/recipe_study.png
set -euo pipefail
data=${1:-../shared/data/cifar10}
out=${2:-runs/study}
only=" ${*:3} "  # row names to run; empty = all
base=(--dataset "$data" --no-pretrained --max-train-samples 10000 --epochs 10 --img-size 64 --batch-size 256
      --samples-per-class 0 --failure-samples 0)

run() {  # name, then the options that differ from the base recipe
    local name=$1; shift
    [ "$only" = "  " ] || [[ "$only" == *" $name "* ]] || return 0
    [ -f "$out/$name/metrics.json" ] && { echo "skip $name (done)"; return; }
    local resume=()
    compgen -G "$out/$name/checkpoints/*" > /dev/null && resume=(--resume latest)
    python train_accelerate.py "${base[@]}" --checkpoint-every epoch --output-dir "$out/$name" "$@" "${resume[@]}"
}

sgd=(--optimizer sgd --lr 0.1 --weight-decay 5e-4)
adamw=(--optimizer adamw --lr 3e-3 --weight-decay 0.05)
# input size and architecture, SGD
run 64px-sgd-basic "${sgd[@]}"
run 32px "${sgd[@]}" --img-size 32
run 96px "${sgd[@]}" --img-size 96
run 128px "${sgd[@]}" --img-size 128
run 64px-os16 "${sgd[@]}" --model-arg output_stride=16
# optimizer
run adamw "${adamw[@]}"
run adam --optimizer adam --lr 1e-3 --weight-decay 5e-4
# regularisation, AdamW
run no-augment "${adamw[@]}" --augment none
run strong-augment "${adamw[@]}" --augment strong
run dropout-no-augment "${adamw[@]}" --augment none --drop-rate 0.3
