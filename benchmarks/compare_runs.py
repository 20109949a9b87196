"""Compare finished training runs: one markdown table and one figure of their curves.

    python -m benchmarks.compare_runs runs/cifar10-* --plot docs/recipe_study.png
    python -m benchmarks.compare_runs runs/study/* --plot study.png --group "optimizer=sgd-run,adamw-run" \
        --group "augmentation=adamw-run,no-augment-run"       # one row of panels per group

Reads each model folder's metrics.json and training_args.json (what train_accelerate.py writes), so the
table and the figure can be made again at any time from the folders alone.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from classifier.report import save_figure  # first: it selects matplotlib's display-free backend

import matplotlib.pyplot as plt  # noqa: E402

COLUMNS = ("img_size", "min_img_size", "epochs", "optimizer", "lr", "augment", "random_erase", "drop_rate", "model_arg")


def read_run(folder: Path) -> dict:
    return {"name": folder.name, "metrics": json.loads((folder / "metrics.json").read_text()),
            "args": json.loads((folder / "training_args.json").read_text())}


def table(runs: list[dict]) -> str:
    lines = ["| run | " + " | ".join(COLUMNS) + " | best val % | final val % | test % | minutes | machine | command |",
             "|---|" + "---|" * (len(COLUMNS) + 6)]
    for run in runs:
        history, final = run["metrics"]["history"], run["metrics"]["final"]
        test = f"{100 * final['accuracy']:.2f}" if run["metrics"]["final_split"] == "test" else "n/a"
        if "single_view_accuracy" in final and test != "n/a":  # with test-time views: also the image alone
            test += f" ({final['tta']}; alone {100 * final['single_view_accuracy']:.2f})"
        minutes = history[-1].get("elapsed_seconds", sum(h["seconds"] for h in history)) / 60
        values = " | ".join(str(run["args"].get(c)) for c in COLUMNS)
        lines.append(f"| {run['name']} | {values} | {100 * max(h['val_accuracy'] for h in history):.2f} "
                     f"| {100 * history[-1]['val_accuracy']:.2f} | {test} | {minutes:.0f} "
                     f"| {run['args'].get('hardware', 'n/a')} | `{run['args']['command']}` |")
    return "\n".join(lines)


def plot(groups: list[tuple[str, list[dict]]], path: Path) -> None:
    """One row of (loss, accuracy) panels per group of runs: curves of one comparison at a time stay readable."""
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 4.5 * len(groups)), squeeze=False)
    for (title, runs), (ax_loss, ax_acc) in zip(groups, axes):
        for run in runs:
            history = run["metrics"]["history"]
            epochs = [h["epoch"] for h in history]
            line, = ax_acc.plot(epochs, [100 * h["val_accuracy"] for h in history], label=run["name"])
            ax_acc.plot(epochs, [100 * h["train_accuracy"] for h in history], ":", color=line.get_color())
            ax_loss.plot(epochs, [h["val_loss"] for h in history], color=line.get_color(), label=run["name"])
            ax_loss.plot(epochs, [h["train_loss"] for h in history], ":", color=line.get_color())
        ax_loss.set(xlabel="epoch", ylabel="loss (solid: validation, dotted: train)", title=title)
        ax_acc.set(xlabel="epoch", ylabel="accuracy % (solid: validation, dotted: train)", title=title)
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
        ax_acc.legend(fontsize=7)
    save_figure(fig, path)


def parse_group(text: str, runs: dict[str, dict]) -> tuple[str, list[dict]]:
    title, _, names = text.rpartition("=")
    missing = [n for n in names.split(",") if n not in runs]
    if missing:
        raise SystemExit(f"--group {text!r}: no finished run named {', '.join(missing)} (have: {', '.join(runs)})")
    return title, [runs[n] for n in names.split(",")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--plot", type=Path, help="write the combined curves here")
    parser.add_argument("--group", action="append", metavar="TITLE=RUN,RUN,...",
                        help="plot these runs (folder names) in a row of their own; repeatable")
    args = parser.parse_args(argv)
    runs = [read_run(f) for f in args.folders if (f / "metrics.json").is_file()]
    by_name = {run["name"]: run for run in runs}
    groups = [parse_group(g, by_name) for g in args.group] if args.group else [("", runs)]
    print(table(runs))
    if args.plot:
        plot(groups, args.plot)
        print(f"\nfigure: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
