"""What a training run leaves for people to read: loss/accuracy curves, the confusion matrix, the model card."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and Spaces
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402
import numpy as np  # noqa: E402
from huggingface_hub import EvalResult, ModelCard, ModelCardData  # noqa: E402

from .calibration import temperature_note  # noqa: E402

CURVES_NAME, CONFUSION_NAME, CALIBRATION_NAME = "curves.png", "confusion_matrix.png", "calibration.png"


def save_figure(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(history: list[dict], path: Path) -> None:
    """Train/val loss and accuracy per epoch, from the per-epoch records of a run."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-o"), ("val", "-s")):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], style, label=split)
        ax_acc.plot(epochs, [100 * h[f"{split}_accuracy"] for h in history], style, label=split)
    ax_loss.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no "1.2" of a 2-epoch run
    save_figure(fig, path)


def plot_confusion(matrix: list[list[int]], label_names: list[str], path: Path, title: str) -> None:
    """Row-normalised (each true class sums to 100 %) so classes of different sizes compare at a glance."""
    counts = np.asarray(matrix, dtype=np.float64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    k = len(label_names)
    size = max(5.0, 0.6 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), label_names, rotation=45, ha="right")
    ax.set_yticks(range(k), label_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if k <= 20:
        unit = "%" if k <= 12 else ""  # percentages, not counts; past 12 classes the sign no longer fits a cell
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{100 * rates[i, j]:.0f}{unit}", ha="center", va="center", fontsize=8,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class", format=PercentFormatter(1.0))
    save_figure(fig, path)


METRIC_ROWS = [("accuracy", "Accuracy"), ("precision", "Precision (macro)"), ("recall", "Recall (macro)"),
               ("f1", "F1 (macro)"), ("mcc", "MCC"), ("roc_auc", "ROC-AUC (OvR macro)")]


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def no_better_than_guessing(final: dict, split: str) -> str:
    """A warning when the model is right no more often than always answering the split's commonest class would be
    ("" otherwise): such a model has learnt nothing usable, whatever else its card says."""
    support = final["per_class"]["support"]
    commonest = max(support) / sum(support)
    if final["accuracy"] > commonest or commonest == 1:  # (a split of one class leaves nothing to beat)
        return ""
    return (f"This model is no better than guessing: its {split} accuracy, {100 * final['accuracy']:.2f} %, does not "
            f"beat always answering the commonest class ({100 * commonest:.2f} %). Train longer or on more images, "
            "or check the labels and the learning rate.")


def model_card(
    repo_name: str,
    architecture: str,
    dataset: str,
    dataset_hub_id: str | None,
    label_names: list[str],
    final: dict,
    eval_split: str,
    command: str,
    img_size: int,
    weights,
    trained_on: str = "",
    calibration: dict | None = None,
    data_note: str = "",
) -> ModelCard:
    """`dataset`: its Hub id or folder name, never a local path; `weights`: the run's model.StartingWeights (Hub
    weights are the card's base model, and their license is the card's); `trained_on`: how many processes of which kind,
    precision and hardware (RunRecord.describe()); `calibration`: metrics.json's record of the fitted temperature
    (classifier.calibration.calibrate); `data_note`: where the evaluated split came from, when not the Hub."""
    results = [
        EvalResult(task_type="image-classification", dataset_type=dataset_hub_id or dataset, dataset_name=dataset,
                   dataset_split=eval_split, metric_type=key, metric_name=f"{eval_split} {name}",
                   metric_value=round(final[key], 4))
        for key, name in METRIC_ROWS if final.get(key) is not None
    ]
    # a fine-tune of Hub weights is bound by their license, and the Hub links it to them (base_model); weights of
    # our own (from scratch, or a local file) carry this project's license
    base = ({"base_model": weights.hub_id, "base_model_relation": "finetune"} if weights.kind == "hub" else {})
    license = (weights.license or "other") if weights.kind == "hub" else "apache-2.0"
    card_data = ModelCardData(
        library_name="timm", license=license, model_name=repo_name, **base, pipeline_tag="image-classification",
        tags=["image-classification", "timm", architecture], datasets=[dataset_hub_id] if dataset_hub_id else None,
        eval_results=results,
    )
    per_class = final["per_class"]
    class_rows = "\n".join(
        f"| {name} | {per_class['precision'][i]:.3f} | {per_class['recall'][i]:.3f} | {per_class['f1'][i]:.3f} "
        f"| {per_class['support'][i]} |"
        for i, name in enumerate(label_names)
    )
    metric_rows = "\n".join(f"| {name} | {_fmt(final.get(key))} |" for key, name in METRIC_ROWS)
    guessing = no_better_than_guessing(final, eval_split)
    hub_id = repo_name if "/" in repo_name else f"<your-user>/{repo_name}"  # a folder not pushed (yet)
    exported = final.get("exported_weights")
    if exported:
        metric_rows += (f"\n\nThe weights are stored as {exported['dtype']}; with exactly those weights the accuracy is "
                        f"{_fmt(exported['accuracy'])} (the table was measured in float32 before the cast).")
    scaled = f"(model(x) / {calibration['temperature']:.4g})" if calibration else "model(x)"
    predict, notes = f"probs = {scaled}.softmax(-1)", []
    if final.get("tta") == "flip":
        mirrored = scaled.replace("model(x)", "model(x.flip(-1))")
        predict, notes = f"probs = ({scaled}.softmax(-1) + {mirrored}.softmax(-1)) / 2", ["the image and its mirror"]
        metric_rows += (f"\n\nEach prediction averages the probabilities for the image and its mirror image "
                        f"(`test_time_augmentation: flip` in config.json; the app does the same). The image alone "
                        f"scores an accuracy of {_fmt(final.get('single_view_accuracy'))}.")
    if calibration:
        notes.append(f"{calibration['temperature']:.4g}: the calibration temperature")
    predict += f"  # {'; '.join(notes)}" if notes else ""
    body = f"""
# {repo_name}

A timm `{architecture}` image classifier for {len(label_names)} classes ({", ".join(label_names)}),
trained on `{dataset}` at {img_size}x{img_size} px, {starting_point(weights)}.
{f"{chr(10)}**{guessing}**{chr(10)}" if guessing else ""}{f"{chr(10)}{data_note}{chr(10)}" if data_note else ""}
## Use it

With timm alone:
```python
import timm, torch
from PIL import Image
model = timm.create_model("hf-hub:{hub_id}", pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
x = transform(Image.open("image.jpg").convert("RGB")).unsqueeze(0)
{predict}
print(model.pretrained_cfg["label_names"][probs.argmax()])
```
With this project's app: `MODEL_ID={hub_id} python app.py`, or `python app.py --model <this folder>`.

## Training

```
{command}
```
{f"Trained on {trained_on}." if trained_on else ""}

## Results ({eval_split} split, {sum(per_class['support'])} images)

| Metric | Value |
|---|---|
{metric_rows}

| Class | Precision | Recall | F1 | Support |
|---|---|---|---|---|
{class_rows}

![Loss and accuracy curves]({CURVES_NAME})

![Confusion matrix]({CONFUSION_NAME})
{calibration_section(calibration, eval_split) if calibration else ""}"""
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


def starting_point(weights) -> str:
    if weights.kind == "hub":
        about = [f"revision `{weights.revision[:12]}`" if weights.revision else "",
                 f"license {weights.license}" if weights.license else ""]
        about = f" ({', '.join(a for a in about if a)})" if any(about) else ""
        return f"fine-tuned from [{weights.hub_id}](https://huggingface.co/{weights.hub_id}){about}"
    if weights.kind == "file":  # as the command gave it (export shows a local path as its published record does)
        return f"starting from the weights file `{weights.file}`"
    return "from scratch (random initial weights)"


def calibration_section(calibration: dict, eval_split: str) -> str:
    before, after, changed = calibration["before"], calibration["after"], calibration["class_changes"]
    # one view's class cannot move; the mean of the mirror views' probabilities can, where the views disagree
    changes = (f"\nThe temperature changes the predicted class of {changed} of the {eval_split} images (where the "
               "image and its mirror disagree).\n") if changed else ""
    bound = f" ({note})" if (note := temperature_note(calibration["temperature"])) else ""
    return f"""
## Calibration

The probabilities are divided by a temperature of {calibration['temperature']:.4g} before the softmax, fitted on the
validation split for the prediction as made above (config.json `temperature`; the app uses it){bound}. On the
{eval_split} split ({calibration['num_samples']} images; expected calibration error over {calibration['bins']} bins):

| | ECE | NLL | accuracy |
|---|---|---|---|
| before | {100 * before['ece']:.2f} % | {before['nll']:.4f} | {100 * before['accuracy']:.2f} % |
| after | {100 * after['ece']:.2f} % | {after['nll']:.4f} | {100 * after['accuracy']:.2f} % |
{changes}
The app adds a hint that an image may not be one of these classes when the calibrated top probability is under
{calibration['low_confidence_threshold']:.3f}: 95 % of the right validation answers are above it. It fires on
{100 * calibration['low_confidence_rate']:.1f} % of the {eval_split} images.

![Reliability diagram]({CALIBRATION_NAME})
"""
