"""Calibrate a model folder after the fact, from its weights alone (no training): the same temperature fit, record,
reliability diagram and card section a training run now makes (classifier.calibration).

    python -m classifier.recalibrate models/cifar10-resnet18                         # the dataset it was trained on
    python -m classifier.recalibrate runs/x --dataset ../shared/data/cifar10

The validation split is rebuilt exactly as the run built it (its training_args.json: --val-fraction, --seed,
--max-*-samples), so the temperature is fitted on the same images the run validated on and never on test. Predictions
are computed in float32, as the app makes them.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from .calibration import calibrate, plot_reliability
from .data import DataError, load_splits
from .evaluate import Evaluator
from .logs import configure_logging
from .model import CONFIG_NAME, ModelSourceError, calibration_keys, load_folder
from .report import CALIBRATION_NAME, calibration_section


def held_out_logits(folder: Path, dataset: str | None = None, batch_size: int = 256, max_samples: int = 0):
    """The view logits of a model folder on its run's own validation split (rebuilt from training_args.json) and on
    its test split: (validation logits, labels, final split name, its logits, labels); without a test split the
    final split is validation. `max_samples` takes the first so many of each (not cached then: a subset would
    leave its own copy in the shared decode cache)."""
    args = json.loads((folder / "training_args.json").read_text())
    dataset = dataset or args["dataset"]
    if dataset.startswith(".../"):
        raise DataError(f"{folder}'s training_args.json names its dataset only as {dataset} (local paths outside the "
                        "run's folder are not published); pass --dataset.")
    splits = load_splits(dataset, args.get("image_column"), args.get("label_column"),
                         args.get("val_fraction", 0.1), args.get("seed", 0), args.get("max_train_samples"),
                         args.get("max_eval_samples"))
    loaded = load_folder(folder)
    if splits.label_names != loaded.label_names:  # the temperature is fitted on the model's own validation split
        raise DataError(f"{dataset!r} has the classes {', '.join(splits.label_names)}; {folder} was trained on "
                        f"{', '.join(loaded.label_names)}. Recalibrate on the dataset it was trained on.")
    evaluator = Evaluator(loaded, batch_size)

    def logits(split, name):
        if max_samples:
            split = split.select(range(min(max_samples, len(split))))
        return evaluator.logits(split, splits.image_column, splits.label_column, len(splits.label_names), name,
                                cache=not max_samples)

    val_logits, val_labels = logits(splits.validation, "validation")
    if splits.test is None:
        return val_logits, val_labels, "validation", val_logits, val_labels
    return (val_logits, val_labels, "test", *logits(splits.test, "test"))


def recalibrate(folder: Path, dataset: str | None = None, batch_size: int = 256) -> dict:
    """Fit, and write config.json's keys, metrics.json's record, calibration.png and the card; -> the record."""
    val_logits, val_labels, final_split, final_logits, final_labels = held_out_logits(folder, dataset, batch_size)
    record = calibrate(val_logits, val_labels, final_logits, final_labels)

    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["final"]["calibration"] = record
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_reliability(record, folder / CALIBRATION_NAME,
                     f"Calibration, {final_split} (temperature {record['temperature']:.3g})")
    card = folder / "README.md"
    if card.is_file():
        card.write_text(calibrated_card(card.read_text(), record, final_split))
    config_path = folder / CONFIG_NAME  # last: a folder with the key has everything else
    config_json = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(dict(config_json, **calibration_keys(record)), indent=2))
    return record


def calibrated_card(text: str, record: dict, split: str) -> str:
    """The card with its snippet dividing by the temperature and its Calibration section (replaced if present)."""
    t = f"{record['temperature']:.4g}"

    def snippet(match):
        line = match.group(0)
        line = re.sub(r"\(model\(x\) / [0-9.e+-]+\)|model\(x\)(?! /)", f"(model(x) / {t})", line)
        line = re.sub(r"\(model\(x\.flip\(-1\)\) / [0-9.e+-]+\)|model\(x\.flip\(-1\)\)(?! /)",
                      f"(model(x.flip(-1)) / {t})", line)
        line = re.sub(r";? ?[0-9.e+-]+: the calibration temperature", "", line)
        return line + ("; " if "  # " in line else "  # ") + f"{t}: the calibration temperature"

    text = re.sub(r"^probs = .*$", snippet, text, count=1, flags=re.M)
    text = re.sub(r"\n## Calibration\n.*?(?=\n## |\Z)", "", text, flags=re.S)
    return text.rstrip("\n") + "\n" + calibration_section(record, split)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a model folder written by train_accelerate.py")
    parser.add_argument("--dataset", help="the dataset it was trained on (default: its training_args.json's)")
    parser.add_argument("--eval-batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    configure_logging()
    try:
        record = recalibrate(args.folder, args.dataset, args.eval_batch_size)
    except (DataError, ModelSourceError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    before, after = record["before"], record["after"]
    print(f"{args.folder}: temperature {record['temperature']:.4f}; ECE {100 * before['ece']:.2f}% -> "
          f"{100 * after['ece']:.2f}%, NLL {before['nll']:.4f} -> {after['nll']:.4f} on {record['num_samples']} "
          f"images; hint under {record['low_confidence_threshold']:.3f} fires on "
          f"{100 * record['low_confidence_rate']:.1f}% of them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
