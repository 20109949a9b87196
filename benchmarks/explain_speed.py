"""What a heatmap costs: the app's prediction against the prediction plus its Grad-CAM heatmap (/explain), per
bundled model, on the app's torch thread with its thread setting.

    python -m benchmarks.explain_speed                 # the bundled models
    python -m benchmarks.explain_speed --model runs/x --repeats 50

Prints p50/p95 milliseconds of Predictor.classify and Predictor.explain on one of each model's own gallery images.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from classifier.images import open_rgb
from classifier.predict import bundled_model_folders, load_predictors
from classifier.train import describe_hardware


def timed(fn, repeats: int) -> tuple[float, float]:
    fn(), fn()  # warm-up: first calls allocate and pick kernels
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    ms = 1000 * np.asarray(seconds)
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="model folder or Hub id (repeatable; default: bundled)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    import torch

    print(f"machine: {describe_hardware(torch.device('cpu'))}")
    print("| model | input px | views | predict p50 ms | p95 | predict + heatmap p50 ms | p95 | heatmap / predict |")
    print("|---|---|---|---|---|---|---|---|")
    for source in args.model or [str(f) for f in bundled_model_folders()]:
        predictors, _ = load_predictors(source)
        predictor = predictors[next(iter(predictors))]
        image = open_rgb(str(predictor.samples[0].path)) if predictor.samples else open_rgb(
            np.zeros(1, np.uint8).tobytes())
        predict = timed(lambda: predictor.classify(image, 5), args.repeats)
        explain = timed(lambda: predictor.explain(image), args.repeats)
        views = 2 if predictor.loaded.tta == "flip" else 1
        print(f"| {predictor.name} | {predictor.input_size} | {views} | {predict[0]:.1f} | {predict[1]:.1f} | "
              f"{explain[0]:.1f} | {explain[1]:.1f} | {explain[0] / predict[0]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
