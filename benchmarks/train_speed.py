"""Training throughput: the model-only bound vs our training loop vs the usual per-sample `datasets` pipeline.

    python -m benchmarks.train_speed --dataset ../shared/data/cifar10                  # 32 px and the preset's
    python -m benchmarks.train_speed --dataset ../shared/data/cifar10 --sizes 64 --compile   # eager vs compiled

Every row uses the same model, image size, batch size and precision (bf16 autocast where supported, as
training does), and every row is measured the same way: `--steps` steps of warm-up, then `--steps` more timed in
windows of engine.WINDOW (10) steps, each window ending on a device sync; a row's figure is the median window's
images per second, printed with the slowest and fastest window, so a ratio comes with its spread (the bound is
timed before and after the other rows, its windows pooled):
1. model-only: forward + backward + optimizer step (the dataset preset's optimizer, as our loop uses) on
   synthetic tensors already in memory (the bound);
2. our loop: `train_accelerate.py` itself on the real dataset (memory path, then stream path) for 2 epochs of
   `--steps` steps: the first is the warm-up, the second's windows are the loop's own (metrics.json's
   history `windows`: each window closes on the loss read, a device sync);
3. the usual pipeline, built as the Hugging Face image-classification example builds it: per-sample PIL
   transforms (RandomResizedCrop, flip, ToTensor, Normalize) through `with_transform`, a DataLoader with workers.

With `--compile` it prints instead eager vs `torch.compile` for rows 1 and 2, each run end to end (compiling
included), and how many training images a run needs before compiling has paid for itself.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import transforms

from classifier.data import load_splits
from classifier.engine import WINDOW
from classifier.hardware import auto_precision, describe_hardware
from classifier.model import StartingWeights, create_model
from classifier.options import parse_args
from classifier.train import build_optimizer

ROOT = Path(__file__).resolve().parents[1]


def autocast(precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=dtype, enabled=dtype is not None)


def new_model(train_args, num_classes: int, device: torch.device, compile_model: bool):
    model = create_model(train_args.model, num_classes, StartingWeights("scratch")).to(
        device, memory_format=torch.channels_last)
    # the optimizer our loop uses for this dataset (its preset's), so every row does the same work per step
    optimizer = build_optimizer(train_args, model, device)
    return (torch.compile(model) if compile_model else model), optimizer


def step(model, optimizer, x, y, precision):
    with autocast(precision):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


@dataclass
class Rate:
    """Images per second of the timed windows of one row."""
    windows: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.windows)

    def __str__(self) -> str:
        return f"{self.median:.0f} ({min(self.windows):.0f}-{max(self.windows):.0f})"

    def ratio(self, other: "Rate") -> str:
        """self / other, of the medians, with the range the windows allow."""
        return (f"{self.median / other.median:.2f} ({min(self.windows) / max(other.windows):.2f}-"
                f"{max(self.windows) / min(other.windows):.2f})")


def timed_windows(batches, model, optimizer, precision, device, warmup: int, steps: int) -> Rate:
    """The images/s of each window of WINDOW steps among `steps` steps that follow `warmup` steps, measured as our
    loop measures its own: from one device sync to the next; `batches` yields (x, y) on any device."""
    windows, seen, start = [], 0, None
    for i, (x, y) in enumerate(batches):
        if i >= warmup and (i - warmup) % WINDOW == 0:
            sync(device)
            now = time.perf_counter()
            if start is not None:
                windows.append(seen / (now - start))
            seen, start = 0, now
        if i == warmup + steps:
            break
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        step(model, optimizer, x, y.to(device, non_blocking=True), precision)
        seen += len(y) if i >= warmup else 0
    if seen:  # a last, shorter window
        sync(device)
        windows.append(seen / (time.perf_counter() - start))
    return Rate(windows)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_only(train_args, size, batch, precision, device, steps, compile_model) -> Rate:
    """The bound, warmed up for as many steps as our loop's first epoch."""
    model, optimizer = new_model(train_args, 10, device, compile_model)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return timed_windows(((x, y) for _ in iter(int, 1)), model, optimizer, precision, device, steps, steps)


def loop_rate(history: list[dict]) -> Rate:
    """Our loop's rate in a finished run: the windows of its last epoch (the first is its warm-up)."""
    return Rate([images / seconds for images, seconds in history[-1]["windows"]])


def our_loop(dataset, size, batch, steps, data_path, compile_model, workers) -> tuple[Rate, float, float]:
    """train_accelerate.py on `steps` batches per epoch for 2 epochs: the rate of its second epoch, how many
    seconds longer its first epoch took (warm-up; with --compile, mostly compiling), and the seconds the
    run took minus its training steps (loading, evaluation and compiling the eval graph)."""
    from accelerate.state import AcceleratorState

    from classifier.train import main

    out = Path(tempfile.mkdtemp(prefix="train-speed-"))
    argv = ["--dataset", dataset, "--output-dir", str(out), "--img-size", str(size), "--batch-size", str(batch),
            "--epochs", "2", "--max-train-samples", str(batch * steps), "--max-eval-samples", str(batch),
            "--no-pretrained", "--samples-per-class", "0", "--failure-samples", "0", "--data-path", data_path,
            "--data-workers", str(workers), "--augment", "basic"]
    if compile_model:
        argv.append("--compile")
    AcceleratorState._reset_state(reset_partial_state=True)
    main(argv)
    history = json.loads((out / "metrics.json").read_text())["history"]
    first, second = history
    outside_training = second["elapsed_seconds"] - first["seconds"] - second["seconds"]
    return loop_rate(history), first["seconds"] - second["seconds"], outside_training


def per_sample_pipeline(train_args, size, batch, precision, device, steps, workers) -> Rate:
    """The Hugging Face example's data path: PIL transforms per sample in `with_transform`, a plain DataLoader."""
    splits = load_splits(train_args.dataset, max_train_samples=batch * 2 * steps)
    model, optimizer = new_model(train_args, len(splits.label_names), device, compile_model=False)
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    train_transforms = transforms.Compose([
        transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    image_column, label_column = splits.image_column, splits.label_column

    def preprocess(examples):
        examples["pixel_values"] = [train_transforms(image.convert("RGB")) for image in examples[image_column]]
        return examples

    def collate(examples):
        return (torch.stack([e["pixel_values"] for e in examples]),
                torch.tensor([e[label_column] for e in examples]))

    loader = torch.utils.data.DataLoader(splits.train.with_transform(preprocess), batch_size=batch, shuffle=True,
                                         collate_fn=collate, num_workers=workers, drop_last=True,
                                         pin_memory=device.type == "cuda")
    return timed_windows(iter(loader), model, optimizer, precision, device, steps, steps)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="../shared/data/cifar10")
    parser.add_argument("--sizes", help="image sizes, comma separated (default: 32 and the dataset's training size)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50,
                        help=f"warm-up steps, then as many timed ones, in windows of {WINDOW}, per row")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers where one is used")
    parser.add_argument("--compile", action="store_true", help="compare eager with torch.compile instead")
    args = parser.parse_args(argv)
    train_args = parse_args(["--dataset", args.dataset])  # the recipe our loop gets for this dataset
    args.sizes = args.sizes or f"32,{train_args.img_size}"

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = auto_precision(device.type)
    name = describe_hardware(device)
    if args.compile:
        return compile_table(args, train_args, precision, device, name)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        before = model_only(train_args, size, args.batch_size, precision, device, args.steps, False)
        memory, warmup, _ = our_loop(args.dataset, size, args.batch_size, args.steps, "memory", False, args.workers)
        stream, _, _ = our_loop(args.dataset, size, args.batch_size, args.steps, "stream", False, args.workers)
        usual = per_sample_pipeline(train_args, size, args.batch_size, precision, device, args.steps, args.workers)
        # the bound again after the other rows, its windows pooled with the first ones: on a shared machine the
        # speed drifts over the minutes between rows, and a bound timed only first would carry that drift alone
        after = model_only(train_args, size, args.batch_size, precision, device, args.steps, False)
        bound = Rate(before.windows + after.windows)
        rows.append((size, bound, memory, stream, usual, warmup))
        print(f"[{size}px] model-only {bound}, ours (memory) {memory}, ours (stream) {stream}, "
              f"per-sample pipeline {usual} img/s", file=sys.stderr, flush=True)

    print(f"\nresnet18, batch {args.batch_size}, precision {precision}, {name}, torch {torch.__version__}; images/s: "
          f"the median window of {WINDOW} steps (slowest-fastest) after {args.steps} steps of warm-up\n")
    print("| px | 1. model-only | 2. our loop (memory) | 2b. our loop (stream) | 3. per-sample pipeline "
          "| 2/1 | 2/3 | 2b/3 | first epoch's extra seconds (2) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size, bound, memory, stream, usual, warmup in rows:
        print(f"| {size} | {bound} | {memory} | {stream} | {usual} | {memory.ratio(bound)} "
              f"| {memory.ratio(usual)} | {stream.ratio(usual)} | {warmup:.1f} |")
    return 0


def compile_table(args, train_args, precision, device, name) -> int:
    """Eager vs torch.compile. A compiled run pays its compile time once, then saves (1/eager - 1/compiled)
    seconds per image, so it wins end to end only past `fixed seconds it adds / seconds it saves per image`."""
    # an empty inductor cache, so the compile time is what a first run pays (later runs of the same shapes on
    # the same machine reuse /tmp/torchinductor_$USER); our loop runs before model-only, which would warm it
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cache-")
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        loops = [our_loop(args.dataset, size, args.batch_size, args.steps, "memory", c, args.workers) for c in (0, 1)]
        bound = [model_only(train_args, size, args.batch_size, precision, device, args.steps, c) for c in (0, 1)]
        rows.append((size, bound, loops))
        print(f"[{size}px] model-only {bound[0]} -> {bound[1]}, our loop {loops[0][0]} -> {loops[1][0]} img/s",
              file=sys.stderr, flush=True)

    print(f"\nresnet18, batch {args.batch_size}, precision {precision}, {name}, torch {torch.__version__}; "
          "eager -> torch.compile (inductor)\n")
    print("| px | model-only img/s | our loop img/s | speed-up (loop) | extra seconds, first epoch "
          "| extra seconds, evaluation and setup | break-even (training images) |")
    print("|---|---|---|---|---|---|---|")
    for size, (bound_eager, bound_compiled), ((eager, eager_warmup, eager_rest), (compiled, warmup, rest)) in rows:
        saved_per_image = 1 / eager.median - 1 / compiled.median
        first_epoch_extra, setup_extra = warmup - eager_warmup, rest - eager_rest
        added = first_epoch_extra + setup_extra
        break_even = f"{added / saved_per_image:,.0f}" if saved_per_image > 0 else "never (slower)"
        print(f"| {size} | {bound_eager} -> {bound_compiled} | {eager} -> {compiled} "
              f"| {compiled.ratio(eager)}x | {first_epoch_extra:+.0f} | {setup_extra:+.0f} | {break_even} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
