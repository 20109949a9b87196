"""Named datasets and the training recipes that are the defaults for each.

Each dataset has two recipes: one for training from scratch and one for fine-tuning pretrained weights; the
run picks by where its weights come from (`--recipe` overrides). A recipe only supplies defaults: every value
can be overridden on the command line. Recipes are chosen from measurements (docs/RESULTS.md); the generic ones
apply to any other dataset.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    path: str | None = None  # Hub dataset id
    data_files: dict[str, str] | None = None
    recipe: dict = field(default_factory=dict)  # from scratch
    finetune: dict = field(default_factory=dict)  # over `recipe`, for pretrained weights


GENERIC_RECIPE = dict(
    img_size=128,
    epochs=10,
    batch_size=128,
    optimizer="sgd",
    lr=0.1,
    weight_decay=5e-4,
    scheduler="linear",
    warmup_epochs=1.0,
    label_smoothing=0.1,
    augment="basic",
    random_erase=0.0,
    layer_decay=None,
    freeze_epochs=0,
)

# Fine-tuning changes the optimisation, not the data: pretrained weights need a smaller step, fewer epochs, and a
# head trained alone first (a new random head's first gradients would otherwise wreck the backbone's features:
# accelerate's cv example trains the head alone throughout). Layer-wise lr decay (as timm and BEiT fine-tune ViTs)
# was measured and lost: from the CIFAR-10 model to Intel, 10 epochs, 89.67 % test with decay 0.8 against 90.63 %
# without (docs/RESULTS.md, "Fine-tuning"; --layer-decay turns it on). lr, weight decay and epochs follow the
# published anchors (timm, the transformers and accelerate examples: AdamW at 1e-4 to 1e-3, 3 to 10 epochs), not
# a sweep.
FINETUNE = dict(optimizer="adamw", lr=1e-3, weight_decay=0.05, scheduler="cosine", warmup_epochs=0.0,
                layer_decay=None, freeze_epochs=1, epochs=10)

PRESETS = {
    # 32 px images: timm's resnet18 stem would shrink them to 8x8 maps, so they are upsampled. AdamW beat SGD
    # on validation at 12 epochs (85.02 % vs 83.06 %), 30 epochs beat 12 (86.98 %), 96 px beat 64 px at 30
    # epochs (88.22 %), and random erasing beat none at 64 and at 96 px (88.96 % at 96 px; docs/RESULTS.md): about
    # 2 h on a 2-core CPU with AMX bf16 (--min-img-size 32: 0.58x the time for 0.6 points less test accuracy)
    "cifar10": Preset(path="uoft-cs/cifar10", recipe=dict(GENERIC_RECIPE, img_size=96, epochs=30, batch_size=256,
                                                           optimizer="adamw", lr=3e-3, weight_decay=0.05,
                                                           random_erase=0.5), finetune=FINETUNE),
    # A public copy of Kaggle's puneet6060/intel-image-classification in its original folder layout.
    "intel": Preset(
        path="sfarrukhm/intel-image-classification",
        data_files={"train": "data/seg_train/**", "test": "data/seg_test/**"},
        # the best Intel recipe measured so far (docs/RESULTS.md): 128 px beat 96 px by 2.6 points of validation
        # accuracy (96 px beat 64 px by 2.4); about 40 min on a 2-core CPU with AMX bf16, about 3.3 h without bf16
        recipe=dict(GENERIC_RECIPE, img_size=128, epochs=40),
        finetune=FINETUNE,
    ),
}


def find_preset(dataset: str) -> Preset | None:
    """A preset by name, by its Hub id, or by a local copy's folder name (`../shared/data/cifar10`)."""
    name = dataset.rstrip("/").split("/")[-1].lower()
    return next((p for key, p in PRESETS.items() if dataset in (key, p.path) or name in (key, p.path.split("/")[-1])),
                None)


RECIPES = ("scratch", "finetune")


def recipe_for(dataset: str, kind: str = "scratch") -> dict:
    """The `kind` recipe of `dataset`'s preset, else the generic one."""
    preset = find_preset(dataset)
    scratch = preset.recipe if preset else GENERIC_RECIPE
    return dict(scratch, **((preset.finetune if preset else FINETUNE) if kind == "finetune" else {}))
