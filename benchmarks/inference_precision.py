"""The app's inference precision: test accuracy and batch throughput of each bundled model through the Predictor
(the app's own path: decode, timm preprocessing, image + mirror, calibration), in fp32 and with bf16 autocast.

    python -m benchmarks.inference_precision                       # the bundled models, their whole test splits
    python -m benchmarks.inference_precision --max-images 2000

Exits 1 if bf16 moves a model's test accuracy by more than 0.1 point (the bar for `--inference-precision auto` to
choose it). bf16 rows are skipped on a CPU without native bf16 kernels, where auto stays fp32.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import datasets
import numpy as np

from classifier.data import load_splits
from classifier.hardware import cpu_supports_bf16, describe_hardware
from classifier.images import open_rgb
from classifier.model import load_folder
from classifier.predict import Predictor, bundled_model_folders


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="model folder (repeatable; default: the bundled ones)")
    parser.add_argument("--max-images", type=int, help="a seeded subset of each test split")
    args = parser.parse_args(argv)
    import torch

    print(f"machine: {describe_hardware(torch.device('cpu'))}; the Predictor's own thread setting\n")
    print("| model | test images | fp32 accuracy | bf16 accuracy | difference (points) | fp32 images/s | bf16 images/s |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for folder in args.model or [str(f) for f in bundled_model_folders()]:
        loaded = load_folder(folder)
        record = json.loads((loaded.folder / "training_args.json").read_text())
        splits = load_splits(record["dataset"], record.get("image_column"), record.get("label_column"),
                             record.get("val_fraction", 0.1), record.get("seed", 0))
        test = splits.test if args.max_images is None else splits.test.shuffle(seed=0).select(
            range(min(args.max_images, len(splits.test))))
        raw = test.cast_column(splits.image_column, datasets.Image(decode=False))
        images = [open_rgb(item["bytes"] or item["path"]) for item in raw[splits.image_column]]
        labels = np.asarray(test[splits.label_column])
        results = {}
        for precision in ("fp32", "bf16") if cpu_supports_bf16() else ("fp32",):
            predictor = Predictor(loaded, loaded.folder.name, precision)
            predictor.classify_many(images[:64])  # warm-up
            start = time.perf_counter()
            tops = predictor.classify_many(images, k=1)
            rate = len(images) / (time.perf_counter() - start)
            names = [top[0][0] for top in tops]
            accuracy = float(np.mean([predictor.label_names.index(n) == y for n, y in zip(names, labels)]))
            results[precision] = (accuracy, rate)
        fp32, bf16 = results["fp32"], results.get("bf16")
        diff = 100 * (bf16[0] - fp32[0]) if bf16 else 0.0
        worst = max(worst, abs(diff))
        print(f"| {loaded.folder.name} | {len(images)} | {100 * fp32[0]:.2f} % | "
              f"{f'{100 * bf16[0]:.2f} %' if bf16 else 'n/a'} | {diff:+.2f} | {fp32[1]:.0f} | "
              f"{f'{bf16[1]:.0f}' if bf16 else 'n/a'} |")
    return 1 if worst > 0.1 else 0


if __name__ == "__main__":
    sys.exit(main())
