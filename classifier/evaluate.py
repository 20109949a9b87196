"""Evaluate a model, a folder or a Hub repo in this project's format, on any labelled image dataset `datasets` can
load: the metrics a training run reports (accuracy, precision, recall, F1, MCC, ROC-AUC, per class), computed as
the run computed them, and its confusion matrix. For a model someone else trained, or your own photos.

    python -m classifier.evaluate models/cifar10-resnet18 --dataset ../shared/data/cifar10
    python -m classifier.evaluate me/resnet18-cifar10 --dataset my-photos/ --split train --output-dir eval/

The dataset's classes are matched to the model's by name (it may have fewer of them); images are prepared as the
model's config.json says (size, interpolation, crop) and predicted with its test-time augmentation, in float32.
Exit status 2 when the model or the data cannot be used.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator

from .data import DataError, decode_split, load_labelled
from .engine import collect_view_logits, eval_loader, split_metrics
from .logs import configure_logging
from .model import LoadedModel, ModelSourceError, load
from .report import CONFUSION_NAME, METRIC_ROWS, no_better_than_guessing, plot_confusion

SPLITS = ("test", "validation", "train")


class Evaluator:
    """A loaded model, ready to give the view logits (as training's final evaluation collects them) of any split."""

    def __init__(self, loaded: LoadedModel, batch_size: int = 256):
        self.loaded, self.batch_size = loaded, batch_size
        self.accelerator = Accelerator(mixed_precision="no", cpu=not torch.cuda.is_available())
        self.model = self.accelerator.prepare(loaded.model.to(memory_format=torch.channels_last))
        device = self.accelerator.device
        self.mean, self.std = (torch.tensor(loaded.data_config[k], device=device) for k in ("mean", "std"))

    def logits(self, split: datasets.Dataset, image_column: str, label_column: str, num_classes: int, desc: str,
               cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(view logits, labels in the split's own numbering); `cache` False for a subset, which would leave its
        own copy in the shared decode cache."""
        config = self.loaded.data_config
        decoded = decode_split(split, image_column, label_column, num_classes, size=config["input_size"][-1],
                               interpolation=config["interpolation"], crop_pct=config["crop_pct"],
                               use_cache=cache, desc=f"decode {desc}")
        loader = self.accelerator.prepare(eval_loader(decoded, self.batch_size))
        return collect_view_logits(self.model, loader, self.accelerator, self.mean, self.std, self.loaded.tta,
                                   desc=desc)


def evaluate(source: str, dataset: str, split: str = "test", revision: str | None = None, batch_size: int = 256,
             max_samples: int = 0, image_column: str | None = None, label_column: str | None = None) -> dict:
    """The metrics of `source` on `dataset`'s `split` (the dataset's only split, where it has one), in the model's
    class numbering: split_metrics' dict, with the model's `label_names` and the `split`'s name."""
    loaded = load(source, revision)
    data = load_labelled(dataset, image_column, label_column)
    name = data.split_for(split)  # a dataset of one split: that one, whatever --split says
    if name is None:
        raise DataError(f"{dataset!r} has no {split} split; its splits are {', '.join(data.splits)} (--split).")
    unknown = [label for label in data.label_names if label not in loaded.label_names]
    if unknown:
        raise DataError(f"The dataset's classes {', '.join(unknown)} are not the model's (its classes: "
                        f"{', '.join(loaded.label_names)}); its classes are matched to the model's by name.")
    # the dataset's class numbers, as the model numbers the same names
    to_model = torch.tensor([loaded.label_names.index(label) for label in data.label_names])
    split_data = data.splits[name]
    if max_samples:  # drawn at random (seed 0): a split's first images are often all of one class
        split_data = split_data.shuffle(seed=0).select(range(min(max_samples, len(split_data))))
    logits, labels = Evaluator(loaded, batch_size).logits(split_data, data.image_column, data.label_column,
                                                          len(data.label_names), name, cache=not max_samples)
    metrics, _ = split_metrics(logits, to_model[labels], len(loaded.label_names), loaded.tta)
    per_class = metrics["per_class"]
    present = [i for i, images in enumerate(per_class["support"]) if images]
    if len(present) < len(loaded.label_names):
        # macro averages over the classes the data has: a class without images has no precision or recall to
        # count as 0 (a prediction of it is still a mistake, in the recall of the image's own class)
        for key in ("precision", "recall", "f1"):
            metrics[key] = sum(per_class[key][i] for i in present) / len(present)
        metrics["macro_over"] = [loaded.label_names[i] for i in present]
    return dict(metrics, label_names=loaded.label_names, split=name)


def summary(metrics: dict) -> str:
    """What the terminal shows: the headline metrics, then the classes the data has, one line each."""
    headline = ", ".join(f"{name} {'n/a' if metrics.get(key) is None else f'{metrics[key]:.4f}'}"
                         for key, name in METRIC_ROWS)
    per_class = metrics["per_class"]
    rows = [f"  {name:<20} precision {per_class['precision'][i]:.3f}  recall {per_class['recall'][i]:.3f}  "
            f"f1 {per_class['f1'][i]:.3f}  images {per_class['support'][i]}"
            for i, name in enumerate(metrics["label_names"]) if per_class["support"][i]]
    guessing = no_better_than_guessing(metrics, metrics["split"])
    if "macro_over" in metrics:
        headline += f" (macro over the {len(metrics['macro_over'])} classes the data has)"
    return "\n".join([f"{metrics['split']}, {metrics['num_samples']} images: {headline}", *rows,
                      *([f"warning: {guessing}"] if guessing else [])])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m classifier.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a model folder written by train_accelerate.py, or a Hub model id")
    parser.add_argument("--dataset", required=True, help="a folder, a preset or a Hub dataset id, as in training")
    parser.add_argument("--split", choices=SPLITS, default="test",
                        help="which split (\"seg_test\" counts as test); a dataset of one split is evaluated whole")
    parser.add_argument("--revision", help="the Hub model's revision")
    parser.add_argument("--image-column", help="default: the dataset's one image column")
    parser.add_argument("--label-column", help="default: the dataset's one class-label column")
    parser.add_argument("--max-samples", type=int, default=0, help="N images of the split drawn at random (0: all)")
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--output-dir", type=Path, help="write metrics.json and confusion_matrix.png there")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        metrics = evaluate(args.model, args.dataset, args.split, args.revision, args.eval_batch_size,
                           args.max_samples, args.image_column, args.label_column)
    except (DataError, ModelSourceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(metrics))
    if args.output_dir:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        record = dict(metrics, model=args.model, dataset=args.dataset)
        (args.output_dir / "metrics.json").write_text(json.dumps(record, indent=2))
        plot_confusion(metrics["confusion_matrix"], metrics["label_names"], args.output_dir / CONFUSION_NAME,
                       f"{Path(args.model).name} on {Path(args.dataset.rstrip('/')).name} ({metrics['split']})")
        print(f"Wrote {args.output_dir / 'metrics.json'} and {args.output_dir / CONFUSION_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
