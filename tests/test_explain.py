"""Heatmaps (Grad-CAM through torchcam, classifier/explain.py): the heat sits on the object, a served upload gets an
overlay of its own size, other timm CNN families work, and models without a feature map say so."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

from .helpers import FAST, create_served_app, noise_image, serve, train


@pytest.fixture(scope="module")
def trained_96(parquet_repo, tmp_path_factory):
    """The blob model at 96 px, where a ResNet's last stage is a 3x3 map: coarse, but a heatmap can move."""
    out = tmp_path_factory.mktemp("run96") / "model"
    args = [a if a != "32" else "96" for a in FAST]  # --img-size 96
    train("--dataset", parquet_repo, "--output-dir", out, "--epochs", "5", "--optimizer", "adamw", "--lr", "3e-3",
          "--weight-decay", "0.05", "--mixed-precision", "no", "--samples-per-class", "0", "--failure-samples", "0",
          *args)
    return out


def square_on_noise(corner: str, size: int = 96, seed: int = 0) -> Image.Image:
    image = noise_image((size, size), random.Random(seed))
    side = size // 3
    x, y = (4, 4) if corner == "top-left" else (size - side - 4, size - side - 4)
    image.paste((40, 60, 220), (x, y, x + side, y + side))  # a blue square: the class "blue"
    return image


@pytest.mark.slow
def test_the_heatmap_follows_the_object(trained_96, tmp_path):
    """The /explain endpoint returns an overlay of the upload's size; its hottest region sits on the blue square,
    top-left in one image and bottom-right in the other."""
    with serve(create_served_app(trained_96)) as url:
        client = Client(url, verbose=False)
        hottest = {}
        for corner in ("top-left", "bottom-right"):
            image = square_on_noise(corner)
            path = tmp_path / f"{corner}.png"
            image.save(path)
            heatmap_path, details = client.predict(handle_file(str(path)), "blue", None, api_name="/explain")
            heatmap = Image.open(heatmap_path).convert("RGB")
            assert heatmap.size == image.size and details["class"] == "blue"
            # overlay = 0.5 image + 0.5 colour map (jet: red where hot, blue where cold): take the image back out
            colour = 2 * np.asarray(heatmap, dtype=np.float64) - np.asarray(image, dtype=np.float64)
            heat = colour[..., 0] - colour[..., 2]
            ys, xs = np.nonzero(heat >= np.quantile(heat, 0.95))  # the hottest twentieth of the image
            hottest[corner] = (xs.mean(), ys.mean())
        # a larger upload: its own size while its shorter side is under 8x the input (96 px), else the size it was
        # decoded at, reduced by a whole factor (docs/APP.md)
        for size, shown in (((700, 500), (700, 500)), ((1024, 768), (512, 384))):
            path = tmp_path / f"{size[0]}.png"
            square_on_noise("top-left").resize(size).save(path)
            heatmap_path, _ = client.predict(handle_file(str(path)), None, None, api_name="/explain")
            assert Image.open(heatmap_path).size == shown
    (x0, y0), (x1, y1) = hottest["top-left"], hottest["bottom-right"]
    # the map is 3x3 at this input size and a cell sees beyond itself: the heat moves with the square, by over a
    # sixth of the image in each direction, and sits in the right half for the bottom-right square
    assert x1 - x0 > 16 and y1 - y0 > 16, hottest
    assert x1 > 48 and y1 > 48 and x0 < 48 and y0 < 48, hottest


def test_a_model_without_feature_stages_says_so(trained):
    """A heatmap needs a convolutional feature map; a model without one gets a message, not a crash."""
    from classifier.explain import ExplainError, class_activation

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3 * 32 * 32, 4)

        def forward(self, x):
            return self.fc(x.flatten(1))

    with pytest.raises(ExplainError, match="feature stages"):
        class_activation(Flat(), torch.zeros(1, 3, 32, 32), 0)


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "efficientnet_b0", "convnext_atto", "densenet121"])
def test_timm_cnns_beyond_resnets_give_a_heatmap(name):
    """Other timm CNN families: the layer comes from timm's feature_info, whatever the family calls it."""
    import timm

    from classifier.explain import class_activation, target_layer

    model = timm.create_model(name, num_classes=4).eval()
    cam = class_activation(model, torch.randn(1, 3, 64, 64), 1)
    assert target_layer(model) != "layer4" and cam.shape == (2, 2)  # 64 px / 32, the last stage's stride
    assert torch.isfinite(cam).all() and 0 <= cam.min() <= cam.max() <= 1


def test_a_vision_transformer_says_it_has_no_feature_map():
    import timm

    from classifier.explain import ExplainError, class_activation

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=4).eval()
    with pytest.raises(ExplainError, match="blocks.11 of this model gives 3-dimensional outputs.*convolutional"):
        class_activation(model, torch.randn(1, 3, 32, 32), 0)
