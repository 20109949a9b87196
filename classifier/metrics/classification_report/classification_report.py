"""`evaluate` metric: the full classification report from class probabilities.

Kept in the project and loaded by path (`evaluate.load(<this folder>)`) because
`evaluate.load("accuracy")` downloads its script from the Hub and fails offline.
"""
import datasets
import evaluate
import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)

_DESCRIPTION = """Accuracy; macro precision, recall and F1; Matthews correlation; one-vs-rest macro
ROC-AUC from probabilities; per-class precision, recall, F1 and support; the confusion matrix
(rows: true class, columns: predicted class)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: class probabilities, one list of `num_classes` floats per sample.
    references: true class indices.
    num_classes: optional; defaults to the length of a probability vector.
Returns: a dict with accuracy, precision, recall, f1, mcc, roc_auc (None when a class is absent
    from the references), per_class {precision, recall, f1, support} lists and confusion_matrix.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClassificationReport(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, num_classes=None):
        probs = np.asarray(predictions, dtype=np.float64)
        refs = np.asarray(references, dtype=np.int64)
        num_classes = num_classes or probs.shape[1]
        labels = np.arange(num_classes)
        preds = probs.argmax(axis=1)
        precision, recall, f1, _ = precision_recall_fscore_support(
            refs, preds, labels=labels, average="macro", zero_division=0
        )
        per_p, per_r, per_f, support = precision_recall_fscore_support(
            refs, preds, labels=labels, average=None, zero_division=0
        )
        return {
            "accuracy": float(accuracy_score(refs, preds)),
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "mcc": float(matthews_corrcoef(refs, preds)),
            "roc_auc": _roc_auc(refs, probs, labels),
            "per_class": {
                "precision": per_p.tolist(),
                "recall": per_r.tolist(),
                "f1": per_f.tolist(),
                "support": support.tolist(),
            },
            "confusion_matrix": confusion_matrix(refs, preds, labels=labels).tolist(),
        }


def _roc_auc(refs, probs, labels):
    if len(np.unique(refs)) < len(labels):
        return None  # AUC of a class with no positive sample is undefined
    probs = probs / probs.sum(axis=1, keepdims=True)  # bf16 softmax sums may stray from 1 by ~1e-3
    if len(labels) == 2:
        return float(roc_auc_score(refs, probs[:, 1]))
    return float(roc_auc_score(refs, probs, multi_class="ovr", average="macro", labels=labels))
