"""Where the model looked: a Grad-CAM heatmap of one class over the input image, with torchcam.

torchcam rather than grad-cam (pytorch-grad-cam): on the bundled CIFAR-10 model at 96 px, one thread, a heatmap cost
1.08x the forward pass alone, because torchcam takes the gradient only down to the hooked layer; grad-cam computes
every parameter's gradient (3.2x torchcam's time, the same map) and brings OpenCV along
(`python -m benchmarks.explain_libraries`, docs/PERFORMANCE.md).
"""
from __future__ import annotations

import torch
from PIL import Image
from torchcam.methods import GradCAM
from torchcam.utils import overlay_mask
from torchvision.transforms.functional import to_pil_image


class ExplainError(ValueError):
    """The model cannot give a heatmap; the message says why."""


def target_layer(model: torch.nn.Module) -> str:
    """The last feature stage of a timm model (timm names it in `feature_info`: `layer4` for a ResNet): the finest
    map that still knows about the classes."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise ExplainError(f"{type(model).__name__} does not name its feature stages (timm's feature_info), so there "
                           "is no layer to take a heatmap from.")
    return info[-1]["module"]


def class_activation(model: torch.nn.Module, x: torch.Tensor, class_index: int) -> torch.Tensor:
    """Grad-CAM of `class_index` for one normalised image `x` (1, 3, H, W): (h, w) in [0, 1] at the layer's
    resolution. One forward and a backward down to that layer, with gradients on just for this call."""
    layer = target_layer(model)
    with torch.inference_mode(False), torch.enable_grad():
        x = x.clone().requires_grad_(True)  # tensors made under inference mode cannot enter autograd
        with GradCAM(model, layer) as extractor:
            scores = model(x)
            activation = extractor.hook_a[0]
            if activation is None or activation.ndim != 4:
                raise ExplainError(f"{layer} of this model gives {getattr(activation, 'ndim', 0)}-dimensional "
                                   "outputs, not a 2-D feature map: heatmaps need a convolutional model.")
            cam = extractor(class_index, scores)[0][0]
    return cam.detach().float().nan_to_num(0.0)


def overlay(image: Image.Image, cam: torch.Tensor, crop_pct: float = 1.0) -> Image.Image:
    """`cam` laid over `image` at its own size. The model saw the central crop timm's eval transform takes (the
    shorter side scaled to input_size / crop_pct, then a central input_size square: crop_pct of the shorter side);
    the heatmap covers that crop and the rest of the image is left uncoloured."""
    width, height = image.size
    side = round(min(width, height) * crop_pct)
    left, top = (width - side) // 2, (height - side) // 2
    mask = Image.new("F", image.size, 0.0)
    mask.paste(to_pil_image(cam.unsqueeze(0), mode="F").resize((side, side), Image.Resampling.BILINEAR), (left, top))
    return overlay_mask(image, mask, alpha=0.5)
