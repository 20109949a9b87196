"""Which temperature fitter: the project's own (classifier.calibration.fit_temperature, plain torch L-BFGS on log T)
against netcal's TemperatureScaling, on held-out logits of a model folder, scored with the project's own NLL and
ECE (15 bins) so that the numbers are comparable.

netcal is not in requirements (only this comparison uses it; it brings pyro-ppl and gpytorch). Install it beside
the project's environment, e.g. in a throw-away venv that sees the project's packages through a .pth file:

    python -m venv /tmp/libvenv
    python -c "import site; print(site.getsitepackages()[0])" > /tmp/libvenv/lib/python3.11/site-packages/project.pth
    /tmp/libvenv/bin/pip install netcal==1.4.0 grad-cam==1.5.7   # grad-cam: benchmarks/explain_libraries.py
    /tmp/libvenv/bin/python -m benchmarks.calibration_libraries                  # 2,000 validation + 2,000 test
    /tmp/libvenv/bin/python -m benchmarks.calibration_libraries --max-samples 0  # the whole splits

(The second line runs with the project's python. `venv --system-site-packages` made from the project's venv is not
enough: it sees the base interpreter's packages, not the venv's.)

The validation split is rebuilt as classifier.recalibrate rebuilds it (the run's training_args.json), logits are
computed in float32 with the model's test-time views (image + mirror for the bundled models); with --max-samples N
only the first N images of validation and of test are used (1 torch thread: the full splits take several minutes).

netcal's TemperatureScaling works on probabilities: it takes their log, multiplies it by one weight w (T = 1 / w) and
fits w with SciPy's minimize on the cross-entropy. So it is given the app's uncalibrated prediction (the mean of the
image's and the mirror's softmax) and fits a temperature on top of that mean; the project fits T inside each view's
softmax, the exact prediction the app makes. Both are also shown on the image alone (view 0), where the two models
are the same and the temperatures must agree.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from classifier.calibration import ECE_BINS, calibration_metrics, fit_temperature, nll, probabilities
from classifier.recalibrate import held_out_logits
from classifier.train import describe_hardware


def timed_fit(fit, repeats: int):
    """(result of the last fit, median milliseconds over `repeats` fits after one warm-up)."""
    result, seconds = fit(), []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fit()
        seconds.append(time.perf_counter() - start)
    return result, 1000 * float(np.median(seconds))


def netcal_fit(val_probs: torch.Tensor, val_labels: torch.Tensor):
    from netcal.scaling import TemperatureScaling

    scaler = TemperatureScaling(method="mle")  # MLE: one point estimate, like the project's
    scaler.fit(val_probs.numpy(), val_labels.numpy(), tensorboard=False)
    return scaler


def netcal_temperature(scaler) -> float:
    return 1.0 / float(np.asarray(scaler.temperature).reshape(-1)[0])  # netcal's "temperature" is the weight 1 / T


def row(prediction: str, method: str, temperature: float | None, fit_ms: float | None, probs: torch.Tensor,
        labels: torch.Tensor) -> str:
    record = calibration_metrics(probs.double(), labels)
    t = "1 (none)" if temperature is None else f"{temperature:.4f}"
    ms = "-" if fit_ms is None else f"{fit_ms:.1f}"
    return (f"| {prediction} | {method} | {t} | {ms} | {float(nll(probs.double(), labels)):.4f} | "
            f"{100 * record['ece']:.2f} % | {100 * record['accuracy']:.2f} % |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/cifar10-resnet18"))
    parser.add_argument("--dataset", help="the dataset it was trained on (default: its training_args.json's)")
    parser.add_argument("--max-samples", type=int, default=2000,
                        help="first N images of validation and of test (0: the whole splits; default 2000)")
    parser.add_argument("--repeats", type=int, default=5, help="fits timed per method (median)")
    parser.add_argument("--eval-batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import netcal

    start = time.perf_counter()
    val_logits, val_labels, final_split, test_logits, test_labels = held_out_logits(
        args.model, args.dataset, args.eval_batch_size, args.max_samples)
    logits_s = time.perf_counter() - start
    test_name = "test" if final_split == "test" else "validation (no test split)"
    print(f"machine: {describe_hardware(torch.device('cpu'))}; torch {torch.__version__} on "
          f"{torch.get_num_threads()} thread; netcal {netcal.__version__}")
    print(f"model: {args.model}; views: {val_logits.shape[0]}; fitted on validation ({len(val_labels)} images), "
          f"scored on {test_name} ({len(test_labels)} images)"
          + (f" -- the first {args.max_samples} of each split (--max-samples; 0 for all)" if args.max_samples else "")
          + f"; logits took {logits_s:.0f} s")
    print(f"NLL and ECE ({ECE_BINS} bins): classifier.calibration's; fit ms: median of {args.repeats} fits after a "
          "warm-up\n")
    print("| prediction | method | temperature | fit ms | test NLL | test ECE | test accuracy |")
    print("|---|---|---|---|---|---|---|")
    for prediction, views in (("image + mirror (the app's)", slice(None)), ("image only", slice(0, 1))):
        if prediction.startswith("image +") and val_logits.shape[0] == 1:
            continue
        val_v, test_v = val_logits[views], test_logits[views]
        # the same data for both: the views' logits (project), or the app's uncalibrated probabilities (netcal)
        val_probs, test_probs = probabilities(val_v), probabilities(test_v)
        print(row(prediction, "uncalibrated", None, None, test_probs, test_labels))
        t_lbfgs, ms = timed_fit(lambda: fit_temperature(val_v, val_labels), args.repeats)
        print(row(prediction, "project fit_temperature (torch L-BFGS) [a]", t_lbfgs, ms,
                  probabilities(test_v, t_lbfgs), test_labels))
        scaler, ms = timed_fit(lambda: netcal_fit(val_probs, val_labels), args.repeats)
        t_netcal = netcal_temperature(scaler)
        calibrated = torch.from_numpy(np.asarray(scaler.transform(test_probs.numpy()), dtype=np.float64))
        print(row(prediction, "netcal TemperatureScaling (mle) [b]", t_netcal, ms,
                  calibrated, test_labels))
        if prediction.startswith("image +"):
            print(row(prediction, "netcal's T applied the app's way [c]", t_netcal, None,
                      probabilities(test_v, t_netcal), test_labels))
    print("\n[a] T divides each view's logits before its softmax, then the views' probabilities are averaged: the "
          "prediction the app makes.\n[b] netcal's input is the app's uncalibrated probabilities (the views' mean); "
          "it fits T on their log (its `temperature` is the weight 1 / T), and its transform gives the scored "
          "probabilities.\n[c] netcal's T put where the app puts T ([a]): what shipping netcal's fit in config.json "
          "would give.\nWith one view [a] and [b] are the same model, so their T must agree.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
