"""Probabilities people can trust: one temperature fitted on the validation split, how well the probabilities match
how often the model is right (expected calibration error, negative log-likelihood), the reliability diagram, and the
low-confidence threshold the app's hint uses.

Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks") divides every logit by one scalar
T before the softmax: one view's predicted class never changes, only how sure the probabilities say the model is. It
is fitted for the exact prediction the app makes: with `test_time_augmentation: flip`, the mean of the image's and its
mirror's softmax, each of logits / T; there, where the two views disagree, T can move the class, so the record keeps
the accuracy before and after and how many predictions changed. Label smoothing, which the presets use, and the
mirror average can each move the probabilities away from how often the model is right; the fitted T says which way
(below 1 sharpens, above 1 softens).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


ECE_BINS = 15
# the hint's threshold: this share of the right validation answers have a calibrated top probability above it
RIGHT_ANSWERS_ABOVE_THRESHOLD = 0.95


def probabilities(view_logits_: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The prediction the app makes from the views' logits: the mean of each view's softmax at `temperature`."""
    return (view_logits_.double() / temperature).softmax(-1).mean(0)


# the temperature is kept inside this range: on a tiny or degenerate validation split (every answer right, or nearly
# every one wrong) the likelihood keeps improving as T goes to 0 or to infinity (seen: 722,537 on 15 images)
TEMPERATURE_RANGE = (0.05, 20.0)


def fit_temperature(view_logits_: torch.Tensor, labels: torch.Tensor) -> float:
    """The T minimising the negative log-likelihood of `probabilities(view_logits_, T)`: L-BFGS on log T (one
    scalar: a library would add nothing), from T = 1, kept within TEMPERATURE_RANGE."""
    # clones: the logits come from inference mode, whose tensors autograd may not save
    logits, labels = view_logits_.double().clone(), labels.clone()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = nll(probabilities(logits, log_t.exp()), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    low, high = TEMPERATURE_RANGE
    return min(max(float(log_t.detach().exp()), low), high)


def nll(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(probs.clamp_min(1e-12).log(), labels)


def calibration_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """Expected calibration error (15 equal-width bins of the top probability, the L1 form torchmetrics and Guo et al.
    use: the mean gap between confidence and accuracy, weighted by each bin's share), negative log-likelihood,
    accuracy, and each bin's mean confidence, accuracy and count (the reliability diagram's data; empty bins are
    null)."""
    top, predicted = probs.max(-1)
    # bin b holds (b/15, (b+1)/15]; a probability of exactly 0 joins the first bin
    bins = torch.bucketize(top, torch.linspace(0, 1, ECE_BINS + 1, dtype=top.dtype)[1:-1], right=True)
    right = (predicted == labels).double()
    members = [bins == b for b in range(ECE_BINS)]
    ece = sum(m.double().mean() * (top[m].double().mean() - right[m].mean()).abs() for m in members if m.any())
    return {"ece": float(ece), "nll": float(nll(probs, labels)), "accuracy": float(right.mean()),
            "bin_confidence": [float(top[m].mean()) if m.any() else None for m in members],
            "bin_accuracy": [float(right[m].mean()) if m.any() else None for m in members],
            "bin_count": [int(m.sum()) for m in members]}


def low_confidence_threshold(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The calibrated top probability above which RIGHT_ANSWERS_ABOVE_THRESHOLD of the right validation answers lie:
    an image under it is less sure than almost every image the model gets right."""
    top, predicted = probs.max(-1)
    right = top[predicted == labels].sort().values
    # the least sure right answer once the whole number of them that the other 5 % allows is put under it (a
    # quantile's interpolation put up to 2 of 24 under it)
    return float(right[int(len(right) * (1 - RIGHT_ANSWERS_ABOVE_THRESHOLD))]) if len(right) else 0.0


def calibrate(val_logits: torch.Tensor, val_labels: torch.Tensor, test_logits: torch.Tensor,
              test_labels: torch.Tensor) -> dict:
    """Fit on validation, report on test (`test_*` may be validation again when a dataset has no test split): the
    record metrics.json keeps under "calibration"."""
    temperature = fit_temperature(val_logits, val_labels)
    before, after = probabilities(test_logits), probabilities(test_logits, temperature)
    threshold = low_confidence_threshold(probabilities(val_logits, temperature), val_labels)
    return {"temperature": temperature, "fitted_on": "validation", "bins": ECE_BINS,
            "before": calibration_metrics(before, test_labels), "after": calibration_metrics(after, test_labels),
            "low_confidence_threshold": threshold,
            "low_confidence_rate": float((after.max(-1).values < threshold).double().mean()),
            "class_changes": int((before.argmax(-1) != after.argmax(-1)).sum()),
            "num_samples": len(test_labels)}


def temperature_note(temperature: float) -> str:
    """What a temperature at an end of TEMPERATURE_RANGE says, where the fit stopped there ("" elsewhere)."""
    low, high = TEMPERATURE_RANGE
    if temperature >= high:
        return (f"the fit stopped at its upper bound {high:g}: on validation the model's answers are barely better "
                "than uniform, so its probabilities are all about equal")
    if temperature <= low:
        return (f"the fit stopped at its lower bound {low:g}: the validation split is too small, or every answer on "
                "it right, to fit a temperature")
    return ""


def plot_reliability(calibration: dict, path: Path, title: str) -> None:
    """Accuracy against confidence per bin, before and after the temperature (from the record `calibrate` made),
    with each bin's share of images: on the diagonal, "80 %" means right 80 % of the time."""
    from .report import plt, save_figure

    edges = np.linspace(0, 1, ECE_BINS + 1)
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5.5, 6), height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for offset, (name, style) in zip((-0.25, 0.25), (("before", "-o"), ("after", "-s"))):
        record = calibration[name]
        filled = [b for b, c in enumerate(record["bin_count"]) if c]
        ax.plot([record["bin_confidence"][b] for b in filled], [record["bin_accuracy"][b] for b in filled], style,
                label=f"{name} temperature (ECE {100 * record['ece']:.2f} %)")
        share = np.asarray(record["bin_count"]) / max(sum(record["bin_count"]), 1)
        ax_count.bar((edges[:-1] + edges[1:]) / 2 + offset / ECE_BINS, share, width=0.5 / ECE_BINS, label=name)
    ax.set(title=title, ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax_count.set(xlabel="confidence (top probability)", ylabel="share of images")
    ax_count.grid(alpha=0.3)
    save_figure(fig, path)
