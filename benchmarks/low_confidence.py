"""How often the low-confidence hint fires: on the test split (from the model's calibration record) and on images far
from any class: random noise, flat colours and screenshots of text.

    python -m benchmarks.low_confidence                # the bundled models, 50 images of each kind
    python -m benchmarks.low_confidence --model runs/x --images 100

The hint says "the image may not be one of this model's classes" when the calibrated top probability is under the
model's low_confidence_threshold (chosen on validation: 95 % of the right validation answers are above it).
"""
from __future__ import annotations

import argparse
import sys
import textwrap

import numpy as np
from PIL import Image, ImageDraw

from classifier.predict import bundled_model_folders, load_predictors

WORDS = ("the quick brown fox jumps over the lazy dog invoice total amount due error stack trace "
         "import numpy as np def main return settings password login").split()


def far_images(kind: str, n: int, rng: np.random.Generator) -> list[Image.Image]:
    images = []
    for _ in range(n):
        if kind == "noise":
            images.append(Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)))
        elif kind == "flat colour":
            images.append(Image.new("RGB", (224, 224), tuple(int(c) for c in rng.integers(0, 256, 3))))
        else:  # a screenshot of text: dark words on a light page
            image = Image.new("RGB", (320, 240), tuple(int(c) for c in rng.integers(225, 256, 3)))
            text = textwrap.fill(" ".join(rng.choice(WORDS, 40)), 45)
            ImageDraw.Draw(image).multiline_text((8, 8), text, fill=(20, 20, 20), spacing=4)
            images.append(image)
    return images


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="model folder or Hub id (repeatable; default: bundled)")
    parser.add_argument("--images", type=int, default=50, help="images of each far-away kind")
    args = parser.parse_args(argv)
    kinds = ("noise", "flat colour", "text screenshot")
    print(f"| model | threshold | test split ({'hint fires'}) | " + " | ".join(kinds) + " |")
    print("|---|---|---|" + "---|" * len(kinds))
    for source in args.model or [str(f) for f in bundled_model_folders()]:
        predictors, _ = load_predictors(source)
        predictor = predictors[next(iter(predictors))]
        threshold = predictor.loaded.low_confidence_threshold
        if threshold is None:
            print(f"| {predictor.name} | none (not calibrated) | | " + " | ".join("" for _ in kinds) + " |")
            continue
        record = predictor.metrics["final"]["calibration"]
        rates = []
        for kind in kinds:
            probs = predictor.probabilities(far_images(kind, args.images, np.random.default_rng(0)))
            rates.append(float(np.mean([predictor.low_confidence(float(p.max())) for p in probs])))
        print(f"| {predictor.name} | {threshold:.3f} | {100 * record['low_confidence_rate']:.1f} % of "
              f"{record['num_samples']} | " + " | ".join(f"{100 * r:.0f} %" for r in rates) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
