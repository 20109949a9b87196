"""Sample images shipped inside a model folder for the app's galleries: a seeded random draw per class
(never chosen by looking at predictions) and the misclassified images of the final evaluation."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np

from .images import open_rgb

MANIFEST = "manifest.json"


def write_samples(folder: Path, split: datasets.Dataset, image_column: str, rows, labels, probs,
                  label_names: list[str], per_class: int = 10, max_failures: int = 30, seed: int = 0) -> int:
    """Write samples/<kind>/<n>.<ext> and samples/manifest.json; returns how many images were written."""
    rows, labels = np.asarray(rows), np.asarray(labels)
    predictions = np.asarray(probs).argmax(1)
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(len(label_names)):
        members = np.flatnonzero(labels == c)
        picks += [("gallery", i) for i in rng.choice(members, min(per_class, len(members)), replace=False)]
    wrong = np.flatnonzero(predictions != labels)
    picks += [("failure", i) for i in rng.choice(wrong, min(max_failures, len(wrong)), replace=False)]

    raw = split.cast_column(image_column, datasets.Image(decode=False))
    entries = []
    for n, (kind, i) in enumerate(picks):
        item = raw[int(rows[i])][image_column]
        image = open_rgb(item["bytes"] or item["path"])
        # small images stay lossless; larger ones as JPEG keep the repo light
        ext = "png" if max(image.size) <= 64 else "jpg"
        name = f"{kind}/{n:04d}.{ext}"
        (folder / kind).mkdir(parents=True, exist_ok=True)
        image.save(folder / name, quality=90) if ext == "jpg" else image.save(folder / name)
        entries.append({"file": name, "label": label_names[labels[i]], "kind": kind})
    (folder / MANIFEST).write_text(json.dumps(entries, indent=1))
    return len(entries)
