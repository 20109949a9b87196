"""Training throughput: the model-only bound vs our training loop vs the usual per-sample `datasets` pipeline.

    python -m benchmarks.train_speed --dataset ../shared/data/cifar10                  # 32 px and the preset's
    python -m benchmarks.train_speed --dataset ../shared/data/cifar10 --sizes 64 --compile   # eager vs compiled

Every row uses the same model, image size, batch size and precision (bf16 autocast where supported, as
training does), and measures images per second over whole steps after warm-up:
1. model-only: forward + backward + optimizer step (the dataset preset's optimizer, as our loop uses) on
   synthetic tensors already in memory (the bound);
2. our loop: `train_accelerate.py` itself on the real dataset (memory path, then stream path), timed over its
   second epoch from the run's own per-epoch training seconds;
3. the usual pipeline, built as the Hugging Face image-classification example builds it: per-sample PIL
   transforms (RandomResizedCrop, flip, ToTensor, Normalize) through `with_transform`, a DataLoader with workers.

With `--compile` it prints instead eager vs `torch.compile` for rows 1 and 2, each run end to end (compiling
included), and how many training images a run needs before compiling has paid for itself.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torchvision import transforms

from classifier.data import load_splits
from classifier.model import create_model
from classifier.options import parse_args
from classifier.train import build_optimizer, describe_hardware, resolve_mixed_precision

ROOT = Path(__file__).resolve().parents[1]


def autocast(precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=dtype, enabled=dtype is not None)


def new_model(train_args, num_classes: int, device: torch.device, compile_model: bool):
    model = create_model("resnet18", num_classes, pretrained=False)[0].to(device, memory_format=torch.channels_last)
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


def timed_steps(batches, model, optimizer, precision, device, warmup: int, steps: int) -> float:
    """Images per second over `steps` steps that follow `warmup` steps; `batches` yields (x, y) on any device."""
    seen, start = 0, None
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        if i == warmup + steps:
            break
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        step(model, optimizer, x, y.to(device, non_blocking=True), precision)
        seen += len(y) if i >= warmup else 0
    sync(device)
    return seen / (time.perf_counter() - start)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_only(train_args, size, batch, precision, device, warmup, steps, compile_model) -> float:
    model, optimizer = new_model(train_args, 10, device, compile_model)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return timed_steps(((x, y) for _ in iter(int, 1)), model, optimizer, precision, device, warmup, steps)


def our_loop(dataset, size, batch, steps, data_path, compile_model, workers) -> tuple[float, float, float]:
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
    first, second = json.loads((out / "metrics.json").read_text())["history"]
    outside_training = second["elapsed_seconds"] - first["seconds"] - second["seconds"]
    return batch * steps / second["seconds"], first["seconds"] - second["seconds"], outside_training


def per_sample_pipeline(train_args, size, batch, precision, device, warmup, steps, workers) -> float:
    """The Hugging Face example's data path: PIL transforms per sample in `with_transform`, a plain DataLoader."""
    splits = load_splits(train_args.dataset, max_train_samples=batch * (warmup + steps))
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
    return timed_steps(iter(loader), model, optimizer, precision, device, warmup, steps)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="../shared/data/cifar10")
    parser.add_argument("--sizes", help="image sizes, comma separated (default: 32 and the dataset's training size)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per row (after warm-up)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers where one is used")
    parser.add_argument("--compile", action="store_true", help="compare eager with torch.compile instead")
    args = parser.parse_args(argv)
    train_args = parse_args(["--dataset", args.dataset])  # the recipe our loop gets for this dataset
    args.sizes = args.sizes or f"32,{train_args.img_size}"

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_mixed_precision("auto")
    name = describe_hardware(device)
    if args.compile:
        return compile_table(args, train_args, precision, device, name)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        bound = model_only(train_args, size, args.batch_size, precision, device, args.warmup, args.steps, False)
        memory, warmup, _ = our_loop(args.dataset, size, args.batch_size, args.steps, "memory", False, args.workers)
        stream, _, _ = our_loop(args.dataset, size, args.batch_size, args.steps, "stream", False, args.workers)
        usual = per_sample_pipeline(train_args, size, args.batch_size, precision, device, args.warmup,
                                    args.steps, args.workers)
        rows.append((size, bound, memory, stream, usual, warmup))
        print(f"[{size}px] model-only {bound:.0f}, ours (memory) {memory:.0f}, ours (stream) {stream:.0f}, "
              f"per-sample pipeline {usual:.0f} img/s", file=sys.stderr, flush=True)

    print(f"\nresnet18, batch {args.batch_size}, precision {precision}, {name}, torch {torch.__version__}; images/s\n")
    print("| px | 1. model-only | 2. our loop (memory) | 2b. our loop (stream) | 3. per-sample pipeline "
          "| 2/1 | 2/3 | 2b/3 | first epoch's extra seconds (2) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size, bound, memory, stream, usual, warmup in rows:
        print(f"| {size} | {bound:.0f} | {memory:.0f} | {stream:.0f} | {usual:.0f} | {memory / bound:.2f} "
              f"| {memory / usual:.2f} | {stream / usual:.2f} | {warmup:.1f} |")
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
        bound = [model_only(train_args, size, args.batch_size, precision, device, args.warmup, args.steps, c)
                 for c in (0, 1)]
        rows.append((size, bound, loops))
        print(f"[{size}px] model-only {bound[0]:.0f} -> {bound[1]:.0f}, our loop {loops[0][0]:.0f} -> "
              f"{loops[1][0]:.0f} img/s", file=sys.stderr, flush=True)

    print(f"\nresnet18, batch {args.batch_size}, precision {precision}, {name}, torch {torch.__version__}; "
          "eager -> torch.compile (inductor)\n")
    print("| px | model-only img/s | our loop img/s | speed-up (loop) | extra seconds, first epoch "
          "| extra seconds, evaluation and setup | break-even (training images) |")
    print("|---|---|---|---|---|---|---|")
    for size, (bound_eager, bound_compiled), ((eager, eager_warmup, eager_rest), (compiled, warmup, rest)) in rows:
        saved_per_image = 1 / eager - 1 / compiled
        first_epoch_extra, setup_extra = warmup - eager_warmup, rest - eager_rest
        added = first_epoch_extra + setup_extra
        break_even = f"{added / saved_per_image:,.0f}" if saved_per_image > 0 else "never (slower)"
        print(f"| {size} | {bound_eager:.0f} -> {bound_compiled:.0f} | {eager:.0f} -> {compiled:.0f} "
              f"| {compiled / eager:.2f}x | {first_epoch_extra:+.0f} | {setup_extra:+.0f} | {break_even} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
