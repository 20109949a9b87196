"""The TPU path tried on a CPU: train_accelerate.py through accelerate's XLA support (torch-xla, PJRT_DEVICE=CPU),
in the virtualenv benchmarks/xla_cpu.sh makes. It passes when the run trained on an XLA device, its loss fell,
and the number of XLA graph compilations stayed fixed as the steps went on (static shapes: one graph per
training step, compiled once; a shape that changes from step to step would compile a new graph each time).

    bash benchmarks/xla_cpu.sh                     # makes the virtualenv, then runs this
    bash benchmarks/xla_cpu.sh --steps 24 --img-size 32
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="../shared/data/cifar10")
    parser.add_argument("--steps", type=int, default=16, help="training steps per epoch (3 epochs)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--train-args", default="", help="more train_accelerate.py options, space separated")
    args = parser.parse_args(argv)

    import torch_xla.debug.metrics as metrics
    from accelerate.state import AcceleratorState

    import classifier.train as train_module

    out = Path(tempfile.mkdtemp(prefix="xla-check-"))
    command = ["--dataset", args.dataset, "--output-dir", str(out), "--epochs", "3", "--batch-size",
               str(args.batch_size), "--img-size", str(args.img_size), "--max-train-samples",
               str(args.steps * args.batch_size), "--max-eval-samples", str(4 * args.batch_size), "--no-pretrained",
               "--samples-per-class", "0", "--failure-samples", "0", "--data-workers", "0", "--lr", "1e-3",
               "--optimizer", "adamw", *args.train_args.split()]
    compiles = []  # graphs compiled by the end of each epoch
    record_epoch = train_module.epoch_record

    def counting(*args, **kwargs):
        data = metrics.metric_data("CompileTime")
        compiles.append(data[0] if data else 0)
        return record_epoch(*args, **kwargs)

    train_module.epoch_record = counting
    started = time.perf_counter()
    AcceleratorState._reset_state(reset_partial_state=True)
    train_module.main(command)
    seconds = time.perf_counter() - started
    record = json.loads((out / "training_args.json").read_text())
    history = json.loads((out / "metrics.json").read_text())["history"]
    losses = [h["train_loss"] for h in history]
    print(f"\n{record['distributed_type']} on {record['hardware']}, {args.steps} steps x 3 epochs in {seconds:.0f} s; "
          f"train loss per epoch {', '.join(f'{loss:.3f}' for loss in losses)}; graphs compiled by the end of "
          f"each epoch: {compiles}")
    problems = []
    if record["distributed_type"] != "XLA":
        problems.append(f"distributed type {record['distributed_type']}, not XLA")
    if not losses[-1] < losses[0]:
        problems.append("the loss did not fall")
    if len(compiles) == 3 and compiles[2] > compiles[1]:
        problems.append(f"epoch 3 compiled {compiles[2] - compiles[1]} new graph(s): a shape changes between steps")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
