"""Time to accuracy: run one training command end to end, then tabulate and plot accuracy against wall-clock minutes.

    python -m benchmarks.time_to_accuracy --target 0.90 -- --dataset ../shared/data/cifar10 --no-pretrained
    python -m benchmarks.time_to_accuracy --folder runs/cifar10      # tabulate a finished run again
    python -m benchmarks.time_to_accuracy --folder runs/a --folder runs/b --plot both.png   # several runs, one figure

Everything after `--` goes to train_accelerate.py unchanged. The clock covers the whole command (dataset
loading, decoding, evaluation and writing the model folder included); the per-epoch points come from the
run's own `elapsed_seconds`. Validation accuracy is measured every epoch; the test split only at the end.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from classifier.report import save_figure  # first: it selects matplotlib's display-free backend

import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def plot(runs: dict[str, dict], path: Path, target: float | None = None) -> None:
    """Validation accuracy against wall-clock minutes, one line per run, the final test accuracy as a star."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, metrics in runs.items():
        history = metrics["history"]
        minutes = [h["elapsed_seconds"] / 60 for h in history]
        line, = ax.plot(minutes, [100 * h["val_accuracy"] for h in history], marker="o", markersize=3, label=name)
        if metrics.get("final_split") == "test" and "wall_seconds" in metrics:
            ax.plot(metrics["wall_seconds"] / 60, 100 * metrics["final"]["accuracy"], "*", markersize=12,
                    color=line.get_color())
    if target:
        ax.axhline(100 * target, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("wall-clock minutes since the command started")
    ax.set_ylabel("accuracy % (line: validation, star: test)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def report(metrics: dict, target: float) -> str:
    rows = ["| epoch | minutes | train acc % | val acc % |", "|---|---|---|---|"]
    reached = None
    for h in metrics["history"]:
        minutes = h["elapsed_seconds"] / 60
        rows.append(f"| {h['epoch']} | {minutes:.1f} | {100 * h['train_accuracy']:.2f} "
                    f"| {100 * h['val_accuracy']:.2f} |")
        if reached is None and h["val_accuracy"] >= target:
            reached = minutes
    final = metrics["final"]["accuracy"]
    lines = rows + [""]
    lines.append(f"validation reached {100 * target:.0f}% after: "
                 + (f"{reached:.1f} min" if reached is not None else "never"))
    lines.append(f"final {metrics['final_split']} accuracy: {100 * final:.2f}%"
                 + (f" after {metrics['wall_seconds'] / 60:.1f} min end to end" if "wall_seconds" in metrics else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.90, help="accuracy to report the time to")
    parser.add_argument("--folder", action="append",
                        help="a finished run's model folder: tabulate it instead of training (repeatable: one table "
                             "per run, all runs in one figure)")
    parser.add_argument("--plot", help="figure to write (default: <first model folder>/time_to_accuracy.png)")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then train_accelerate.py's arguments")
    args = parser.parse_args(argv)

    train_args = [a for a in args.train_args if a != "--"]
    if args.folder:
        folders = [Path(f) for f in args.folder]
    else:
        if "--output-dir" not in train_args:
            parser.error("give train_accelerate.py an --output-dir after --")
        folder = Path(train_args[train_args.index("--output-dir") + 1])
        command = [sys.executable, "train_accelerate.py", *train_args]
        print("running:", " ".join(command), flush=True)
        start = time.perf_counter()
        returncode = subprocess.call(command, cwd=ROOT)
        wall = time.perf_counter() - start
        if returncode:
            print(f"training failed with exit status {returncode}", file=sys.stderr)
            return returncode
        metrics_path = (ROOT / folder) / "metrics.json"
        metrics = json.loads(metrics_path.read_text())
        metrics["wall_seconds"] = wall  # kept beside the run so the table can be printed again later
        metrics_path.write_text(json.dumps(metrics, indent=2))
        folders = [folder]
    names = [f.name for f in folders]
    # label each run by its folder's name, or by the path as given where two folders share a name
    labels = [str(f) if names.count(f.name) > 1 else f.name for f in folders]
    folders = [f if f.is_absolute() else ROOT / f for f in folders]
    runs = {label: json.loads((f / "metrics.json").read_text()) for label, f in zip(labels, folders)}
    for name, metrics in runs.items():
        print(f"{name}\n{report(metrics, args.target)}\n" if len(runs) > 1 else report(metrics, args.target))
    figure = Path(args.plot) if args.plot else folders[0] / "time_to_accuracy.png"
    plot(runs, figure, args.target)
    print(f"figure: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
