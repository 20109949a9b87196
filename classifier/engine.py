"""One epoch of training and one evaluation pass, as timm's train.py splits them (train_one_epoch / validate).

Training images live as one uint8 tensor on the training device; each step indexes a batch out of it and
augments it there (classifier.augment), so no DataLoader workers are needed for training. A training set
too large for memory is streamed instead: DataLoader workers decode the same batches to the same uint8
tensors, and everything after that is shared.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from tqdm.auto import tqdm

from . import metrics as metrics_lib
from .augment import BatchAugment, normalize
from .data import StreamedSplit, TensorSplit, undecodable
from .model import view_logits
from .state import Progress, TrainingError, TrainState, new_running

WINDOW = 10  # batches between reads of the loss: each read waits for the device


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


@dataclass
class Recipe:
    """What turns a batch of uint8 images into model inputs and a loss: augmentation, mixup/cutmix, criterion."""

    augment: BatchAugment
    mixup: Mixup | None
    criterion: torch.nn.Module

    @classmethod
    def from_args(cls, args, num_classes: int, mean, std, store_size: int | None = None) -> "Recipe":
        """From the recipe options of `args` (options.Options): augment, img_size, random_erase, crop_scale, mixup,
        cutmix, label_smoothing."""
        # random-resized crops only where the cached images are larger than the input: smaller ones (CIFAR-10's
        # 32 px for a 96 px input) have no detail to crop into
        crop_scale = args.crop_scale if (store_size or 0) > args.img_size else 1.0
        augment = BatchAugment(args.augment, args.img_size, mean, std, random_erase=args.random_erase,
                               crop_scale=crop_scale)
        mixup = None
        if args.mixup > 0 or args.cutmix > 0:
            mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, label_smoothing=args.label_smoothing,
                          num_classes=num_classes)
        criterion = (SoftTargetCrossEntropy() if mixup
                     else torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing))
        return cls(augment, mixup, criterion)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, img_size: int):
        """-> (augmented inputs, targets: the labels or their mixed soft version, the labels of the inputs)"""
        x = self.augment(images, img_size)
        if self.mixup is None:
            return x, labels, labels
        if len(x) % 2:  # timm's Mixup pairs the images; a streamed batch that lost an undecodable one drops one more
            x, labels = x[:-1], labels[:-1]
        return *self.mixup(x, labels), labels


@dataclass(frozen=True)
class Plan:
    """How the run is cut into epochs and steps, and at what size each epoch trains; the same on every process."""

    batch_size: int  # per process
    batches_per_epoch: int  # per process, whole accumulation cycles
    steps_per_epoch: int  # optimizer steps
    epochs: int
    seed: int  # of the data order (train_batches)
    img_size: int
    min_img_size: int  # progressive resizing from this size up (progressive_img_size); img_size: off
    resize_ramp: tuple[float, float]
    checkpoint_every: int | str | None  # optimizer steps, "epoch" or None

    def img_size_at(self, epoch: int) -> int:
        return progressive_img_size(epoch, self.epochs, self.min_img_size, self.img_size, self.resize_ramp)

    def checkpoint_due(self, optimizer_steps: int) -> bool:
        return isinstance(self.checkpoint_every, int) and optimizer_steps % self.checkpoint_every == 0


def train_one_epoch(epoch: int, state: TrainState, train_data: TensorSplit | StreamedSplit, recipe: Recipe,
                    plan: Plan, accelerator: Accelerator, on_checkpoint, *, clip_grad: float | None,
                    skip_bad_images: bool, workers: int, checkpoints: Path) -> int:
    """Train `epoch` from where `state.progress` says it stands; `on_checkpoint()` is called when a checkpoint
    is due (`checkpoints`, the folder they are in, is for the message of a diverged run). `workers` decode a
    streamed training set. The statistics in `state.progress.running` are sums over every process. -> the
    training size."""
    progress = state.progress
    state.model.train()
    batches = train_batches(len(train_data), plan.batch_size, plan.seed, epoch, accelerator.process_index,
                            accelerator.num_processes)[:plan.batches_per_epoch]
    img_size = plan.img_size_at(epoch)
    desc = f"epoch {epoch + 1}/{plan.epochs}" + (f" at {img_size}px" if img_size != plan.img_size else "")
    inputs = training_inputs(train_data, batches[progress.batches_done:], accelerator.device, workers)
    if not progress.compute_dtype:
        record_compute_dtype(state)
    window = Window(time.perf_counter())
    with tqdm(total=len(batches), initial=progress.batches_done, desc=desc,
              disable=not accelerator.is_local_main_process, dynamic_ncols=True) as bar:
        for batch_index, (images, y, failed) in enumerate(inputs, start=progress.batches_done):
            window.failed += failed
            lr = max(state.scheduler.get_last_lr())  # the head's: layer decay and a frozen backbone lower the others
            loss, logits, y = train_step(state, recipe, accelerator, images, y, img_size, clip_grad)
            progress.batches_done = batch_index + 1
            bar.update()  # host-side only: the bar moves with every batch, the loss comes with each window
            window.add(loss.detach(), (logits.argmax(-1) == y).sum(), len(y))
            checkpoint_due = accelerator.sync_gradients and plan.checkpoint_due(progress.optimizer_steps)
            if len(window.losses) == WINDOW or batch_index == len(batches) - 1 or checkpoint_due:
                losses = window.close(accelerator)
                first_batch = batch_index - len(losses) + 1
                check_window(window, losses, progress, epoch, first_batch, skip_bad_images, checkpoints)
                window.add_to(progress.running)
                bar.set_postfix(loss=f"{losses.mean().item():.3f}", lr=f"{lr:.2e}",
                                img_s=f"{window.seen / window.elapsed:.0f}")
                accelerator.log({"train/loss": losses.mean().item(), "lr": lr}, step=progress.optimizer_steps)
                window = Window(time.perf_counter())
            if checkpoint_due:
                on_checkpoint()
    return img_size


def train_step(state: TrainState, recipe: Recipe, accelerator: Accelerator, images: torch.Tensor, y: torch.Tensor,
               img_size: int, clip_grad: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward and backward on one batch, and the optimizer and scheduler step when the accumulation cycle
    ends. -> (loss, logits, the labels of the images trained on)"""
    model, optimizer, progress = state.model, state.optimizer, state.progress
    x, targets, y = recipe(images, y, img_size)
    scaler = accelerator.scaler  # fp16 only
    with accelerator.accumulate(model):
        logits = model(x)
        loss = recipe.criterion(logits, targets)
        accelerator.backward(loss)
        if clip_grad and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), clip_grad)
        scale = scaler.get_scale() if scaler is not None and accelerator.sync_gradients else None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if accelerator.sync_gradients:
        progress.optimizer_steps += 1
        # fp16: the scaler skips an update whose gradients overflowed, and then lowers its scale; the schedule
        # waits for the update too. (accelerate's step_was_skipped cannot tell with a fused optimizer, whose
        # kernel skips the update itself; reading the scale costs the sync the unfused path makes anyway.)
        if scale is not None and scaler.get_scale() < scale:
            progress.skipped_steps += 1
        else:
            state.scheduler.step()
            if state.ema is not None:  # the step count drives timm's warm-up of the decay, so resume continues it
                state.ema.update(accelerator.unwrap_model(model, keep_torch_compile=False),
                                 step=progress.optimizer_steps)
    mark_step(accelerator)
    return loss, logits, y


def record_compute_dtype(state: TrainState) -> None:
    """Record in state.progress the dtype the model's first layer computes in at the next training step: what
    autocast really did (the model's output says nothing, accelerate converts it to float32)."""
    first = next(m for m in state.model.modules() if not list(m.children()) and list(m.parameters(recurse=False)))

    def hook(module, inputs, output):
        state.progress.compute_dtype = str(output.dtype).removeprefix("torch.")
        handle.remove()

    handle = first.register_forward_hook(hook)


def mark_step(accelerator: Accelerator) -> None:
    """On XLA (TPU), end the traced graph here: one graph per training step, compiled once and replayed, instead
    of one that grows until something reads a value."""
    if accelerator.distributed_type == DistributedType.XLA:
        import torch_xla

        torch_xla.sync()


@dataclass
class Window:
    """A few batches' statistics, read and reduced over all processes together: one device sync and one small
    all-reduce per window, after which every process holds the same numbers."""

    started: float
    losses: list = field(default_factory=list)
    correct: list = field(default_factory=list)
    samples: int = 0
    failed: list = field(default_factory=list)  # this process's messages for streamed images that failed to decode
    # after close(), over all processes:
    loss_sum: float = 0.0  # of the batches' losses, each the mean over processes
    total_correct: float = 0.0
    seen: float = 0.0  # images
    undecodable: float = 0.0  # images that failed to decode
    elapsed: float = 0.0

    def add(self, loss: torch.Tensor, correct: torch.Tensor, samples: int) -> None:
        self.losses.append(loss)
        self.correct.append(correct)
        self.samples += samples

    def close(self, accelerator: Accelerator) -> torch.Tensor:
        """Reduce the window over all processes. -> its losses, each the mean over processes."""
        device = self.losses[0].device
        local = torch.cat([torch.stack(self.losses).float(),
                           torch.stack([torch.stack(self.correct).sum().float(),
                                        torch.tensor(float(self.samples), device=device),
                                        torch.tensor(float(len(self.failed)), device=device)])])
        total = accelerator.reduce(local, "sum")
        losses = total[:len(self.losses)] / accelerator.num_processes
        self.total_correct, self.seen, self.undecodable = total[len(self.losses):].tolist()
        self.loss_sum, self.elapsed = losses.sum().item(), time.perf_counter() - self.started
        return losses

    def add_to(self, running: dict) -> None:
        """Add the closed window to the epoch's running sums (state.Progress.running)."""
        running["loss"] += self.loss_sum
        running["correct"] += self.total_correct
        running["seen"] += self.seen
        running["seconds"] += self.elapsed
        running.setdefault("windows", []).append([self.seen, self.elapsed])


def check_window(window: Window, losses: torch.Tensor, progress: Progress, epoch: int, first_batch: int,
                 skip_bad_images: bool, checkpoints: Path) -> None:
    """End the run on a closed window with a non-finite loss, or an undecodable image without --skip-bad-images,
    on any process: every process holds the same reduced numbers, so every process raises the same error."""
    if window.undecodable:
        messages = sorted(set(gather_object(window.failed)))
        if not skip_bad_images:
            raise undecodable("decode train", messages[0])
        progress.skipped_train = sorted(set(progress.skipped_train) | set(messages))
    if not torch.isfinite(losses).all():
        bad = int((~torch.isfinite(losses)).nonzero()[0])
        raise TrainingError(
            f"Loss became {losses[bad].item()} at epoch {epoch + 1}, batch {first_batch + bad}. Lower --lr or enable "
            f"--clip-grad; checkpoints in {checkpoints} (if any) hold the last good state.")


def epoch_record(state: TrainState, epoch: int, img_size: int, batches: int, val: dict, started: float) -> dict:
    """The epoch's line in the history; resets the running sums for the next epoch."""
    running = state.progress.running
    record = {
        "epoch": epoch + 1,
        "img_size": img_size,  # of the training images; validation is always at --img-size
        "train_loss": running["loss"] / max(batches, 1),
        "train_accuracy": running["correct"] / max(running["seen"], 1),
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "val_f1": val["f1"],
        "seconds": running["seconds"],  # training steps only
        "windows": running.get("windows", []),  # [images, seconds] of each WINDOW batches: the benchmarks' rates
        "elapsed_seconds": time.perf_counter() - started,  # since the run started: loading, decoding, evals
    }
    state.progress.history.append(record)
    state.progress.epoch, state.progress.batches_done = epoch + 1, 0
    state.progress.running = new_running()
    return record


def evaluate_split(model, loader, accelerator, mean, std, num_classes: int,
                   tta: str = "none", desc: str = "evaluate") -> tuple[dict, torch.Tensor]:
    """The full report and per-sample probabilities (in split order) over a split; see split_metrics."""
    return split_metrics(*collect_view_logits(model, loader, accelerator, mean, std, tta, desc), num_classes, tta)


def validate_split(model, loader, accelerator, mean, std, num_classes: int,
                   tta: str = "none", desc: str = "validate") -> dict:
    """Loss, accuracy and macro F1 over a split (quick_metrics): what an epoch's line needs."""
    return quick_metrics(*collect_view_logits(model, loader, accelerator, mean, std, tta, desc), num_classes)


def collect_view_logits(model, loader, accelerator, mean, std, tta: str,
                        desc: str = "evaluate") -> tuple[torch.Tensor, torch.Tensor]:
    """(float logits of every test-time view (views, N, classes), labels (N,)) over a split, in split order; under
    N processes gather_for_metrics drops the padding so each sample counts once, and every process gets all."""
    model.eval()
    logits, labels = [], []
    # torch-xla's tensors cannot live in inference mode (a version counter error): no_grad there
    with torch.no_grad() if accelerator.distributed_type == DistributedType.XLA else torch.inference_mode():
        for images, y in tqdm(loader, desc=desc, leave=False, disable=not accelerator.is_local_main_process,
                              dynamic_ncols=True):
            x = normalize(images, mean, std).contiguous(memory_format=torch.channels_last)
            with accelerator.autocast():
                views = view_logits(model, x, tta)
            v, y = accelerator.gather_for_metrics((views.transpose(0, 1).contiguous(), y))  # gathered along images
            logits.append(v.transpose(0, 1).cpu()), labels.append(y.cpu())
    logits, labels = torch.cat(logits, dim=1), torch.cat(labels)
    # diverged weights show here first when the last steps' losses were finite; the metrics would only say
    # "Input contains NaN". The logits are gathered, so every process finds the same and raises together
    broken = int((~torch.isfinite(logits)).any(-1).any(0).sum())
    if broken:
        raise TrainingError(f"{desc}: the model's outputs are not finite (NaN or inf) for {broken} of "
                            f"{len(labels)} images, so its weights are. Lower --lr or set --clip-grad.")
    return logits, labels


def mean_nll(probs: torch.Tensor, refs: torch.Tensor) -> float:
    """The cross-entropy of the predicted distribution (the views' mean; with one view, the softmax)."""
    return F.nll_loss(probs.clamp_min(torch.finfo(probs.dtype).tiny).log(), refs).item()


def quick_metrics(logits: torch.Tensor, refs: torch.Tensor, num_classes: int) -> dict:
    """Loss, accuracy and macro F1 (as the full report computes them: every class, 0 for a class neither predicted
    nor present) from a confusion matrix in torch. Every epoch validates: the full report (per-class lists, MCC,
    one-vs-rest ROC-AUC through Python lists) grows with the classes and runs once, on the final split."""
    probs = logits.softmax(-1).mean(0)
    predicted = probs.argmax(-1)
    confusion = torch.bincount(refs * num_classes + predicted, minlength=num_classes ** 2).view(num_classes, -1)
    hits, shown = confusion.diag().double(), (confusion.sum(0) + confusion.sum(1)).double()  # 2tp + fp + fn
    f1 = torch.where(shown > 0, 2 * hits / shown.clamp_min(1), 0.0)
    return {"loss": mean_nll(probs, refs), "accuracy": (predicted == refs).double().mean().item(),
            "f1": f1.mean().item(), "num_samples": len(refs)}


def split_metrics(logits: torch.Tensor, refs: torch.Tensor, num_classes: int,
                  tta: str = "none") -> tuple[dict, torch.Tensor]:
    """Metrics and per-sample probabilities from the views' logits. With test-time augmentation the accuracy of
    the image alone is reported too, as `single_view_accuracy`."""
    views = logits.softmax(-1)
    probs, single = views.mean(0), views[0]
    result = metrics_lib.compute(probs.tolist(), refs.tolist(), num_classes)
    result["loss"] = mean_nll(probs, refs)
    result["num_samples"] = len(refs)
    if tta != "none":
        result["tta"] = tta
        result["single_view_accuracy"] = (single.argmax(-1) == refs).double().mean().item()
    return result, probs
