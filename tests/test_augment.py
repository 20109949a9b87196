"""Random-resized crops (--crop-scale): each image of a batch is its own crop of the drawn share of its area, and
only images cached larger than the input are cropped."""
import argparse

import pytest
import torch

from classifier.augment import BatchAugment
from classifier.engine import Recipe


def coordinate_images(n: int, side: int) -> torch.Tensor:
    """Channel 0 holds each pixel's column, channel 1 its row: an output pixel says where it came from."""
    cols = torch.arange(side).view(1, side).expand(side, side)
    return torch.stack([cols, cols.T, torch.zeros_like(cols)]).to(torch.uint8).expand(n, 3, side, side).contiguous()


def covered_area(batch: torch.Tensor, side: int) -> torch.Tensor:
    """The share of the source image each output image spans (its columns' range times its rows' range)."""
    source = batch * 255  # mean 0, std 1: back to the coordinates
    width = source[:, 0].amax((1, 2)) - source[:, 0].amin((1, 2)) + 1
    height = source[:, 1].amax((1, 2)) - source[:, 1].amin((1, 2)) + 1
    return width * height / side ** 2


def test_each_image_is_its_own_crop_of_the_drawn_share_of_its_area():
    torch.manual_seed(0)
    side = 150
    crops = BatchAugment("basic", 128, (0.0,) * 3, (1.0,) * 3, crop_scale=0.25)(coordinate_images(256, side))
    area = covered_area(crops, side)
    assert crops.shape == (256, 3, 128, 128)
    assert area.min() > 0.25 * 0.9 and area.max() <= 1.0  # within timm's range (a pixel of slack at the edges)
    assert area.min() < 0.35 and area.max() > 0.9  # and spread over it, image by image
    # and at a smaller training size (progressive resizing), the same shares
    torch.manual_seed(0)
    small = covered_area(BatchAugment("basic", 128, (0.0,) * 3, (1.0,) * 3, crop_scale=0.25)(
        coordinate_images(256, side), 64), side)
    assert small.min() > 0.25 * 0.85 and small.max() <= 1.0


def test_without_crops_every_image_keeps_all_of_its_area():
    torch.manual_seed(0)
    shifted = BatchAugment("basic", 128, (0.0,) * 3, (1.0,) * 3)(coordinate_images(64, 128))
    assert covered_area(shifted, 128).min() > 0.75  # shifted by up to 1/8 a side, reflected at the border


@pytest.mark.parametrize("store_size, cropped", [(150, True), (128, False), (32, False)])
def test_only_images_cached_larger_than_the_input_are_cropped(store_size, cropped):
    args = argparse.Namespace(augment="basic", img_size=128, random_erase=0.0, crop_scale=0.25, mixup=0.0,
                              cutmix=0.0, label_smoothing=0.1)
    recipe = Recipe.from_args(args, 4, (0.5,) * 3, (0.25,) * 3, store_size)
    assert recipe.augment.crop_scale == (0.25 if cropped else 1.0)
