"""The training run, read top to bottom as timm's train.py reads: set-up (`setup`: the accelerator, the weights
and their recipe, the data, the model, the optimizer), the epochs (engine.train_one_epoch,
engine.validate_split), the final evaluation (`final_evaluation`) and the model folder (`export_run`,
classifier.export).

The options are parsed once (options.Options) and never changed: set-up resolves them (the recipe the weights
call for, the lr the global batch calls for) into new ones and makes, once, the run's record (record.RunRecord)
of what it trains with and what it decided; the rest of the run reads that record. One `Accelerator` owns
devices, precision, distribution, checkpoints and trackers; what N processes need beyond that (per-process seeds,
failures that end every process, the process-group timeout, memory) is in classifier.distributed; what training
changes is one object, state.TrainState.
"""
from __future__ import annotations

import copy
import dataclasses
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

from .checkpoint import checkpoint_dir, find_checkpoint, load_checkpoint, save_checkpoint, saved_checkpoints
from .data import (DataError, Splits, StreamedSplit, TensorSplit, check_local_path, decode_split, load_splits,
                   local_copy_note, memory_budget, streams, typical_size)
from .distributed import (RUN_ENDING, end_run, from_every_process, local_process_count, process_group_kwargs,
                          seed_processes, together)
from .calibration import calibrate, temperature_note
from .engine import (Plan, Recipe, collect_view_logits, epoch_record, eval_loader, split_metrics, train_one_epoch,
                     validate_split)
from .export import check_output_dir, write_model_folder
from .hardware import (configure_backends, describe_hardware, guard_bf16_cpu_convolutions, resolve_compile,
                       resolve_precision)
from .hub import check_push_access
from .logs import configure_logging
from .model import StartingWeights, check_model_name, create_model, resolve_weights
from .options import Options, apply_recipe, parse_args, scaled_lr
from .presets import recipe_for
from .record import RunRecord
from .report import no_better_than_guessing
from .samples import write_samples
from .state import TrainState

log = logging.getLogger("classifier")
LOG_DIR = "logs"


# -- set-up

def create_accelerator(options: Options) -> tuple[Accelerator, str]:
    """Precision and compilation: our flag, else accelerate's setting, else auto (classifier.hardware).
    -> (the accelerator, where its precision came from)"""
    report_to = None if options.report_to == "none" else options.report_to.split(",")
    # the process group first (accelerate's own device choice, with our timeout; ACCELERATE_USE_CPU read as
    # AcceleratorState reads it): `auto` depends on the device
    device_type = PartialState(parse_flag_from_env("ACCELERATE_USE_CPU"),
                               **process_group_kwargs(options.collective_timeout).to_kwargs()).device.type
    precision, source = resolve_precision(options.mixed_precision, device_type)
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=options.gradient_accumulation_steps,
        log_with=report_to, project_dir=str(Path(options.output_dir) / LOG_DIR),
        dynamo_backend=resolve_compile(options.compile),  # accelerate wraps the model in torch.compile
        kwargs_handlers=[process_group_kwargs(options.collective_timeout)],
    )
    return accelerator, source


@dataclass
class RunData:
    splits: Splits
    train: TensorSplit | StreamedSplit
    validation: TensorSplit
    test: TensorSplit | None
    store_size: int  # the training images' cached size
    streamed: bool
    skipped: dict  # undecodable images skipped (--skip-bad-images) while decoding, per split
    budget: dict  # why `--data-path auto` chose as it did
    sources: list | None = None  # by rank: where each split's images came from

    @property
    def num_classes(self) -> int:
        return len(self.splits.label_names)


def load_data(options: Options, accelerator: Accelerator) -> RunData:
    accelerator.print(f"Loading {options.dataset} ...", flush=True)
    splits = load_splits(options.dataset, options.image_column, options.label_column, options.val_fraction,
                         options.seed, options.max_train_samples, options.max_eval_samples)
    num_classes = len(splits.label_names)
    img_size = options.img_size
    typical = typical_size(splits.train, splits.image_column) or img_size
    # images larger than the input are kept larger (up to 1.5x) for random-resized crops to cut into
    store_size = min(typical, round(img_size * 1.5)) if options.crop_scale < 1 else min(img_size, typical)
    decode = dict(image_column=splits.image_column, label_column=splits.label_column, num_classes=num_classes,
                  skip_bad_images=options.skip_bad_images, use_cache=not options.no_data_cache,
                  workers=options.data_workers, progress=accelerator.is_local_main_process)
    train_bytes = len(splits.train) * 3 * store_size ** 2
    local_processes = local_process_count(accelerator)
    streamed = streams(options.data_path, train_bytes, accelerator.device, local_processes)
    # each of this machine's processes may hold the set, so they share the budget
    budget = {"decoded_train_bytes": train_bytes, "local_processes": local_processes,
              "bytes_per_process": memory_budget(accelerator.device, local_processes)}
    if streamed:
        train = StreamedSplit(splits.train, splits.image_column, splits.label_column, num_classes, store_size)
    else:
        train = decode_split(splits.train, size=store_size, desc="decode train", **decode)
    validation = decode_split(splits.validation, size=img_size, desc="decode validation", **decode)
    test = decode_split(splits.test, size=img_size, desc="decode test", **decode) if splits.test else None
    skipped = {"train": 0 if streamed else train.skipped, "validation": validation.skipped,
               "test": test.skipped if test else 0}
    return RunData(splits, train, validation, test, store_size, streamed, skipped, budget)


def load_data_everywhere(options: Options, accelerator: Accelerator) -> RunData:
    """The main process of each machine loads and decodes first, filling the cache; the others then read it."""
    data = None
    with together(accelerator, patience_s=options.ddp_timeout):
        if accelerator.is_local_main_process:
            data = load_data(options, accelerator)
    with together(accelerator):
        if data is None:
            data = load_data(options, accelerator)
    if any(data.skipped.values()):
        accelerator.print(f"Skipped undecodable images: {data.skipped}")
    # where each process's images came from: the main process of a machine decodes, the others read its cache
    sources = {name: "streamed" if name == "train" and data.streamed else split.source
               for name, split in (("train", data.train), ("validation", data.validation), ("test", data.test))
               if split is not None}
    data.sources = from_every_process(sources)
    if not data.streamed:  # each step indexes its batch out of this tensor, where the model is
        train, device = data.train, accelerator.device
        data.train = TensorSplit(train.images.to(device), train.labels.to(device), train.rows)
    return data


def starting_weights(options: Options, accelerator: Accelerator) -> StartingWeights:
    """Where the weights come from: the main process of each machine fetches them into its Hub cache first, the
    others then find them there (one download per machine)."""
    weights = None
    with together(accelerator, patience_s=options.ddp_timeout):
        if accelerator.is_local_main_process:
            weights = resolve_weights(options.model, options.pretrained, options.pretrained_file)
    with together(accelerator):
        if weights is None:
            weights = resolve_weights(options.model, options.pretrained, options.pretrained_file, cached_only=True)
    return weights


def choose_recipe(options: Options, accelerator: Accelerator, weights: StartingWeights) -> tuple[Options, dict]:
    """The recipe that fits the weights fills the options not given; the run says which and why.
    -> (the options, the recipe's record)"""
    options, kind = apply_recipe(options, weights.pretrained)
    why = (f"--recipe {kind}" if options.recipe != "auto" else
           f"weights {weights.describe()} ({weights.why})" if weights.pretrained else f"random weights ({weights.why})")
    head = f", the head alone for {options.freeze_epochs} epoch(s)" if options.freeze_epochs else ""
    decay = f", layer decay {options.layer_decay:g}" if options.layer_decay else ""
    given = f"; given on the command line: {', '.join(options.recipe_given)}" if options.recipe_given else ""
    other = "scratch" if kind == "finetune" else "finetune"
    accelerator.print(f"Recipe: {'fine-tuning' if kind == 'finetune' else 'from scratch'}, for {why}: "
                      f"{options.optimizer} lr {options.lr:g}{decay}{head}, {options.epochs} epochs, "
                      f"{options.scheduler}{given} (--recipe {other} for the other one)")
    return options, {"name": kind, "why": why, "given": options.recipe_given,
                     "values": {key: getattr(options, key) for key in recipe_for(options.dataset, kind)}}


def plan_steps(options: Options, train_size: int, world: int) -> Plan:
    batch_size = min(options.batch_size, train_size // world)
    if batch_size < 1:
        raise DataError(f"{train_size} training images cannot be shared by {world} processes.")
    accumulation = options.gradient_accumulation_steps
    # whole accumulation cycles only, so every epoch ends on an optimizer step (and checkpoints land on one)
    batches_per_epoch = train_size // (batch_size * world) // accumulation * accumulation
    if batches_per_epoch == 0:
        raise DataError(f"{train_size} training images do not fill one step of {batch_size} x {world} "
                        f"process(es) x {accumulation} accumulation steps; lower --gradient-accumulation-steps.")
    return Plan(batch_size, batches_per_epoch, batches_per_epoch // accumulation, options.epochs, options.seed,
                options.img_size, options.min_img_size, options.resize_ramp, options.checkpoint_every)


def model_and_plan(options: Options, accelerator: Accelerator, weights: StartingWeights,
                   data: RunData) -> tuple[torch.nn.Module, dict, Plan]:
    """The model, and the plan of steps; the output folder is checked for room first. -> (model, its extra
    timm.create_model arguments, plan)"""
    with together(accelerator):
        model_args = dict(options.model_arg, **({"drop_rate": options.drop_rate} if options.drop_rate else {}))
        model = create_model(options.model, data.num_classes, weights, **model_args)
        if accelerator.is_main_process:
            # weights + optimizer state per kept checkpoint, plus the exported weights, with room to spare
            weight_bytes = sum(p.numel() * 4 for p in model.parameters())
            keep = options.checkpoint_limit if options.checkpoint_every else 0
            check_output_dir(Path(options.output_dir), weight_bytes * (3 * keep + 2) + 50 * 2**20)
        plan = plan_steps(options, len(data.train), accelerator.num_processes)
    if plan.batch_size != options.batch_size:
        accelerator.print(f"--batch-size {options.batch_size} exceeds the training set; using {plan.batch_size}.")
    return model, model_args, plan


def scale_lr(options: Options, accelerator: Accelerator, plan: Plan) -> tuple[Options, dict]:
    """--lr-scale: the recipe's lr suits its own batch size on one process; N processes and accumulation make
    the global batch larger, and the lr follows it (timm's rule), once, for the run and its record.
    -> (the options with that lr, the scaling's record)"""
    reference = recipe_for(options.dataset)["batch_size"]
    accumulation = options.gradient_accumulation_steps
    global_batch = plan.batch_size * accelerator.num_processes * accumulation
    rule = "none" if options.lr_scale == "auto" and "lr" in options.recipe_given else options.lr_scale
    lr, rule = scaled_lr(options.lr, rule, options.optimizer, global_batch, reference)
    if lr != options.lr:
        accelerator.print(f"lr {options.lr:g} -> {lr:.4g}: {rule} scaling for a global batch of {global_batch} "
                          f"({accelerator.num_processes} process(es) x {plan.batch_size} x {accumulation} "
                          f"accumulation) against the recipe's {reference} (--lr-scale none keeps {options.lr:g})")
    return dataclasses.replace(options, lr=lr), {"base": options.lr, "applied": lr, "rule": rule,
                                                 "global_batch": global_batch, "reference_batch": reference}


def setup(options: Options) -> tuple[Accelerator, RunRecord, RunData, Training]:
    """Everything before the first step, in the order it is decided: the accelerator, the starting weights and
    the recipe they call for, per-process seeds, the data, the model and the plan of steps, the lr the global
    batch calls for, the optimizer. -> (accelerator, the run's record, data, training)"""
    # mistakes in the command line are the first thing said, before weights are fetched or data loaded
    check_local_path(options.dataset)
    check_model_name(options.model)
    accelerator, precision_from = create_accelerator(options)
    backends = configure_backends(accelerator.device.type, options.deterministic)
    if options.push_to_hub:  # a token or repo that cannot be written to is found now, not after hours of training
        with together(accelerator):
            if accelerator.is_main_process:
                check_push_access(options.push_to_hub, private=options.hub_private)
    weights = starting_weights(options, accelerator)
    options, recipe = choose_recipe(options, accelerator, weights)
    seed_processes(options.seed)
    data = load_data_everywhere(options, accelerator)
    model, model_args, plan = model_and_plan(options, accelerator, weights, data)
    options, lr = scale_lr(options, accelerator, plan)
    # the convolutions kept off bf16's wrong gradients on one-pixel maps (hardware.py)
    bf16_on_cpu = accelerator.device.type == "cpu" and accelerator.mixed_precision == "bf16"
    guarded = guard_bf16_cpu_convolutions(model) if bf16_on_cpu else 0
    training = build_training(options, accelerator, model, plan, data)
    record = RunRecord(
        options=options, weights=weights, model_args=model_args, recipe=recipe, lr=lr,
        mixed_precision=accelerator.mixed_precision, mixed_precision_from=precision_from,
        dynamo_backend=accelerator.state.dynamo_plugin.backend.value.lower(), backends=backends,
        data_path="stream" if data.streamed else "memory", data_path_budget=data.budget, data_sources=data.sources,
        fp32_on_one_pixel_maps=guarded, hardware=describe_hardware(accelerator.device),
        num_processes=accelerator.num_processes, distributed_type=accelerator.distributed_type.value,
        num_machines=accelerator.num_processes // local_process_count(accelerator))
    return accelerator, record, data, training


# -- model and optimizer

def build_optimizer(options: Options, model, device: torch.device):
    """timm's optimizer factory: no weight decay on norms, biases and what the model's no_weight_decay() names
    (a ViT's position embedding), and with --layer-decay a group per layer, its lr scaled (`lr_scale`)."""
    # a group per layer is also what lets the head train alone (--freeze-epochs) without layer decay
    layer_decay = options.layer_decay or (1.0 if options.freeze_epochs else None)
    # one fused kernel over all parameters instead of a loop per tensor: on a 2-core CPU resnet18's AdamW step
    # drops from 32 to 5.5 ms (SGD 8.9 to 3.6), about 8 % of a 32 px training step; other devices keep the default
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    momentum = {"momentum": options.momentum} if options.optimizer == "sgd" else {}  # timm's sgd is Nesterov's
    return create_optimizer_v2(model, opt=options.optimizer, lr=options.lr, weight_decay=options.weight_decay,
                               layer_decay=layer_decay, **momentum, **fused)


def build_scheduler(options: Options, optimizer, model, total_steps: int, steps_per_epoch: int):
    """Linear warm-up to the peak lr, then `linear` or `cosine` decay towards 0; each
    parameter group at its layer's share of it (`lr_scale`), and all but the head at 0 for --freeze-epochs."""
    warmup = min(int(options.warmup_epochs * steps_per_epoch), total_steps - 1)
    frozen_steps = options.freeze_epochs * steps_per_epoch

    def factor(step):
        if step < warmup:
            return 0.1 + 0.9 * step / warmup  # start at a tenth of the peak, like OneCycle's div_factor=10
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        if options.scheduler == "linear":
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


def build_training(options: Options, accelerator: Accelerator, model: torch.nn.Module, plan: Plan,
                   data: RunData) -> Training:
    device = accelerator.device
    model = model.to(memory_format=torch.channels_last)
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    optimizer = build_optimizer(options, model, device)
    scheduler = build_scheduler(options, optimizer, model, plan.steps_per_epoch * plan.epochs, plan.steps_per_epoch)
    val_loader = eval_loader(data.validation, options.eval_batch_size)
    test_loader = eval_loader(data.test, options.eval_batch_size) if data.test else None
    # the scheduler is stepped once per optimizer step by the loop and checkpointed by name, so not prepared
    model, optimizer, val_loader = accelerator.prepare(model, optimizer, val_loader)
    if test_loader is not None:
        test_loader = accelerator.prepare(test_loader)
    # a copy of the weights on the same device, the same on every process (DDP keeps the weights in step)
    ema = ModelEmaV3(accelerator.unwrap_model(model, keep_torch_compile=False), decay=options.model_ema_decay,
                     use_warmup=True) if options.model_ema else None
    if ema is not None:
        accelerator.print(f"Model EMA: a moving average of the weights (decay warming up to "
                          f"{options.model_ema_decay:g}) is validated, tested and exported in place of the weights.")
    return Training(
        TrainState(model, optimizer, scheduler, ema=ema),
        Recipe.from_args(options, data.num_classes, mean, std, data.store_size), plan, val_loader, test_loader,
        torch.tensor(mean, device=device), torch.tensor(std, device=device))


# -- the run

def run(options: Options) -> dict:
    started = time.perf_counter()
    accelerator, record, data, training = setup(options)
    options, state, plan = record.options, training.state, training.plan
    output_dir = Path(options.output_dir)
    resume_plan = {"seed": options.seed, "max_train_samples": options.max_train_samples,
                   "train_images": len(data.train), "batch_size": plan.batch_size,
                   "gradient_accumulation_steps": options.gradient_accumulation_steps}
    if options.resume:
        with together(accelerator):
            checkpoint = find_checkpoint(output_dir, options.resume)
        load_checkpoint(accelerator, state, checkpoint, options.lr, resume_plan)
        accelerator.print(f"Resumed from {checkpoint} (epoch {state.progress.epoch + 1}, "
                          f"batch {state.progress.batches_done}).")
        if state.progress.history:  # the clock continues from the last finished epoch (time lost to a kill is not counted)
            started -= state.progress.history[-1]["elapsed_seconds"]

    run_config = {k: v for k, v in dataclasses.asdict(options).items()
                  if v is None or isinstance(v, (int, float, str, bool))}
    # accelerate passes the project to every tracker; the run's name goes by each tracker's own keyword
    run_names = {"wandb": {"name": options.run_name}, "trackio": {"name": options.run_name},
                 "mlflow": {"run_name": options.run_name}, "clearml": {"task_name": options.run_name}}
    accelerator.init_trackers(options.project_name, config=run_config, init_kwargs=run_names)
    accelerator.print(
        f"{options.model} ({record.weights.describe()}) on {options.dataset}: {len(data.train)} train / "
        f"{len(data.validation)} val{f' / {len(data.test)} test' if data.test else ''} images, {data.num_classes} "
        f"classes, {options.img_size}px "
        f"{f'(trained from {options.min_img_size}px up) ' if options.min_img_size < options.img_size else ''}"
        f"({'streamed' if data.streamed else 'cached'} at {data.store_size}px), {accelerator.num_processes} "
        f"process(es) on {accelerator.device}, precision {accelerator.mixed_precision}, "
        f"{options.epochs} epochs x {plan.steps_per_epoch} steps"
    )

    if options.max_train_samples and not options.max_eval_samples and len(data.validation) > len(data.train):
        accelerator.print(f"Every epoch validates on all {len(data.validation)} validation images; a quick run "
                          f"with --max-eval-samples {min(len(data.train), 1000)} validates on fewer.")

    def checkpoint() -> None:
        save_checkpoint(accelerator, state, output_dir, options.checkpoint_limit, resume_plan)

    first_epoch, epochs_started = state.progress.epoch, time.perf_counter()
    for epoch in range(first_epoch, options.epochs):
        img_size = train_one_epoch(epoch, state, data.train, training.recipe, plan, accelerator, checkpoint,
                                   clip_grad=options.clip_grad, skip_bad_images=options.skip_bad_images,
                                   workers=options.data_workers, checkpoints=checkpoint_dir(output_dir))
        seconds = state.progress.running["seconds"]
        val = validate_split(state.eval_model, training.val_loader, accelerator, training.mean, training.std,
                             data.num_classes)
        epoch_line = epoch_record(state, epoch, img_size, plan.batches_per_epoch, val, started)
        accelerator.log({f"epoch/{k}": v for k, v in epoch_line.items()}, step=state.progress.optimizer_steps)
        # under progressive resizing, validation at the final size trails while the training size is small
        sizes = f" (trained at {img_size}px, validated at {options.img_size}px)" if img_size != options.img_size else ""
        accelerator.print(
            f"epoch {epoch + 1}/{options.epochs}{sizes}: train loss {epoch_line['train_loss']:.4f} acc "
            f"{100 * epoch_line['train_accuracy']:.2f}% | val loss {val['loss']:.4f} acc {100 * val['accuracy']:.2f}% "
            f"f1 {val['f1']:.4f} | {seconds:.0f}s"
            f"{time_left(epochs_started, epoch + 1 - first_epoch, options.epochs - epoch - 1)}")
        if options.checkpoint_every == "epoch":
            checkpoint()

    split, final, final_probs = final_evaluation(options, accelerator, training, data)
    export_run(record, accelerator, training, data, split, final, final_probs)
    accelerator.end_training()  # last: it ends the trackers and destroys the process group
    return {"history": state.progress.history, split: final}


def time_left(started: float, epochs_done: int, epochs_left: int) -> str:
    """", about 12 min to go" at the pace of the epochs so far (evaluation included), when any are left."""
    if not epochs_left:
        return ""
    minutes = (time.perf_counter() - started) / epochs_done * epochs_left / 60
    return f", about {minutes:.0f} min to go" if minutes >= 1 else f", about {60 * minutes:.0f} s to go"


def final_evaluation(options: Options, accelerator: Accelerator, training: Training,
                     data: RunData) -> tuple[str, dict, torch.Tensor]:
    """The test split (validation without one), touched here and only here, with the test-time augmentation
    the exported model declares, i.e. as the app will predict. -> (split name, metrics, probabilities)"""
    split = "test" if training.test_loader is not None else "validation"
    loader = training.test_loader or training.val_loader

    def accuracy(model):
        return validate_split(model, loader, accelerator, training.mean, training.std, data.num_classes, options.tta,
                              desc=f"{split}, {options.weights_dtype} weights")["accuracy"]

    def logits(split_loader, name):
        views = f" (tta {options.tta})" if options.tta != "none" else ""
        return collect_view_logits(training.state.eval_model, split_loader, accelerator, training.mean, training.std,
                                   options.tta, desc=f"{name}{views}")

    val_logits, val_labels = logits(training.val_loader, "validation")
    final_logits, final_labels = (val_logits, val_labels) if split == "validation" else logits(loader, split)
    final, probs = split_metrics(final_logits, final_labels, data.num_classes, options.tta)
    # the temperature is fitted on validation, so without a test split its before/after figures are validation's
    final["calibration"] = calibrate(val_logits, val_labels, final_logits, final_labels)
    single_view = (f" ({100 * final['single_view_accuracy']:.2f}% without --tta {options.tta})"
                   if options.tta != "none" else "")
    roc_auc = "n/a" if final["roc_auc"] is None else f"{final['roc_auc']:.4f}"
    accelerator.print(f"{split}: accuracy {100 * final['accuracy']:.2f}%{single_view}, f1 {final['f1']:.4f}, "
                      f"mcc {final['mcc']:.4f}, roc_auc {roc_auc}")
    cal = final["calibration"]
    note = temperature_note(cal["temperature"])
    fitted = f"fitted on validation; {note}" if note else "fitted on validation"
    accelerator.print(f"calibration: temperature {cal['temperature']:.3f} ({fitted}); {split} ECE "
                      f"{100 * cal['before']['ece']:.2f}% -> {100 * cal['after']['ece']:.2f}%, NLL "
                      f"{cal['before']['nll']:.4f} -> {cal['after']['nll']:.4f}")
    if guessing := no_better_than_guessing(final, split):
        log.warning(guessing)
    if options.weights_dtype != "float32":
        # the exported weights are rounded to a 16-bit type: measure what that costs on the same split
        rounded = copy.deepcopy(exported_model(accelerator, training)).to(getattr(torch, options.weights_dtype)).float()
        rounded_accuracy = accuracy(rounded)
        final["exported_weights"] = {"dtype": options.weights_dtype, "accuracy": rounded_accuracy}
        accelerator.print(f"{split} accuracy with {options.weights_dtype} weights: {100 * rounded_accuracy:.2f}% "
                          f"({100 * (rounded_accuracy - final['accuracy']):+.2f} points)")
    return split, final, probs


def exported_model(accelerator: Accelerator, training: Training) -> torch.nn.Module:
    # without the torch.compile wrapper: its parameter names carry an `_orig_mod.` prefix timm would not load
    return accelerator.unwrap_model(training.state.eval_model, keep_torch_compile=False)


def export_run(record: RunRecord, accelerator: Accelerator, training: Training, data: RunData, split: str,
               final: dict, final_probs: torch.Tensor) -> None:
    """The model folder, written by the main process only, with the record of the run and what it measured."""
    options, progress = record.options, training.state.progress
    skipped = dict(data.skipped, train=data.skipped["train"] + len(progress.skipped_train))
    with together(accelerator, patience_s=options.ddp_timeout):
        if not accelerator.is_main_process:
            return
        final_data, final_dataset = ((data.test, data.splits.test) if split == "test"
                                     else (data.validation, data.splits.validation))

        def add_samples(staging: Path) -> None:
            if options.samples_per_class or options.failure_samples:
                count = write_samples(staging / "samples", final_dataset, data.splits.image_column, final_data.rows,
                                      final_data.labels, final_probs, data.splits.label_names,
                                      options.samples_per_class, options.failure_samples, options.seed)
                accelerator.print(f"Wrote {count} {split} images to samples/ for the app's galleries.")

        metrics = {"label_names": data.splits.label_names, "final_split": split, "final": final,
                   "history": progress.history, "skipped_images": skipped, "skipped_steps": progress.skipped_steps}
        measured = dataclasses.replace(record, compute_dtype=progress.compute_dtype,
                                       peak_device_memory_mb=peak_device_memory_mb(accelerator.device))
        data_note = local_copy_note(options.dataset, split, final_dataset, data.splits.image_column)
        write_model_folder(measured, exported_model(accelerator, training), metrics, data_note, add_samples)
        accelerator.print(f"Model folder: {Path(options.output_dir).resolve()}")
        # on this machine only: without --host the app listens on every interface (right in a container or Space)
        accelerator.print(f"Serve it: python app.py --model {shlex.quote(options.output_dir)} --host 127.0.0.1")


def peak_device_memory_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def one_line(error: Exception, output_dir: str) -> str:
    """A run-ending error as the line that reports it."""
    if isinstance(error, OSError):  # disk full, permissions... while writing: the model folder was not replaced
        return f"writing the output failed ({error}); {output_dir} holds no new model."
    return str(error)


def main(argv=None, options: Options | None = None) -> None:
    """A run of `argv`'s options, or of `options` already parsed (train_accelerate.py parses them before importing
    this module, so that --help and a usage error do not wait for torch)."""
    options = options or parse_args(argv)
    configure_logging()
    try:
        run(options)
    except RUN_ENDING as e:
        end_run(one_line(e, options.output_dir))
    except KeyboardInterrupt:  # Ctrl-C: what to do next, not a traceback
        then = (f"--resume latest continues from the newest checkpoint in {checkpoint_dir(options.output_dir)}."
                if saved_checkpoints(options.output_dir) else
                "No checkpoint had been saved (--checkpoint-every saves them).")
        if os.environ.get("RANK", "0") == "0":  # the main process of a launch speaks for all
            print(f"Interrupted. {then}", file=sys.stderr, flush=True)
        sys.exit(130)
    except RuntimeError as e:
        if "timed out" not in str(e).lower():  # gloo's words for a collective that ran out of time; else a bug
            raise
        end_run(f"A collective timed out after --collective-timeout {options.collective_timeout:g} s: another "
                f"process is stuck or gone. Checkpoints in {checkpoint_dir(options.output_dir)} (if any) hold the "
                f"last saved state.")
    if options.push_to_hub and PartialState().is_main_process:
        from .hub import HubError, push_folder

        try:
            push_folder(options.output_dir, options.push_to_hub, private=options.hub_private,
                        revision=options.hub_revision)
        except HubError as e:
            print(f"error: {e} The model folder {options.output_dir} is intact.", file=sys.stderr)
            sys.exit(3)
