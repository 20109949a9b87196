"""Decoding of every kind of upload, without a server."""
import numpy as np
import pytest
from PIL import Image

from classifier.images import BadImageError, open_rgb

from .helpers import shape_image
from .image_corpus import BAD, GOOD, GREY, write_corpus


@pytest.fixture(scope="module")
def corpus_and_reference(tmp_path_factory):
    import random

    reference = shape_image("red", random.Random(0), size=64)
    return write_corpus(tmp_path_factory.mktemp("corpus"), reference), reference


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_are_refused_with_a_reason(corpus_and_reference, name):
    folder, _ = corpus_and_reference
    with pytest.raises(BadImageError, match=BAD[name]):
        open_rgb((folder / name).read_bytes(), name=name)


def test_the_corpus_is_large_enough():
    assert len(BAD) + len(GOOD) + len(GREY) >= 25


@pytest.mark.parametrize("name", GOOD + GREY)
def test_every_mode_becomes_the_same_rgb_picture(corpus_and_reference, name):
    folder, reference = corpus_and_reference
    image = open_rgb((folder / name).read_bytes())
    assert image.mode == "RGB" and image.size == reference.size
    if name == "one_bit.png":
        return  # thresholded: a different picture by design
    expected = reference.convert("L").convert("RGB") if name in GREY else reference
    difference = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(expected, dtype=np.int16))
    # lossy formats (JPEG, CMYK, GIF palette) may move pixels a little; a wrong rotation or channel order moves them a lot
    assert np.median(difference) <= 12, name


def test_transparency_is_composited_on_white():
    image = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    assert open_rgb_image(image).getpixel((0, 0)) == (255, 255, 255)


def open_rgb_image(image):
    import io

    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return open_rgb(buffer.getvalue())
