"""The training run, read top to bottom as timm's train.py reads: set-up and data (`setup`), model and
optimizer (`build_training`), the epochs (engine.train_one_epoch, engine.validate_split), the final
evaluation (`final_evaluation`) and the model folder (`export_run`, classifier.export).

One `Accelerator` owns devices, precision, distribution, checkpoints and trackers; what N processes need
beyond that (per-process seeds, failures that end every process, the process-group timeout, memory) is
in classifier.distributed; what training changes is one object, state.TrainState.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import parse_flag_from_env
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3

from .checkpoint import checkpoint_dir, find_checkpoint, load_checkpoint, save_checkpoint
from .data import (DataError, Splits, StreamedSplit, TensorSplit, decode_split, load_splits, local_copy_note,
                   memory_budget, streams, typical_size)
from .distributed import (RUN_ENDING, from_every_process, local_process_count, on_every_process,
                          process_group_kwargs, seed_processes, together)
from .calibration import calibrate
from .engine import (Plan, Recipe, collect_view_logits, epoch_record, eval_loader, split_metrics, train_one_epoch,
                     validate_split)
from .export import RunFacts, check_output_dir, write_model_folder
from .hardware import (configure_backends, describe_hardware, guard_bf16_cpu_convolutions, resolve_compile,
                       resolve_precision)
from .hub import check_push_access
from .model import StartingWeights, create_model, resolve_weights
from .options import apply_recipe, parse_args, scaled_lr
from .presets import recipe_for
from .samples import write_samples
from .state import TrainingError, TrainState

log = logging.getLogger("classifier")
LOG_DIR = "logs"


# -- set-up and data

def create_accelerator(args) -> Accelerator:
    """Precision and compilation: our flag, else accelerate's setting, else auto (classifier.hardware)."""
    report_to = None if args.report_to == "none" else args.report_to.split(",")
    # the process group first (accelerate's own device choice, with our timeout; ACCELERATE_USE_CPU read as
    # AcceleratorState reads it): `auto` depends on the device
    device_type = PartialState(parse_flag_from_env("ACCELERATE_USE_CPU"),
                               **process_group_kwargs(args.collective_timeout).to_kwargs()).device.type
    precision, source = resolve_precision(args.mixed_precision, device_type)
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=report_to, project_dir=str(Path(args.output_dir) / LOG_DIR),
        dynamo_backend=resolve_compile(args.compile),  # accelerate wraps the model in torch.compile
        kwargs_handlers=[process_group_kwargs(args.collective_timeout)],
    )
    # what the run resolved, recorded in training_args.json
    args.resolved = {"mixed_precision": accelerator.mixed_precision, "mixed_precision_from": source,
                     "dynamo_backend": accelerator.state.dynamo_plugin.backend.value.lower(),
                     **configure_backends(accelerator.device.type, args.deterministic)}
    return accelerator


@dataclass
class RunData:
    splits: Splits
    train: TensorSplit | StreamedSplit
    validation: TensorSplit
    test: TensorSplit | None
    store_size: int  # the training images' cached size
    streamed: bool
    skipped: dict  # undecodable images skipped (--skip-bad-images) while decoding, per split

    @property
    def num_classes(self) -> int:
        return len(self.splits.label_names)


def load_data(args, accelerator: Accelerator) -> RunData:
    accelerator.print(f"Loading {args.dataset} ...", flush=True)
    splits = load_splits(args.dataset, args.image_column, args.label_column, args.val_fraction, args.seed,
                         args.max_train_samples, args.max_eval_samples)
    num_classes = len(splits.label_names)
    typical = typical_size(splits.train, splits.image_column) or args.img_size
    # images larger than the input are kept larger (up to 1.5x) for random-resized crops to cut into
    store_size = min(typical, round(args.img_size * 1.5)) if args.crop_scale < 1 else min(args.img_size, typical)
    decode = dict(image_column=splits.image_column, label_column=splits.label_column, num_classes=num_classes,
                  skip_bad_images=args.skip_bad_images, use_cache=not args.no_data_cache, workers=args.data_workers,
                  progress=accelerator.is_local_main_process)
    train_bytes = len(splits.train) * 3 * store_size ** 2
    local_processes = local_process_count(accelerator)
    streamed = streams(args.data_path, train_bytes, accelerator.device, local_processes)
    # why `auto` chose as it did: each of this machine's processes may hold the set, so they share the budget
    args.resolved["data_path_budget"] = {"decoded_train_bytes": train_bytes, "local_processes": local_processes,
                                         "bytes_per_process": memory_budget(accelerator.device, local_processes)}
    if streamed:
        train = StreamedSplit(splits.train, splits.image_column, splits.label_column, num_classes, store_size)
    else:
        train = decode_split(splits.train, size=store_size, desc="decode train", **decode)
    validation = decode_split(splits.validation, size=args.img_size, desc="decode validation", **decode)
    test = decode_split(splits.test, size=args.img_size, desc="decode test", **decode) if splits.test else None
    skipped = {"train": 0 if streamed else train.skipped, "validation": validation.skipped,
               "test": test.skipped if test else 0}
    return RunData(splits, train, validation, test, store_size, streamed, skipped)


def starting_weights(args, accelerator: Accelerator) -> StartingWeights:
    """Where the weights come from: the main process of each machine fetches them into its Hub cache first, the
    others then find them there (one download per machine)."""
    weights = None
    with together(accelerator, patience_s=args.ddp_timeout):
        if accelerator.is_local_main_process:
            weights = resolve_weights(args.model, args.pretrained, args.pretrained_file)
    with together(accelerator):
        if weights is None:
            weights = resolve_weights(args.model, args.pretrained, args.pretrained_file, cached_only=True)
    return weights


def choose_recipe(args, accelerator: Accelerator, weights: StartingWeights) -> None:
    """The recipe that fits the weights fills the options not given; the run says which and why."""
    kind = apply_recipe(args, weights.pretrained)
    why = (f"--recipe {kind}" if args.recipe != "auto" else
           f"weights {weights.describe()} ({weights.why})" if weights.pretrained else f"random weights ({weights.why})")
    head = f", the head alone for {args.freeze_epochs} epoch(s)" if args.freeze_epochs else ""
    decay = f", layer decay {args.layer_decay:g}" if args.layer_decay else ""
    given = f"; given on the command line: {', '.join(args.recipe_given)}" if args.recipe_given else ""
    other = "scratch" if kind == "finetune" else "finetune"
    accelerator.print(f"Recipe: {'fine-tuning' if kind == 'finetune' else 'from scratch'}, for {why}: "
                      f"{args.optimizer} lr {args.lr:g}{decay}{head}, {args.epochs} epochs, {args.scheduler}"
                      f"{given} (--recipe {other} for the other one)")
    args.resolved["recipe"] = {"name": kind, "why": why, "given": args.recipe_given,
                               "values": {key: getattr(args, key) for key in recipe_for(args.dataset, kind)}}
    args.resolved["weights"] = {"source": weights.describe(), "kind": weights.kind, "hub_id": weights.hub_id,
                                "revision": weights.revision, "license": weights.license, "why": weights.why}


def setup(args) -> tuple[Accelerator, StartingWeights, RunData]:
    """The accelerator, the starting weights and the recipe they call for, per-process seeds, and the data: the
    main process of each machine loads and decodes first, filling the cache; the others then read it."""
    accelerator = create_accelerator(args)
    if args.push_to_hub:  # a token or repo that cannot be written to is found now, not after hours of training
        with together(accelerator):
            if accelerator.is_main_process:
                check_push_access(args.push_to_hub, private=args.hub_private)
    weights = starting_weights(args, accelerator)
    choose_recipe(args, accelerator, weights)
    seed_processes(args.seed)
    data = None
    with together(accelerator, patience_s=args.ddp_timeout):
        if accelerator.is_local_main_process:
            data = load_data(args, accelerator)
    with together(accelerator):
        if data is None:
            data = load_data(args, accelerator)
    if any(data.skipped.values()):
        accelerator.print(f"Skipped undecodable images: {data.skipped}")
    # where each process's images came from: the main process of a machine decodes, the others read its cache
    sources = {name: "streamed" if name == "train" and data.streamed else split.source
               for name, split in (("train", data.train), ("validation", data.validation), ("test", data.test))
               if split is not None}
    args.resolved["data_sources"] = from_every_process(sources)
    if not data.streamed:  # each step indexes its batch out of this tensor, where the model is
        train, device = data.train, accelerator.device
        data.train = TensorSplit(train.images.to(device), train.labels.to(device), train.rows)
    return accelerator, weights, data


# -- model and optimizer

def build_optimizer(args, model, device: torch.device):
    """timm's optimizer factory: no weight decay on norms, biases and what the model's no_weight_decay() names
    (a ViT's position embedding), and with --layer-decay a group per layer, its lr scaled (`lr_scale`)."""
    # a group per layer is also what lets the head train alone (--freeze-epochs) without layer decay
    layer_decay = args.layer_decay or (1.0 if args.freeze_epochs else None)
    # one fused kernel over all parameters instead of a loop per tensor: on a 2-core CPU resnet18's AdamW step
    # drops from 32 to 5.5 ms (SGD 8.9 to 3.6), about 8 % of a 32 px training step; other devices keep the default
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    momentum = {"momentum": args.momentum} if args.optimizer == "sgd" else {}  # timm's sgd is Nesterov's
    return create_optimizer_v2(model, opt=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                               layer_decay=layer_decay, **momentum, **fused)


def build_scheduler(args, optimizer, model, total_steps: int, steps_per_epoch: int):
    """Linear warm-up to the peak lr, then `linear` or `cosine` decay towards 0; each
    parameter group at its layer's share of it (`lr_scale`), and all but the head at 0 for --freeze-epochs."""
    warmup = min(int(args.warmup_epochs * steps_per_epoch), total_steps - 1)
    frozen_steps = args.freeze_epochs * steps_per_epoch

    def factor(step):
        if step < warmup:
            return 0.1 + 0.9 * step / warmup  # start at a tenth of the peak, like OneCycle's div_factor=10
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        if args.scheduler == "linear":
            return 1.0 - progress * (1.0 - 1e-3)
        return 1e-3 + (1.0 - 1e-3) * 0.5 * (1.0 + math.cos(math.pi * progress))

    # the backbone sits at lr 0 instead of requires_grad=False: DDP expects every parameter's gradient at each
    # step, and one graph throughout keeps checkpoints and resume as they are (its gradients cost a backward
    # pass through the backbone, as any step does)
    head = {id(p) for p in model.get_classifier().parameters()} if frozen_steps else set()

    def group_factor(group):
        scale, is_head = group.get("lr_scale", 1.0), all(id(p) in head for p in group["params"])
        return lambda step: scale * factor(step) * (1.0 if is_head or step >= frozen_steps else 0.0)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [group_factor(g) for g in optimizer.param_groups])


@dataclass
class Training:
    """The model side of a run: what training changes, how a batch becomes a loss, how the data is cut into
    steps, and the evaluation inputs."""
    state: TrainState
    recipe: Recipe
    plan: Plan
    val_loader: torch.utils.data.DataLoader
    test_loader: torch.utils.data.DataLoader | None
    mean: torch.Tensor  # of the model's normalisation, on the device
    std: torch.Tensor
    weights: StartingWeights
    model_args: dict


def plan_steps(args, train_size: int, world: int) -> Plan:
    batch_size = min(args.batch_size, train_size // world)
    if batch_size < 1:
        raise DataError(f"{train_size} training images cannot be shared by {world} processes.")
    accumulation = args.gradient_accumulation_steps
    # whole accumulation cycles only, so every epoch ends on an optimizer step (and checkpoints land on one)
    batches_per_epoch = train_size // (batch_size * world) // accumulation * accumulation
    if batches_per_epoch == 0:
        raise DataError(f"{train_size} training images do not fill one step of {batch_size} x {world} "
                        f"process(es) x {accumulation} accumulation steps; lower --gradient-accumulation-steps.")
    return Plan(batch_size, batches_per_epoch, batches_per_epoch // accumulation)


def apply_lr_scaling(args, accelerator: Accelerator, plan: Plan) -> None:
    """--lr-scale: the recipe's lr suits its own batch size on one process; N processes and accumulation make
    the global batch larger, and the lr follows it (timm's rule), once, for the run and its record."""
    reference = recipe_for(args.dataset)["batch_size"]
    global_batch = plan.batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    rule = "none" if args.lr_scale == "auto" and "lr" in args.recipe_given else args.lr_scale
    lr, rule = scaled_lr(args.lr, rule, args.optimizer, global_batch, reference)
    if lr != args.lr:
        accelerator.print(f"lr {args.lr:g} -> {lr:.4g}: {rule} scaling for a global batch of {global_batch} "
                          f"({accelerator.num_processes} process(es) x {plan.batch_size} x "
                          f"{args.gradient_accumulation_steps} accumulation) against the recipe's {reference} "
                          f"(--lr-scale none keeps {args.lr:g})")
    args.resolved["lr"] = {"base": args.lr, "applied": lr, "rule": rule, "global_batch": global_batch,
                           "reference_batch": reference}
    args.lr = lr


def build_training(args, accelerator: Accelerator, weights: StartingWeights, data: RunData) -> Training:
    device, output_dir = accelerator.device, Path(args.output_dir)
    with together(accelerator):
        model_args = dict(args.model_arg, **({"drop_rate": args.drop_rate} if args.drop_rate else {}))
        model = create_model(args.model, data.num_classes, weights, **model_args)
        if accelerator.is_main_process:
            # weights + optimizer state per kept checkpoint, plus the exported weights, with room to spare
            weight_bytes = sum(p.numel() * 4 for p in model.parameters())
            keep = args.checkpoint_limit if args.checkpoint_every else 0
            check_output_dir(output_dir, weight_bytes * (3 * keep + 2) + 50 * 2**20)
        plan = plan_steps(args, len(data.train), accelerator.num_processes)
    if plan.batch_size != args.batch_size:
        accelerator.print(f"--batch-size {args.batch_size} exceeds the training set; using {plan.batch_size}.")
    apply_lr_scaling(args, accelerator, plan)
    bf16_on_cpu = device.type == "cpu" and accelerator.mixed_precision == "bf16"
    # the convolutions kept off bf16's wrong gradients on one-pixel maps (hardware.py), for the record
    args.resolved["fp32_on_one_pixel_maps"] = guard_bf16_cpu_convolutions(model) if bf16_on_cpu else 0
    model = model.to(memory_format=torch.channels_last)
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    optimizer = build_optimizer(args, model, device)
    scheduler = build_scheduler(args, optimizer, model, plan.steps_per_epoch * args.epochs, plan.steps_per_epoch)
    val_loader = eval_loader(data.validation, args.eval_batch_size)
    test_loader = eval_loader(data.test, args.eval_batch_size) if data.test else None
    # the scheduler is stepped once per optimizer step by the loop and checkpointed by name, so not prepared
    model, optimizer, val_loader = accelerator.prepare(model, optimizer, val_loader)
    if test_loader is not None:
        test_loader = accelerator.prepare(test_loader)
    # a copy of the weights on the same device, the same on every process (DDP keeps the weights in step)
    ema = ModelEmaV3(accelerator.unwrap_model(model, keep_torch_compile=False), decay=args.model_ema_decay,
                     use_warmup=True) if args.model_ema else None
    if ema is not None:
        accelerator.print(f"Model EMA: a moving average of the weights (decay warming up to {args.model_ema_decay:g}) "
                          f"is validated, tested and exported in place of the weights.")
    return Training(
        TrainState(model, optimizer, scheduler, ema=ema),
        Recipe.from_args(args, data.num_classes, mean, std, data.store_size), plan, val_loader, test_loader,
        torch.tensor(mean, device=device), torch.tensor(std, device=device), weights, model_args)


# -- the run

def run(args) -> dict:
    started = time.perf_counter()
    output_dir = Path(args.output_dir)
    accelerator, weights, data = setup(args)
    training = build_training(args, accelerator, weights, data)
    state, plan = training.state, training.plan
    resume_plan = {"seed": args.seed, "max_train_samples": args.max_train_samples, "train_images": len(data.train),
                   "batch_size": plan.batch_size, "gradient_accumulation_steps": args.gradient_accumulation_steps}
    if args.resume:
        with together(accelerator):
            checkpoint = find_checkpoint(output_dir, args.resume)
        load_checkpoint(accelerator, state, checkpoint, args.lr, resume_plan)
        accelerator.print(f"Resumed from {checkpoint} (epoch {state.progress.epoch + 1}, "
                          f"batch {state.progress.batches_done}).")
        if state.progress.history:  # the clock continues from the last finished epoch (time lost to a kill is not counted)
            started -= state.progress.history[-1]["elapsed_seconds"]

    run_config = {k: v for k, v in vars(args).items() if v is None or isinstance(v, (int, float, str, bool))}
    # accelerate passes the project to every tracker; the run's name goes by each tracker's own keyword
    run_names = {"wandb": {"name": args.run_name}, "trackio": {"name": args.run_name},
                 "mlflow": {"run_name": args.run_name}, "clearml": {"task_name": args.run_name}}
    accelerator.init_trackers(args.project_name, config=run_config, init_kwargs=run_names)
    accelerator.print(
        f"{args.model} ({training.weights.describe()}) on {args.dataset}: {len(data.train)} train / "
        f"{len(data.validation)} val{f' / {len(data.test)} test' if data.test else ''} images, {data.num_classes} "
        f"classes, {args.img_size}px "
        f"{f'(trained from {args.min_img_size}px up) ' if args.min_img_size < args.img_size else ''}"
        f"({'streamed' if data.streamed else 'cached'} at {data.store_size}px), {accelerator.num_processes} "
        f"process(es) on {accelerator.device}, precision {accelerator.mixed_precision}, "
        f"{args.epochs} epochs x {plan.steps_per_epoch} steps"
    )

    if args.max_train_samples and not args.max_eval_samples and len(data.validation) > len(data.train):
        accelerator.print(f"Every epoch validates on all {len(data.validation)} validation images; a quick run "
                          f"with --max-eval-samples {min(len(data.train), 1000)} validates on fewer.")

    def checkpoint() -> None:
        save_checkpoint(accelerator, state, output_dir, args.checkpoint_limit, resume_plan)

    first_epoch, epochs_started = state.progress.epoch, time.perf_counter()
    for epoch in range(first_epoch, args.epochs):
        img_size = train_one_epoch(epoch, state, data.train, training.recipe, plan, accelerator, args, checkpoint)
        seconds = state.progress.running["seconds"]
        val = validate_split(state.eval_model, training.val_loader, accelerator, training.mean, training.std,
                             data.num_classes)
        record = epoch_record(state, epoch, img_size, plan.batches_per_epoch, val, started)
        accelerator.log({f"epoch/{k}": v for k, v in record.items()}, step=state.progress.optimizer_steps)
        # under progressive resizing, validation at the final size trails while the training size is small
        sizes = f" (trained at {img_size}px, validated at {args.img_size}px)" if img_size != args.img_size else ""
        accelerator.print(
            f"epoch {epoch + 1}/{args.epochs}{sizes}: train loss {record['train_loss']:.4f} acc "
            f"{100 * record['train_accuracy']:.2f}% | val loss {val['loss']:.4f} acc {100 * val['accuracy']:.2f}% "
            f"f1 {val['f1']:.4f} | {seconds:.0f}s{time_left(epochs_started, epoch + 1 - first_epoch, args.epochs - epoch - 1)}")
        if args.checkpoint_every == "epoch":
            checkpoint()

    split, final, final_probs = final_evaluation(args, accelerator, training, data)
    export_run(args, accelerator, training, data, split, final, final_probs)
    accelerator.end_training()  # last: it ends the trackers and destroys the process group
    return {"history": state.progress.history, split: final}


def time_left(started: float, epochs_done: int, epochs_left: int) -> str:
    """", about 12 min to go" at the pace of the epochs so far (evaluation included), when any are left."""
    if not epochs_left:
        return ""
    minutes = (time.perf_counter() - started) / epochs_done * epochs_left / 60
    return f", about {minutes:.0f} min to go" if minutes >= 1 else f", about {60 * minutes:.0f} s to go"


def final_evaluation(args, accelerator: Accelerator, training: Training,
                     data: RunData) -> tuple[str, dict, torch.Tensor]:
    """The test split (validation without one), touched here and only here, with the test-time augmentation
    the exported model declares, i.e. as the app will predict. -> (split name, metrics, probabilities)"""
    split = "test" if training.test_loader is not None else "validation"
    loader = training.test_loader or training.val_loader

    def accuracy(model):
        return validate_split(model, loader, accelerator, training.mean, training.std, data.num_classes, args.tta,
                              desc=f"{split}, {args.weights_dtype} weights")["accuracy"]

    def logits(split_loader, name):
        return collect_view_logits(training.state.eval_model, split_loader, accelerator, training.mean, training.std,
                                   args.tta, desc=f"{name}{f' (tta {args.tta})' if args.tta != 'none' else ''}")

    val_logits, val_labels = logits(training.val_loader, "validation")
    final_logits, final_labels = (val_logits, val_labels) if split == "validation" else logits(loader, split)
    final, probs = split_metrics(final_logits, final_labels, data.num_classes, args.tta)
    # the temperature is fitted on validation, so without a test split its before/after figures are validation's
    final["calibration"] = calibrate(val_logits, val_labels, final_logits, final_labels)
    single_view = (f" ({100 * final['single_view_accuracy']:.2f}% without --tta {args.tta})"
                   if args.tta != "none" else "")
    accelerator.print(f"{split}: accuracy {100 * final['accuracy']:.2f}%{single_view}, f1 {final['f1']:.4f}, "
                      f"mcc {final['mcc']:.4f}, roc_auc {final['roc_auc']}")
    cal = final["calibration"]
    accelerator.print(f"calibration: temperature {cal['temperature']:.3f} (fitted on validation); {split} ECE "
                      f"{100 * cal['before']['ece']:.2f}% -> {100 * cal['after']['ece']:.2f}%, NLL "
                      f"{cal['before']['nll']:.4f} -> {cal['after']['nll']:.4f}")
    if args.weights_dtype != "float32":
        # the exported weights are rounded to a 16-bit type: measure what that costs on the same split
        rounded = copy.deepcopy(exported_model(accelerator, training)).to(getattr(torch, args.weights_dtype)).float()
        rounded_accuracy = accuracy(rounded)
        final["exported_weights"] = {"dtype": args.weights_dtype, "accuracy": rounded_accuracy}
        accelerator.print(f"{split} accuracy with {args.weights_dtype} weights: {100 * rounded_accuracy:.2f}% "
                          f"({100 * (rounded_accuracy - final['accuracy']):+.2f} points)")
    return split, final, probs


def exported_model(accelerator: Accelerator, training: Training) -> torch.nn.Module:
    # without the torch.compile wrapper: its parameter names carry an `_orig_mod.` prefix timm would not load
    return accelerator.unwrap_model(training.state.eval_model, keep_torch_compile=False)


def export_run(args, accelerator: Accelerator, training: Training, data: RunData, split: str, final: dict,
               final_probs: torch.Tensor) -> None:
    """The model folder, written by the main process only."""
    skipped = dict(data.skipped, train=data.skipped["train"] + len(training.state.progress.skipped_train))
    with together(accelerator, patience_s=args.ddp_timeout):
        if not accelerator.is_main_process:
            return
        final_data, final_dataset = ((data.test, data.splits.test) if split == "test"
                                     else (data.validation, data.splits.validation))

        def add_samples(staging: Path) -> None:
            if args.samples_per_class or args.failure_samples:
                count = write_samples(staging / "samples", final_dataset, data.splits.image_column, final_data.rows,
                                      final_data.labels, final_probs, data.splits.label_names,
                                      args.samples_per_class, args.failure_samples, args.seed)
                accelerator.print(f"Wrote {count} {split} images to samples/ for the app's galleries.")

        progress = training.state.progress
        metrics = {"label_names": data.splits.label_names, "final_split": split, "final": final,
                   "history": progress.history, "skipped_images": skipped, "skipped_steps": progress.skipped_steps}
        facts = RunFacts(training.weights, training.model_args, accelerator.mixed_precision,
                         "stream" if data.streamed else "memory", describe_hardware(accelerator.device),
                         accelerator.num_processes, accelerator.distributed_type.value,
                         accelerator.num_processes // local_process_count(accelerator), progress.compute_dtype,
                         peak_device_memory_mb(accelerator.device),
                         local_copy_note(args.dataset, split, final_dataset, data.splits.image_column))
        write_model_folder(args, exported_model(accelerator, training), metrics, facts, add_samples)
        accelerator.print(f"Model folder: {Path(args.output_dir).resolve()}")
        # on this machine only: without --host the app listens on every interface (right in a container or Space)
        accelerator.print(f"Serve it: python app.py --model {shlex.quote(args.output_dir)} --host 127.0.0.1")


def peak_device_memory_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def stop(error: Exception, args) -> None:
    """Print a run-ending error once and exit with 2. An error every process has (classifier.distributed) is
    printed by the main process, and all processes leave together once it is out."""
    message = str(error)
    if isinstance(error, OSError):  # disk full, permissions... while writing: the model folder was not replaced
        message = f"writing the output failed ({error}); {args.output_dir} holds no new model."
    state = PartialState()
    if state.is_main_process or not on_every_process(error):
        print(f"error: {message}", file=sys.stderr, flush=True)
    if on_every_process(error) and state.num_processes > 1:
        try:
            state.wait_for_everyone()
        except RuntimeError:  # another process is already gone
            pass
        # leave at once, all together: the launcher stops the remaining processes as soon as one has exited,
        # and an interpreter's shutdown would give it time to catch the others before they exit with 2
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(2)
    sys.exit(2)


def configure_logging() -> None:
    """Our messages through a handler on the `classifier` logger only. huggingface_hub and datasets print their
    warnings through handlers of their own; a handler on the root logger as well printed each of them twice."""
    ours = logging.getLogger("classifier")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    for noisy in ("timm", "httpx", "huggingface_hub", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv=None) -> None:
    args = parse_args(argv)
    configure_logging()
    try:
        run(args)
    except RUN_ENDING as e:
        stop(e, args)
    except RuntimeError as e:
        if "timed out" not in str(e).lower():  # gloo's words for a collective that ran out of time; else a bug
            raise
        stop(TrainingError(f"A collective timed out after --collective-timeout {args.collective_timeout:g} s: another "
                           f"process is stuck or gone. Checkpoints in {checkpoint_dir(args.output_dir)} (if any) "
                           f"hold the last saved state."), args)
    if args.push_to_hub and PartialState().is_main_process:
        from .hub import HubError, push_folder

        try:
            push_folder(args.output_dir, args.push_to_hub, private=args.hub_private, revision=args.hub_revision)
        except HubError as e:
            print(f"error: {e} The model folder {args.output_dir} is intact.", file=sys.stderr)
            sys.exit(3)
