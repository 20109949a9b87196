"""GPU smoke check: does training run, and how fast, in every precision and with torch.compile, on 1 GPU and
(where there are two or more) on 2 processes. Meant for anyone with a GPU, to take under 5 minutes on one (not
timed yet: no GPU has run it).

    python -m benchmarks.gpu_smoke                                  # the shared CIFAR-10, 300 steps per run
    python -m benchmarks.gpu_smoke --configs bf16,fp16 --processes 1

Each run is `train_accelerate.py` itself (2 processes: `accelerate launch --multi_gpu --num_processes 2`) on
`--steps` steps in 2 epochs, the training set in GPU memory (`--data-path memory`), then the model-only bound
with the same precision and compilation, both measured as benchmarks.train_speed measures them (the median
window after a warm-up as long as the timed part; the slowest and fastest window beside it). A run fails when
it exits non-zero, its loss is not finite, or its record disagrees with what was asked (precision, the dtype it
computed in, the data path, the device, the number of processes); the script prints one table and exits 1 if
any run failed, 2 if there is no GPU. `--device cpu` runs the same on the CPU (how its tests check it).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.train_speed import Rate, loop_rate, model_only
from classifier.hardware import describe_hardware
from classifier.options import parse_args

ROOT = Path(__file__).resolve().parents[1]
COMPUTE_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "no": "float32"}
CONFIGS = {"bf16": ("bf16", False), "fp16": ("fp16", False), "bf16+compile": ("bf16", True),
           "fp32": ("no", False)}


@dataclass
class Result:
    name: str
    processes: int
    loop: Rate | None = None
    bound: Rate | None = None
    peak_memory_mb: float | None = None
    final_loss: float | None = None
    problems: list[str] = field(default_factory=list)


def train_command(processes: int, device: str) -> tuple[list[str], dict]:
    env = dict(os.environ)
    if device == "cpu":
        env["ACCELERATE_USE_CPU"] = "1"
    if processes == 1:
        return [sys.executable, "train_accelerate.py"], env
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--dynamo_backend", "no", "train_accelerate.py"], env


def check_record(out: Path, precision: str, processes: int, device: str) -> tuple[list[str], dict, dict]:
    """-> (what disagrees with the request, training_args.json, metrics.json)"""
    record = json.loads((out / "training_args.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    problems = []
    expected = {"resolved_mixed_precision": precision, "compute_dtype": COMPUTE_DTYPE[precision],
                "resolved_data_path": "memory", "num_processes": processes}
    for key, value in expected.items():
        if record.get(key) != value:
            problems.append(f"{key} {record.get(key)!r}, expected {value!r}")
    if not record["hardware"].startswith(f"{device}:"):
        problems.append(f"trained on {record['hardware']}, expected {device}")
    losses = [h["train_loss"] for h in metrics["history"]]
    if not all(math.isfinite(loss) for loss in losses):
        problems.append(f"loss {losses}")
    return problems, record, metrics


def run_one(args, name: str, processes: int, train_args) -> Result:
    precision, compiled = CONFIGS[name]
    result = Result(name, processes)
    out = Path(tempfile.mkdtemp(prefix=f"gpu-smoke-{name}-{processes}-"))
    steps_per_epoch = max(args.steps // 2, 1)
    command, env = train_command(processes, args.device)
    command += ["--dataset", args.dataset, "--output-dir", str(out), "--epochs", "2",
                "--batch-size", str(args.batch_size), "--img-size", str(args.img_size),
                "--max-train-samples", str(steps_per_epoch * args.batch_size * processes),
                "--max-eval-samples", str(args.eval_samples), "--mixed-precision", precision,
                "--compile" if compiled else "--no-compile", "--data-path", "memory", "--no-pretrained",
                "--samples-per-class", "0", "--failure-samples", "0", *args.train_args.split()]
    print(f"[{name}, {processes} process(es)] {' '.join(command)}", file=sys.stderr, flush=True)
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if finished.returncode != 0:
        lines = [line for line in finished.stderr.splitlines() if line.strip()]
        reason = [line for line in lines if line.startswith("error: ")][-1:] or lines[-3:]  # our one-line error
        result.problems.append(f"exit {finished.returncode}: {' / '.join(reason)}")
        return result
    problems, record, metrics = check_record(out, precision, processes, args.device)
    result.problems += problems
    result.loop = loop_rate(metrics["history"])
    result.final_loss = metrics["history"][-1]["train_loss"]
    result.peak_memory_mb = record.get("peak_device_memory_mb")
    device = torch.device(args.device)
    bound = model_only(train_args, args.img_size, args.batch_size, precision, device, steps_per_epoch, compiled)
    # N processes have N devices: the bound is N times one device's (the gradient all-reduce is part of the loop)
    result.bound = Rate([rate * processes for rate in bound.windows])
    if compiled:
        torch._dynamo.reset()
    return result


def print_table(results: list[Result], args) -> None:
    device = torch.device(args.device)
    print(f"\nresnet18, {args.img_size} px, batch {args.batch_size} per process, {describe_hardware(device)}, torch "
          f"{torch.__version__}; images/s over all processes: the median window (slowest-fastest)\n")
    print("| run | processes | our loop | model-only bound | loop / bound | peak GPU memory | final loss | status |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        ratio = r.loop.ratio(r.bound) if r.loop and r.bound else "-"
        memory = f"{r.peak_memory_mb:.0f} MB" if r.peak_memory_mb is not None else "n/a"
        loss = f"{r.final_loss:.3f}" if r.final_loss is not None else "-"
        status = "ok" if not r.problems else "FAILED: " + "; ".join(r.problems)
        print(f"| {r.name} | {r.processes} | {r.loop or '-'} | {r.bound or '-'} | {ratio} | {memory} | {loss} "
              f"| {status} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="../shared/data/cifar10")
    parser.add_argument("--steps", type=int, default=300, help="training steps per run, in 2 epochs")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--img-size", type=int, default=96)
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--configs", default="bf16,fp16,bf16+compile", help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--processes", help="comma separated (default: 1, and 2 where there are 2+ GPUs)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the check's own tests")
    parser.add_argument("--train-args", default="", help="more train_accelerate.py options, space separated")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU here; this check is for machines with one (--device cpu runs it on the CPU).",
              file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count() if args.device == "cuda" else 1
    processes = [int(p) for p in args.processes.split(",")] if args.processes else [1] + ([2] if gpus >= 2 else [])
    unknown = [name for name in args.configs.split(",") if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; known: {', '.join(CONFIGS)}")
    # the model and optimizer the loop uses (--train-args' too: --model changes both), for the bound
    train_args = parse_args(["--dataset", args.dataset, *args.train_args.split()])
    results = [run_one(args, name, n, train_args) for n in processes for name in args.configs.split(",")]
    print_table(results, args)
    return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
