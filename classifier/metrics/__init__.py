"""The project's `evaluate` metric, loaded by path so it works offline."""
from pathlib import Path

import evaluate

METRIC_PATH = Path(__file__).parent / "classification_report"


def load_metric():
    # in memory: several training processes must not share evaluate's on-disk cache files
    return evaluate.load(str(METRIC_PATH), keep_in_memory=True)


def compute(probabilities, references, num_classes: int) -> dict:
    return load_metric().compute(predictions=probabilities, references=references, num_classes=num_classes)
