"""Command-line options of train_accelerate.py, parsed once into a frozen `Options`. Recipe options default to the
dataset preset's recipe; the run resolves the rest (`apply_recipe`, the lr scaling in classifier.train) into new
Options, never by changing one."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import re
import sys
from pathlib import Path

from .presets import GENERIC_RECIPE, PRESETS, RECIPES, recipe_for

# The command line's choices live here, not beside the code that runs them (augment.py, model.py, which check
# against these): this module imports no torch, so --help and a mistyped option answer at once
AUGMENT_LEVELS = ("none", "basic", "strong")
TTA_CHOICES = ("none", "flip")  # test-time augmentation: "flip" averages an image's predictions and its mirror's

RESIZE_RAMP = (0.25, 0.75)  # FFCV's: the first quarter of the epochs at the small size, the last at the full one
RECIPE_HELP = ("default: the preset's recipe, else " + ", ".join(f"{k}={v}" for k, v in GENERIC_RECIPE.items())
               + "; pretrained weights take the fine-tuning recipe over it, see --recipe")
LR_SCALES = ("auto", "linear", "sqrt", "none")


def model_arg(value: str) -> tuple[str, object]:
    key, sep, raw = value.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError("expected KEY=VALUE, e.g. output_stride=16")
    try:
        return key, json.loads(raw)  # numbers, true/false, null, lists
    except json.JSONDecodeError:
        return key, raw  # anything else is a string, e.g. act_layer=silu


def checkpoint_every(value: str):
    if value == "epoch":
        return value
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise argparse.ArgumentTypeError("expected a positive number of optimizer steps or 'epoch'")


def fractions_pair(value: str) -> tuple[float, float]:
    try:
        start, end = (float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected START,END, e.g. 0.25,0.75") from None
    if not 0 <= start <= end <= 1:
        raise argparse.ArgumentTypeError(f"expected 0 <= START <= END <= 1, got {value}")
    return start, end


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """One default per option: a recipe option's comes from the preset (named with it), an option whose help
    states its own keeps that, and flags (their default is their opposite) and unset options get none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.dest in GENERIC_RECIPE:
            return f"{text} (default: the preset's, else {GENERIC_RECIPE[action.dest]})".lstrip()
        if ("default" in text or action.default in (None, [], argparse.SUPPRESS)
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))):
            return text
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line: the error, the option meant where a mistyped one is close
    to one (--pretrained-files: did you mean --pretrained-file?), and where the rest are, not a 40-line usage."""

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        # options given that are none of ours, not even a prefix of one (argparse takes those), and the closest
        given = [word.split("=")[0] for word in getattr(self, "_given", []) if word.startswith("--")]
        meant = {word: close[0] for word in given if not any(o.startswith(word) for o in self._option_string_actions)
                 and (close := difflib.get_close_matches(word, self._option_string_actions, n=1))}
        if meant:
            message += "; did you mean " + (next(iter(meant.values())) if len(meant) == 1 else
                                           ", ".join(f"{close} for {word}" for word, close in meant.items())) + "?"
        self.exit(2, f"{self.prog}: error: {message} (--help lists every option)\n")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        description="Fine-tune a timm model on an image-classification dataset with Hugging Face accelerate.",
        epilog=f"Presets: {', '.join(f'{k} ({v.path})' for k, v in PRESETS.items())}. Recipe options ({RECIPE_HELP}).",
        formatter_class=HelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument("--dataset", required=True,
                      help="preset name, Hub dataset id, Hub-layout folder, or image folder (one sub-folder per class)")
    data.add_argument("--image-column", help="image column (default: the column with the Image feature)")
    data.add_argument("--label-column", help="label column (default: the column with the ClassLabel feature)")
    data.add_argument("--val-fraction", type=float, default=0.1,
                      help="stratified share of train held out for validation when there is no validation split")
    data.add_argument("--max-train-samples", type=int, help="use a seeded random subset of train (quick runs)")
    data.add_argument("--max-eval-samples", type=int, help="use a seeded random subset of validation and test")
    data.add_argument("--skip-bad-images", action="store_true",
                      help="skip and count images that fail to decode instead of stopping")
    data.add_argument("--no-data-cache", action="store_true", help="decode images again instead of using the cache")
    data.add_argument("--data-path", choices=["auto", "memory", "stream"], default="auto",
                      help="memory: decode the training set once and keep it as a uint8 tensor on the device; "
                           "stream: decode each batch in DataLoader workers (for sets that do not fit); "
                           "auto: memory when it takes under a quarter of RAM (and of GPU memory)")
    data.add_argument("--data-workers", type=int, default=min(8, os.cpu_count() or 1),
                      help="DataLoader workers decoding batches when streaming")

    model = p.add_argument_group("model")
    model.add_argument("--model", default="resnet18", help="any timm model name (or name.tag)")
    weights = model.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", dest="pretrained", action="store_true", default=None,
                         help="start from the timm Hub weights and fail if they cannot be fetched "
                              "(default: use them when reachable, else train from scratch with a warning)")
    weights.add_argument("--no-pretrained", dest="pretrained", action="store_false", help="train from scratch")
    weights.add_argument("--pretrained-file", help="start from a local weights file (safetensors, or a torch "
                                                   "state dict loaded with weights_only=True)")
    model.add_argument("--recipe", choices=("auto", *RECIPES), default="auto",
                       help="finetune: the preset's recipe for pretrained weights (lower lr, few epochs, the head "
                            "alone first); scratch: the one for random weights; auto: "
                            "finetune when the run starts from pretrained weights. Options given always win")
    model.add_argument("--img-size", type=int, help="training/eval input size; smaller images are upsampled")
    model.add_argument("--min-img-size", type=int,
                       help="progressive resizing: train the first epochs at this size and grow it to --img-size "
                            "(see --resize-ramp); evaluation is always at --img-size (default: off)")
    model.add_argument("--resize-ramp", type=fractions_pair, metavar="START,END",
                       help="with --min-img-size: the fractions of the epochs between which the training size grows "
                            "linearly from --min-img-size to --img-size (default: %s,%s)" % RESIZE_RAMP)
    model.add_argument("--drop-rate", type=float, default=0.0, help="dropout before the classifier")
    model.add_argument("--model-arg", action="append", type=model_arg, default=[], metavar="KEY=VALUE",
                       help="extra timm.create_model argument, repeatable (e.g. output_stride=16, "
                            "drop_path_rate=0.1); recorded in config.json so timm rebuilds the same model")

    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=int, help="passes over the training set")
    train.add_argument("--batch-size", type=int, help="per process")
    train.add_argument("--eval-batch-size", type=int, default=256, help="per process, for validation and test")
    train.add_argument("--gradient-accumulation-steps", type=int, default=1,
                       help="optimizer steps every this many batches (a larger effective batch)")
    train.add_argument("--optimizer", choices=["sgd", "adamw", "adam"],
                       help="SGD with Nesterov momentum, AdamW or Adam")
    train.add_argument("--lr", type=float,
                       help="peak learning rate; the recipe's is for a global batch of the recipe's --batch-size and "
                            "follows the global batch (see --lr-scale), a given one is used as given")
    train.add_argument("--lr-scale", choices=LR_SCALES, default="auto",
                       help="how the lr follows the global batch (processes x --batch-size x accumulation) relative "
                            "to the recipe's batch: linear, sqrt (timm's rule: linear for SGD, square root for "
                            "Adam/AdamW), none; auto: timm's rule for the recipe's lr, none for a given --lr")
    train.add_argument("--layer-decay", type=float, metavar="FACTOR",
                       help="layer-wise lr decay (timm): each layer group from the head down trains at FACTOR "
                            "times the lr of the one above (off when not given)")
    train.add_argument("--freeze-epochs", type=int, metavar="N",
                       help="train the classifier head alone for the first N epochs (the rest of the model at lr 0)")
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (nesterov)")
    train.add_argument("--weight-decay", type=float,
                       help="decoupled for AdamW, L2 for SGD and Adam; not on biases and norms")
    # 'onecycle' was this schedule's first name: a linear warm-up and decay, not torch's OneCycleLR (no momentum
    # cycling, no cosine); recorded commands and scripts that say it keep working
    train.add_argument("--scheduler", type=lambda name: {"onecycle": "linear"}.get(name, name),
                       choices=["linear", "cosine"],
                       help="learning-rate decay after the warm-up, stepped every optimizer step: linear or cosine "
                            "('onecycle', its old name, means linear)")
    train.add_argument("--warmup-epochs", type=float,
                       help="epochs of linear warm-up from a tenth of the peak learning rate")
    train.add_argument("--label-smoothing", type=float, help="share of each target spread over the other classes")
    train.add_argument("--clip-grad", type=float, help="clip the gradient norm to this value")
    train.add_argument("--crop-scale", type=float, default=1.0, metavar="MIN",
                       help="for training images larger than --img-size: random-resized crops of MIN to all of each "
                            "image's area (timm's scale; they are cached at up to 1.5x --img-size); 1: off")
    train.add_argument("--model-ema", action="store_true",
                       help="keep an exponential moving average of the weights (timm's ModelEmaV3) and evaluate and "
                            "export it instead of the weights themselves")
    train.add_argument("--model-ema-decay", type=float, default=0.9998,
                       help="the average's decay once warmed up; it starts low and grows with the steps (timm's "
                            "warm-up: 1 - (1 + step)^-2/3), so short runs average over a few hundred steps")
    train.add_argument("--augment", choices=AUGMENT_LEVELS,
                       help="none; basic = shift + flip; strong = basic + zoom + TrivialAugment")
    train.add_argument("--random-erase", type=float, metavar="PROB",
                       help="probability of erasing a random box of each training image (timm RandomErasing; "
                            "0 = off, needs --augment basic or strong)")
    train.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0 = off)")
    train.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (0 = off)")
    train.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"],
                       help="default: what accelerate was told (accelerate config, accelerate launch "
                            "--mixed_precision), else auto = bf16 where the device runs it natively (CPUs with "
                            "AVX-512 BF16/AMX, Ampere and later GPUs), fp16 on other GPUs, else no")
    train.add_argument("--compile", action=argparse.BooleanOptionalAction,
                       help="torch.compile the model (inductor); compiling takes a while before the first step "
                            "(default: what accelerate was told, accelerate launch --dynamo_backend, else off)")
    train.add_argument("--deterministic", action="store_true",
                       help="reproducible over speed: no TF32 and no cudnn autotuning on CUDA (both on by "
                            "default there), deterministic algorithms where torch has them")
    train.add_argument("--seed", type=int, default=0,
                       help="data order, split and initialisation; augmentation and dropout draw from seed + "
                            "process index")
    train.add_argument("--ddp-timeout", type=float, default=7200, metavar="SECONDS",
                       help="how long processes wait for one doing a long job the others need: downloading the "
                            "weights, decoding a large data set into the cache, writing the model folder")
    train.add_argument("--collective-timeout", type=float, default=600, metavar="SECONDS",
                       help="how long a process waits for the others in any collective of training (torch."
                            "distributed's timeout): a process that stops answering ends the run after this long")

    out = p.add_argument_group("output")
    out.add_argument("--output-dir", help="model folder to write (default: runs/<dataset name>)")
    out.add_argument("--weights-dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                     help="dtype of the exported model.safetensors (float16 halves its size; metrics are "
                          "computed before the cast)")
    out.add_argument("--tta", choices=TTA_CHOICES,
                     help="test-time augmentation, recorded in config.json and used by the final evaluation and "
                          "the app: flip = average the predictions for each image and its mirror image "
                          "(default: flip, or none with --augment none, which trains without flips)")
    out.add_argument("--samples-per-class", type=int, default=10,
                     help="random test images per class saved in samples/ for the app's gallery (0 = none)")
    out.add_argument("--failure-samples", type=int, default=30,
                     help="misclassified test images saved in samples/ for the app's 'where it fails' view")
    out.add_argument("--checkpoint-every", type=checkpoint_every,
                     help="save a resumable checkpoint every N optimizer steps, or 'epoch'")
    out.add_argument("--checkpoint-limit", type=int, default=2, help="keep this many newest checkpoints")
    out.add_argument("--resume", help="'latest' (newest checkpoint in <output-dir>/checkpoints) or a checkpoint path")
    out.add_argument("--report-to", default="none",
                     help="experiment trackers for accelerate: tensorboard, wandb, trackio, mlflow, all, ... (comma separated)")
    out.add_argument("--project-name", help="the trackers' project (default: the dataset's name)")
    out.add_argument("--run-name", help="the run's name in the trackers that name runs: wandb, trackio, mlflow, clearml "
                                        "(default: <model>-<output folder name>)")
    out.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the model folder to this Hub repo")
    out.add_argument("--hub-private", action="store_true", help="create the Hub repo private")
    out.add_argument("--hub-revision", help="branch to push to (default: main)")
    return p


def dataset_slug(dataset: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", dataset.rstrip("/").split("/")[-1]).strip("-") or "dataset"


def _options_class():
    """A frozen dataclass with a field per option of the parser, and two the parsing adds: the recipe options
    given on the command line (`recipe_given`) and the line that repeats the run (`command`)."""
    names = dict.fromkeys(action.dest for action in build_parser()._actions if action.dest != "help")
    return dataclasses.make_dataclass("Options", [*names, "recipe_given", "command"], frozen=True)


Options = _options_class()


def parse_args(argv=None) -> Options:
    parser = build_parser()
    args = parser.parse_args(argv)
    erase_given = args.random_erase is not None
    # the recipe's values fill what was not given; the fine-tuning recipe's are applied over them once the
    # run knows where its weights come from (apply_recipe)
    args.recipe_given = sorted(key for key in GENERIC_RECIPE if getattr(args, key) is not None)
    for key, value in recipe_for(args.dataset).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for name in ("epochs", "batch_size", "eval_batch_size", "img_size", "max_train_samples", "max_eval_samples"):
        if (value := getattr(args, name)) is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be 1 or more, got {value}")
    if args.lr < 0:  # (nan passes: a run told --lr nan ends as a diverging run does, which its tests use)
        parser.error(f"--lr must be 0 or more, got {args.lr:g}")
    if not 0 <= args.random_erase <= 1:
        parser.error(f"--random-erase is a probability, got {args.random_erase}")
    if args.random_erase and args.augment == "none":
        if erase_given:
            parser.error("--random-erase needs --augment basic or strong (with none, training images are not augmented)")
        args.random_erase = 0.0  # a preset's erasing is part of the augmentation that --augment none turns off
    if args.resize_ramp is not None and args.min_img_size is None:
        parser.error("--resize-ramp shapes progressive resizing, which needs --min-img-size")
    if args.min_img_size is None:
        args.min_img_size = args.img_size
    if args.resize_ramp is None:
        args.resize_ramp = RESIZE_RAMP
    if not 0 < args.min_img_size <= args.img_size:
        parser.error(f"--min-img-size must be between 1 and --img-size ({args.img_size}), got {args.min_img_size}")
    if args.tta is None:
        args.tta = "none" if args.augment == "none" else "flip"
    if args.layer_decay is not None and not 0 < args.layer_decay <= 1:
        parser.error(f"--layer-decay is a factor in (0, 1], got {args.layer_decay}")
    if not 0 < args.crop_scale <= 1:
        parser.error(f"--crop-scale is a share of the image's area in (0, 1], got {args.crop_scale}")
    if not 0 < args.model_ema_decay < 1:
        parser.error(f"--model-ema-decay is a factor in (0, 1), got {args.model_ema_decay}")
    if args.freeze_epochs < 0:
        parser.error(f"--freeze-epochs must be 0 or more, got {args.freeze_epochs}")
    if args.output_dir is None:
        args.output_dir = f"runs/{dataset_slug(args.dataset)}"
    args.project_name = args.project_name or dataset_slug(args.dataset)
    args.run_name = args.run_name or f"{args.model}-{Path(args.output_dir).name}"
    from .hardware import run_command  # torch: only once the options are known to be good

    # the line that repeats this run, launcher included, for the record and the model card: without --resume, which
    # only says where an interrupted run went on from (a fresh folder has nothing to resume)
    given = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args.command = run_command([a for i, a in enumerate(given) if not (
        a == "--resume" or a.startswith("--resume=") or (i and given[i - 1] == "--resume"))])
    return Options(**vars(args))


def apply_recipe(options: Options, pretrained: bool) -> tuple[Options, str]:
    """The options with those not given on the command line taken from the recipe that fits the weights:
    fine-tuning for pretrained ones, from scratch otherwise (or as --recipe says). -> (options, the recipe's name)"""
    kind = options.recipe if options.recipe != "auto" else ("finetune" if pretrained else "scratch")
    values = {key: value for key, value in recipe_for(options.dataset, kind).items()
              if key not in options.recipe_given}
    return dataclasses.replace(options, **values), kind


def scaled_lr(lr: float, rule: str, optimizer: str, global_batch: int, reference_batch: int) -> tuple[float, str]:
    """The learning rate for `global_batch` images a step when `lr` suits `reference_batch`, by `rule` (linear,
    sqrt, or timm's: linear for SGD, the square root for adaptive optimizers). -> (lr, the rule applied)"""
    if rule == "auto":
        rule = "linear" if optimizer == "sgd" else "sqrt"
    ratio = global_batch / reference_batch
    return lr * {"linear": ratio, "sqrt": ratio ** 0.5, "none": 1.0}[rule], rule
