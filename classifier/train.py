"""The training run: data -> model -> accelerate loop -> evaluation -> model folder (-> Hub).

One `Accelerator` owns devices, precision, distribution, checkpoints and trackers. Training
images live as one uint8 tensor on the training device; each step indexes a batch out of it and
augments it there (classifier.augment), so no DataLoader workers are needed for training. A
training set too large for memory is streamed instead: DataLoader workers decode the same batches
to the same uint8 tensors, and everything after that is shared.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import platform
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from tqdm.auto import tqdm

from . import metrics as metrics_lib
from . import report
from .augment import BatchAugment, normalize
from .data import (DataError, StreamedSplit, TensorSplit, decode_split, load_splits, memory_budget, typical_size,
                   undecodable)
from .model import ModelSourceError, create_model, data_config, export, replace_folder_contents, view_probabilities
from .options import dataset_slug, parse_args
from .presets import find_preset
from .samples import write_samples

log = logging.getLogger("classifier")
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"


class TrainingError(RuntimeError):
    """The run cannot continue; the message says why and what is kept."""


@dataclass
class Progress:
    """Where the run is; saved in every checkpoint so a resumed run continues mid-epoch exactly."""

    epoch: int = 0
    batches_done: int = 0  # batches of `epoch` already trained
    optimizer_steps: int = 0
    running: dict = field(default_factory=lambda: {"loss": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0})
    history: list = field(default_factory=list)

    def state_dict(self):
        return asdict(self)

    def load_state_dict(self, state):
        for key, value in state.items():
            setattr(self, key, value)


def cpu_supports_bf16() -> bool:
    """Native bf16 kernels (AVX-512 BF16 / AMX); without them bf16 autocast on CPU is slower than fp32."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if torch.backends.mps.is_available():
        return "no"
    return "bf16" if cpu_supports_bf16() else "no"


class BatchedTensors(torch.utils.data.Dataset):
    """Index a whole batch in one tensor op (DataLoader calls __getitems__ with the batch's indices)."""

    def __init__(self, split: TensorSplit):
        self.split = split

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        return self.split.images[i], self.split.labels[i]

    def __getitems__(self, indices):
        index = torch.as_tensor(indices)
        return self.split.images[index], self.split.labels[index]


def _already_batched(batch):
    return batch


def eval_loader(split: TensorSplit, batch_size: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(BatchedTensors(split), batch_size=batch_size, collate_fn=_already_batched)


def train_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int):
    """The index batches of one epoch for this process: a permutation fixed by (seed, epoch), shared by
    every process and sliced per rank, so a resumed run replays the same order."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    per_step = batch_size * world
    return [order[s * per_step + rank * batch_size: s * per_step + (rank + 1) * batch_size] for s in range(n // per_step)]


def training_inputs(train_data, batches, device, workers: int):
    """(uint8 images, labels, messages for undecodable rows) for each batch of indices, on `device`."""
    if isinstance(train_data, TensorSplit):
        for index in batches:
            index = index.to(device)
            yield train_data.images[index], train_data.labels[index], []
        return
    loader = torch.utils.data.DataLoader(
        train_data, batch_sampler=[b.tolist() for b in batches], collate_fn=_already_batched, num_workers=workers,
        prefetch_factor=4 if workers else None, pin_memory=device.type == "cuda",
        # its own generator: creating the loader then leaves the global RNG, which draws the augmentations,
        # exactly where the in-memory path leaves it
        generator=torch.Generator().manual_seed(0),
    )
    for images, labels, _, failed in loader:
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True), failed


def build_optimizer(args, model, device: torch.device):
    # no weight decay on norm layers and biases: standard for ResNets, and it matters for short schedules
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # one fused kernel over all parameters instead of a loop per tensor: on a 2-core CPU resnet18's AdamW step
    # drops from 32 to 5.5 ms (SGD 8.9 to 3.6), about 8 % of a 32 px training step; other devices keep the default
    fused = True if device.type in ("cpu", "cuda") else None
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=True, fused=fused)
    if args.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=args.lr, fused=fused)
    # Adam's weight decay is L2 added to the gradient, unlike AdamW's decoupled decay
    return torch.optim.Adam(groups, lr=args.lr, fused=fused)


def build_scheduler(args, optimizer, total_steps: int, steps_per_epoch: int):
    """Linear warm-up to the peak lr, then `onecycle`: linear decay, or `cosine`: cosine decay, towards 0."""
    warmup = min(int(args.warmup_epochs * steps_per_epoch), total_steps - 1)

    def factor(step):
        if step < warmup:
            return 0.1 + 0.9 * step / warmup  # start at a tenth of the peak, like OneCycle's div_factor=10
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        if args.scheduler == "onecycle":
            return 1.0 - progress * (1.0 - 1e-3)
        return 1e-3 + (1.0 - 1e-3) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def progressive_img_size(epoch: int, epochs: int, min_size: int, max_size: int, ramp: tuple[float, float],
                         multiple: int = 16) -> int:
    """The training input size of `epoch` (0-based) under progressive resizing: `min_size` until the fraction
    `ramp[0]` of the epochs, growing linearly to `max_size` at `ramp[1]`, `max_size` from there on (FFCV's
    schedule). Small early epochs cost a fraction of full-size ones, and the last ones at the evaluation size
    let the weights and batch-norm statistics settle at the size the model will see. Sizes in between are
    rounded to multiples of 16, so a run meets only a few distinct shapes."""
    start, end = ramp[0] * epochs, ramp[1] * epochs
    if min_size >= max_size or epoch >= end:
        return max_size
    if epoch <= start:
        return min_size
    size = min_size + (epoch - start) / (end - start) * (max_size - min_size)
    return min(max(round(size / multiple) * multiple, min_size), max_size)


@torch.inference_mode()
def evaluate_split(model, loader, accelerator, mean, std, num_classes: int,
                   tta: str = "none") -> tuple[dict, torch.Tensor]:
    """Metrics and per-sample probabilities (in split order) over a split; under N processes
    gather_for_metrics drops the padding so each sample counts once. With test-time augmentation the
    accuracy of the image alone is reported too, as `single_view_accuracy`."""
    model.eval()
    probs, single, refs = [], [], []
    for images, labels in loader:
        x = normalize(images, mean, std).contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            views = view_probabilities(model, x, tta)
        p, p0, y = accelerator.gather_for_metrics((views.mean(0), views[0], labels))
        probs.append(p.cpu()), single.append(p0.cpu()), refs.append(y.cpu())
    probs, single, refs = torch.cat(probs), torch.cat(single), torch.cat(refs)
    result = metrics_lib.compute(probs.tolist(), refs.tolist(), num_classes)
    # the cross-entropy of the predicted distribution (the views' mean); with one view, of the softmax
    result["loss"] = F.nll_loss(probs.clamp_min(torch.finfo(probs.dtype).tiny).log(), refs).item()
    result["num_samples"] = len(refs)
    if tta != "none":
        result["tta"] = tta
        result["single_view_accuracy"] = (single.argmax(-1) == refs).double().mean().item()
    return result, probs


def find_checkpoint(output_dir: Path, resume: str) -> Path:
    if resume != "latest":
        path = Path(resume)
        if not path.is_dir():
            raise TrainingError(f"--resume {resume}: no such checkpoint folder.")
        return path
    candidates = sorted(p for p in (output_dir / CHECKPOINT_DIR).glob("step_*") if not p.name.endswith(".partial"))
    if not candidates:
        raise TrainingError(f"--resume latest: no checkpoint in {output_dir / CHECKPOINT_DIR}.")
    return candidates[-1]


def save_checkpoint(accelerator, model, output_dir: Path, progress: Progress, limit: int) -> None:
    """Save only finite weights, under a temporary name renamed when complete: a run killed or diverging at
    any moment leaves the newest checkpoint a good one."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise TrainingError(
            f"Model weights became non-finite by optimizer step {progress.optimizer_steps} (epoch "
            f"{progress.epoch + 1}); the checkpoint was not saved. Lower --lr or set --clip-grad and "
            f"--resume latest from the last good checkpoint in {output_dir / CHECKPOINT_DIR}.")
    folder = output_dir / CHECKPOINT_DIR / f"step_{progress.optimizer_steps:08d}"
    partial = folder.with_name(folder.name + ".partial")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for old in sorted((output_dir / CHECKPOINT_DIR).glob("step_[0-9]*[0-9]"))[:-limit]:
            shutil.rmtree(old, ignore_errors=True)


def check_output_dir(output_dir: Path, needed_bytes: int) -> None:
    """Fail before training, not after an hour of it, if the model folder cannot be written."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write-test"
        probe.write_bytes(b"0" * 1024)
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"Cannot write to --output-dir {output_dir}: {e}") from e
    free = shutil.disk_usage(output_dir).free
    if free < needed_bytes:
        raise TrainingError(f"Only {free / 2**20:.0f} MB free at {output_dir}; this run needs about "
                            f"{needed_bytes / 2**20:.0f} MB (model folder and checkpoints).")


def run(args) -> dict:
    started = time.perf_counter()
    output_dir = Path(args.output_dir)
    mixed_precision = resolve_mixed_precision(args.mixed_precision)
    report_to = None if args.report_to == "none" else args.report_to.split(",")
    accelerator = Accelerator(
        mixed_precision=mixed_precision, gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=report_to, project_dir=str(output_dir / LOG_DIR),
        dynamo_backend="inductor" if args.compile else "no",  # accelerate wraps the model in torch.compile
    )
    set_seed(args.seed)

    # -- data: the main process decodes and fills the cache, the others then read it
    with accelerator.main_process_first():
        splits = load_splits(args.dataset, args.image_column, args.label_column, args.val_fraction, args.seed,
                             args.max_train_samples, args.max_eval_samples)
        num_classes = len(splits.label_names)
        store_size = min(args.img_size, typical_size(splits.train, splits.image_column) or args.img_size)
        decode = dict(image_column=splits.image_column, label_column=splits.label_column, num_classes=num_classes,
                      skip_bad_images=args.skip_bad_images, use_cache=not args.no_data_cache)
        train_bytes = len(splits.train) * 3 * store_size ** 2
        streamed = args.data_path == "stream" or (
            args.data_path == "auto" and train_bytes > memory_budget(accelerator.device))
        if streamed:
            train_data = StreamedSplit(splits.train, splits.image_column, splits.label_column, num_classes, store_size)
        else:
            train_data = decode_split(splits.train, size=store_size, desc="decode train", **decode)
        val_data = decode_split(splits.validation, size=args.img_size, desc="decode validation", **decode)
        test_data = decode_split(splits.test, size=args.img_size, desc="decode test", **decode) if splits.test else None
    skipped = {"train": 0 if streamed else train_data.skipped, "validation": val_data.skipped,
               "test": test_data.skipped if test_data else 0}
    if any(skipped.values()):
        accelerator.print(f"Skipped undecodable images: {skipped}")

    # -- model and optimisation
    model_args = dict(args.model_arg, **({"drop_rate": args.drop_rate} if args.drop_rate else {}))
    model, weights_source = create_model(args.model, num_classes, args.pretrained, args.pretrained_file, **model_args)
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    if accelerator.is_main_process:
        # weights + optimizer state per kept checkpoint, plus the exported weights, with room to spare
        weight_bytes = sum(p.numel() * 4 for p in model.parameters())
        keep = args.checkpoint_limit if args.checkpoint_every else 0
        check_output_dir(output_dir, weight_bytes * (3 * keep + 2) + 50 * 2**20)
    model = model.to(memory_format=torch.channels_last)
    world = accelerator.num_processes
    batch_size = min(args.batch_size, len(train_data) // world)
    if batch_size < 1:
        raise DataError(f"{len(train_data)} training images cannot be shared by {world} processes.")
    if batch_size != args.batch_size:
        accelerator.print(f"--batch-size {args.batch_size} exceeds the training set; using {batch_size}.")
    accumulation = args.gradient_accumulation_steps
    # whole accumulation cycles only, so every epoch ends on an optimizer step (and checkpoints land on one)
    batches_per_epoch = len(train_data) // (batch_size * world) // accumulation * accumulation
    if batches_per_epoch == 0:
        raise DataError(f"{len(train_data)} training images do not fill one step of {batch_size} x {world} "
                        f"process(es) x {accumulation} accumulation steps; lower --gradient-accumulation-steps.")
    steps_per_epoch = batches_per_epoch // accumulation
    total_steps = steps_per_epoch * args.epochs
    optimizer = build_optimizer(args, model, accelerator.device)
    scheduler = build_scheduler(args, optimizer, total_steps, steps_per_epoch)
    val_loader = eval_loader(val_data, args.eval_batch_size)
    test_loader = eval_loader(test_data, args.eval_batch_size) if test_data else None
    model, optimizer, val_loader = accelerator.prepare(model, optimizer, val_loader)
    if test_loader is not None:
        test_loader = accelerator.prepare(test_loader)
    progress = Progress()
    # the scheduler is stepped once per optimizer step by us, so it is checkpointed but not prepared
    accelerator.register_for_checkpointing(scheduler, progress)
    if args.resume:
        checkpoint = find_checkpoint(output_dir, args.resume)
        accelerator.load_state(str(checkpoint))
        # the lr given now wins over the checkpoint's (e.g. a lower one after a divergence); same lr: no change
        scheduler.base_lrs = [args.lr for _ in scheduler.base_lrs]
        for group, lr in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = lr * scheduler.lr_lambdas[0](scheduler.last_epoch)
        accelerator.print(f"Resumed from {checkpoint} (epoch {progress.epoch + 1}, batch {progress.batches_done}).")
        if progress.history:  # the clock continues from the last finished epoch (time lost to a kill is not counted)
            started -= progress.history[-1]["elapsed_seconds"]

    device = accelerator.device
    if not streamed:
        train_data = TensorSplit(train_data.images.to(device), train_data.labels.to(device), train_data.rows)
    bad_streamed = set()  # streamed training images that failed to decode (skipped with --skip-bad-images)
    mean_t, std_t = torch.tensor(mean, device=device), torch.tensor(std, device=device)
    augment = BatchAugment(args.augment, args.img_size, mean, std, random_erase=args.random_erase, device=device)
    mixup = None
    if args.mixup > 0 or args.cutmix > 0:
        mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, label_smoothing=args.label_smoothing,
                      num_classes=num_classes)
    criterion = SoftTargetCrossEntropy() if mixup else torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    run_config = {k: v for k, v in vars(args).items() if v is None or isinstance(v, (int, float, str, bool))}
    accelerator.init_trackers("train", config=run_config)
    accelerator.print(
        f"{args.model} ({weights_source}) on {args.dataset}: {len(train_data)} train / {len(val_data)} val"
        f"{f' / {len(test_data)} test' if test_data else ''} images, {num_classes} classes, {args.img_size}px "
        f"{f'(trained from {args.min_img_size}px up) ' if args.min_img_size < args.img_size else ''}"
        f"({'streamed' if streamed else 'cached'} at {store_size}px), {world} process(es) on {device}, "
        f"precision {mixed_precision}, "
        f"{args.epochs} epochs x {steps_per_epoch} steps"
    )

    for epoch in range(progress.epoch, args.epochs):
        model.train()
        batches = train_batches(len(train_data), batch_size, args.seed, epoch, accelerator.process_index, world)
        batches = batches[:batches_per_epoch]
        img_size = progressive_img_size(epoch, args.epochs, args.min_img_size, args.img_size, args.resize_ramp)
        desc = f"epoch {epoch + 1}/{args.epochs}" + (f" at {img_size}px" if img_size != args.img_size else "")
        bar = tqdm(total=len(batches), initial=progress.batches_done, desc=desc,
                   disable=not accelerator.is_local_main_process, dynamic_ncols=True)
        window_start, window_losses, window_correct = time.perf_counter(), [], []
        inputs = training_inputs(train_data, batches[progress.batches_done:], device, args.data_workers)
        for batch_index, (images, y, failed) in enumerate(inputs, start=progress.batches_done):
            if failed and not args.skip_bad_images:
                raise undecodable("decode train", failed[0])
            bad_streamed.update(failed)
            x = augment(images, img_size)
            targets = y
            if mixup is not None:
                x, targets = mixup(x, y)
            with accelerator.accumulate(model):
                logits = model(x)
                loss = criterion(logits, targets)
                accelerator.backward(loss)
                if args.clip_grad and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), args.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            lr = scheduler.get_last_lr()[0]
            if accelerator.sync_gradients:
                scheduler.step()
                progress.optimizer_steps += 1
            progress.batches_done = batch_index + 1
            window_losses.append(loss.detach())
            window_correct.append((logits.argmax(-1) == y).sum())
            checkpoint_due = (isinstance(args.checkpoint_every, int) and accelerator.sync_gradients
                              and progress.optimizer_steps % args.checkpoint_every == 0)
            # reading values forces a device sync: do it every few batches, not every one
            if len(window_losses) == 10 or batch_index == len(batches) - 1 or checkpoint_due:
                losses = torch.stack(window_losses).float()
                if not torch.isfinite(losses).all():
                    bad_step = batch_index - len(window_losses) + 1 + int((~torch.isfinite(losses)).nonzero()[0])
                    raise TrainingError(
                        f"Loss became {losses[~torch.isfinite(losses)][0].item()} at epoch {epoch + 1}, batch "
                        f"{bad_step}. Lower --lr or enable --clip-grad; checkpoints in "
                        f"{output_dir / CHECKPOINT_DIR} (if any) hold the last good state.")
                elapsed = time.perf_counter() - window_start
                progress.running["loss"] += losses.sum().item()
                progress.running["correct"] += torch.stack(window_correct).sum().item()
                progress.running["seen"] += len(window_losses) * len(y)
                progress.running["seconds"] += elapsed
                bar.set_postfix(loss=f"{losses.mean().item():.3f}", lr=f"{lr:.2e}",
                                img_s=f"{len(window_losses) * len(y) * world / elapsed:.0f}")
                bar.update(len(window_losses))
                accelerator.log({"train/loss": losses.mean().item(), "lr": lr},
                                step=progress.optimizer_steps)
                window_start, window_losses, window_correct = time.perf_counter(), [], []
            if checkpoint_due:
                save_checkpoint(accelerator, model, output_dir, progress, args.checkpoint_limit)
        bar.close()

        val, _ = evaluate_split(model, val_loader, accelerator, mean_t, std_t, num_classes)
        running = progress.running
        correct = accelerator.reduce(torch.tensor(running["correct"], device=device), "sum").item()
        seen = running["seen"] * world
        record = {
            "epoch": epoch + 1,
            "img_size": img_size,  # of the training images; validation is always at --img-size
            "train_loss": running["loss"] / max(len(batches), 1),
            "train_accuracy": correct / max(seen, 1),
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "val_f1": val["f1"],
            "seconds": running["seconds"],  # training steps only
            "elapsed_seconds": time.perf_counter() - started,  # since the run started: loading, decoding, evals
        }
        progress.history.append(record)
        accelerator.log({f"epoch/{k}": v for k, v in record.items()}, step=progress.optimizer_steps)
        # under progressive resizing, validation at the final size trails while the training size is small
        sizes = f" (trained at {img_size}px, validated at {args.img_size}px)" if img_size != args.img_size else ""
        accelerator.print(
            f"epoch {epoch + 1}/{args.epochs}{sizes}: train loss {record['train_loss']:.4f} acc "
            f"{100 * record['train_accuracy']:.2f}% | val loss {val['loss']:.4f} acc {100 * val['accuracy']:.2f}% "
            f"f1 {val['f1']:.4f} | {running['seconds']:.0f}s")
        progress.epoch, progress.batches_done = epoch + 1, 0
        progress.running = Progress().running
        if args.checkpoint_every == "epoch":
            save_checkpoint(accelerator, model, output_dir, progress, args.checkpoint_limit)

    skipped["train"] += len(bad_streamed)
    # -- final evaluation: the test split is touched here and only here
    final_split = "test" if test_loader is not None else "validation"
    # with the test-time augmentation the exported model declares, i.e. as the app will predict
    final, final_probs = evaluate_split(model, test_loader or val_loader, accelerator, mean_t, std_t, num_classes,
                                        args.tta)
    single_view = (f" ({100 * final['single_view_accuracy']:.2f}% without --tta {args.tta})"
                   if args.tta != "none" else "")
    accelerator.print(f"{final_split}: accuracy {100 * final['accuracy']:.2f}%{single_view}, f1 {final['f1']:.4f}, "
                      f"mcc {final['mcc']:.4f}, roc_auc {final['roc_auc']}")
    # without the torch.compile wrapper: its parameter names carry an `_orig_mod.` prefix timm would not load
    plain_model = accelerator.unwrap_model(model, keep_torch_compile=False)
    if args.weights_dtype != "float32":
        # the exported weights are rounded to a 16-bit type: measure what that costs on the same split
        rounded = copy.deepcopy(plain_model).to(getattr(torch, args.weights_dtype)).float()
        check, _ = evaluate_split(rounded, test_loader or val_loader, accelerator, mean_t, std_t, num_classes,
                                  args.tta)
        final["exported_weights"] = {"dtype": args.weights_dtype, "accuracy": check["accuracy"]}
        accelerator.print(f"{final_split} accuracy with {args.weights_dtype} weights: {100 * check['accuracy']:.2f}% "
                          f"({100 * (check['accuracy'] - final['accuracy']):+.2f} points)")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final_data, final_dataset = (test_data, splits.test) if test_data else (val_data, splits.validation)

        def add_samples(staging: Path) -> None:
            if args.samples_per_class or args.failure_samples:
                count = write_samples(staging / "samples", final_dataset, splits.image_column, final_data.rows,
                                      final_data.labels, final_probs, splits.label_names, args.samples_per_class,
                                      args.failure_samples, args.seed)
                accelerator.print(f"Wrote {count} {final_split} images to samples/ for the app's galleries.")

        metrics = {"label_names": splits.label_names, "final_split": final_split, "final": final,
                   "history": progress.history, "skipped_images": skipped}
        facts = RunFacts(weights_source, model_args, mixed_precision, "stream" if streamed else "memory",
                         describe_hardware(device), world, accelerator.distributed_type.value)
        write_model_folder(args, plain_model, metrics, facts, add_samples)
        accelerator.print(f"Model folder: {output_dir.resolve()}")
    accelerator.wait_for_everyone()
    accelerator.end_training()  # last: it ends the trackers and destroys the process group
    return {"history": progress.history, final_split: final}


@dataclass
class RunFacts:
    """What the run resolved or found beyond its arguments; recorded next to them in training_args.json."""
    weights_source: str
    model_args: dict
    mixed_precision: str
    data_path: str
    hardware: str
    num_processes: int
    distributed_type: str  # accelerate's DistributedType: NO, MULTI_CPU, MULTI_GPU, ...


def describe_hardware(device: torch.device) -> str:
    """The machine in a few words, so wall-clock figures can be read against it ("cpu: AMD EPYC, 2 threads")."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)} x{torch.cuda.device_count()}"
    if device.type != "cpu":
        return device.type
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    name = names[0] if names else platform.processor() or "unknown"
    return f"cpu: {name}, {torch.get_num_threads()} threads, {'bf16' if cpu_supports_bf16() else 'no bf16'}"


def write_model_folder(args, model, metrics: dict, facts: RunFacts, add_extra_files) -> None:
    """Everything is written to a staging folder first and moved in at the end (config.json last)."""
    output_dir = Path(args.output_dir)
    staging = output_dir / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    preset = find_preset(args.dataset)
    # safetensors stores contiguous tensors only; channels_last was for speed
    model = model.to(memory_format=torch.contiguous_format, dtype=getattr(torch, args.weights_dtype))
    label_names, final, final_split = metrics["label_names"], metrics["final"], metrics["final_split"]
    export(model, staging, label_names, data_config(args.img_size, mean, std), facts.model_args,
           tag=dataset_slug(args.dataset), tta=args.tta)
    command = "accelerate launch train_accelerate.py " + shlex.join(sys.argv[1:])
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
    training_args = dict(vars(args), weights_source=facts.weights_source,
                         resolved_mixed_precision=facts.mixed_precision, resolved_data_path=facts.data_path,
                         hardware=facts.hardware, num_processes=facts.num_processes,
                         distributed_type=facts.distributed_type, command=command)
    (staging / "training_args.json").write_text(json.dumps(training_args, indent=2, default=str))
    if metrics["history"]:
        report.plot_curves(metrics["history"], staging / report.CURVES_NAME)
    report.plot_confusion(final["confusion_matrix"], label_names, staging / report.CONFUSION_NAME,
                          f"{args.model} on {args.dataset} ({final_split})")
    repo_name = args.push_to_hub or f"{args.model}-{dataset_slug(args.dataset)}"
    card = report.model_card(repo_name, args.model, args.dataset, preset.path if preset else None, label_names,
                             final, final_split, command, args.img_size, facts.weights_source)
    card.save(staging / "README.md")
    add_extra_files(staging)
    replace_folder_contents(staging, output_dir)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("timm", "httpx", "huggingface_hub", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        run(args)
    except (DataError, ModelSourceError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # disk full, permissions... while writing: the model folder was not replaced
        print(f"error: writing the output failed ({e}); {args.output_dir} holds no new model.", file=sys.stderr)
        sys.exit(2)
    if args.push_to_hub and PartialState().is_main_process:
        from .hub import HubError, push_folder

        try:
            push_folder(args.output_dir, args.push_to_hub, private=args.hub_private, revision=args.hub_revision)
        except HubError as e:
            print(f"error: {e} The model folder {args.output_dir} is intact.", file=sys.stderr)
            sys.exit(3)
