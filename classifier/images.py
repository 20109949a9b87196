"""Turn whatever bytes a user or a dataset hands us into an RGB PIL image, or say clearly why not."""
from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own bomb guard warns at ~89 MP and raises at twice that; we raise at the warning level
# so a 30000x30000 upload is refused before it is decoded into 2.7 GB of pixels. (The app sets a lower cap.)
MAX_PIXELS = 89_478_485
# below this the image holds too little to classify (a 1x1 upload is almost always a mistake or a probe)
MIN_SIDE = 8
# with `fit`, an image whose shorter side is at least twice this many times the model's input is reduced by a whole
# factor while decoding, to between this many and twice as many times: the model's own resize then starts from at
# least 4x its size, so the prediction barely moves, and a huge upload costs a small image's memory from the moment
# it is decoded
REDUCE_MARGIN = 4


class BadImageError(ValueError):
    """The input is not an image we can classify; the message says why in plain words."""


def open_rgb(source: bytes | str, name: str = "image", max_pixels: int = MAX_PIXELS,
             fit: int | None = None) -> Image.Image:
    """Decode `source` (bytes or a path) to an RGB image with EXIF rotation applied.

    Transparency is composited onto white (what a viewer shows), 16-bit and float images are
    scaled to 8 bits, CMYK/palette/greyscale are converted, and animated files give their first frame.
    `max_pixels` caps the pixels decoded (checked from the header, before decoding). With `fit` (a model's
    input size) large images are reduced as they are decoded (see REDUCE_MARGIN); a JPEG is decoded at 1/2,
    1/4 or 1/8 scale directly, so its pixels count against `max_pixels` at that scale.
    """
    if isinstance(source, (bytes, bytearray)) and len(source) == 0:
        raise BadImageError(f"{name} is empty (0 bytes).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = _open_drafted(source, fit)
            width, height = image.size
            if width * height > max_pixels:
                raise BadImageError(
                    f"{name} is {width}x{height} pixels; images above {max_pixels / 1_000_000:g} megapixels are refused."
                )
            image.seek(0)
            image.load()
            image = _reduce(image, fit, early=True)
    except BadImageError:
        raise
    except UnidentifiedImageError as e:
        raise BadImageError(f"{name} is not an image format we can read (PNG, JPEG, GIF, WebP, BMP, TIFF...); "
                            "it may be text, a document or a vector image such as SVG.") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError(f"{name} is too large to decode safely ({e}).") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # truncated or corrupt data surfaces as any of these, depending on the codec
        raise BadImageError(f"{name} could not be decoded; the file is corrupt or truncated ({e}).") from e
    if min(image.size) < MIN_SIDE:
        raise BadImageError(f"{name} is {image.size[0]}x{image.size[1]} pixels; images need at least "
                            f"{MIN_SIDE} pixels on each side.")
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not cost the user the prediction
        pass
    return _reduce(to_rgb(image), fit, early=False)


def pixels_to_decode(source: bytes | str, fit: int | None = None) -> int:
    """The pixels `open_rgb(source, fit=fit)` will decode, from the header alone; 0 for what is not an image
    (open_rgb then says why)."""
    try:
        with _open_drafted(source, fit) as image:
            return image.size[0] * image.size[1]
    except Exception:
        return 0


def _open_drafted(source: bytes | str, fit: int | None) -> Image.Image:
    """Image.open, and for a large JPEG a request to decode it at a reduced scale: the JPEG decoder itself scales
    by 1/2, 1/4 or 1/8, so the full-size pixels never exist."""
    image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
    factor = _reduce_factor(image.size, fit)
    if factor > 1 and image.format == "JPEG":
        image.draft(image.mode, (image.size[0] // factor, image.size[1] // factor))
    return image


def _reduce_factor(size: tuple[int, int], fit: int | None) -> int:
    return min(size) // (REDUCE_MARGIN * fit) if fit else 1


def _reduce(image: Image.Image, fit: int | None, early: bool) -> Image.Image:
    """Box-filter `image` down by an integer factor (see REDUCE_MARGIN). Early, in the decoded mode, so a greyscale
    giant is shrunk before it becomes 3 or 4 bytes a pixel; palette and 1-bit images (whose values are not
    intensities) and modes Pillow cannot reduce wait for the RGB conversion."""
    factor = _reduce_factor(image.size, fit)
    if factor < 2 or (early and image.mode in ("P", "PA", "1")):
        return image
    try:
        return image.reduce(factor)
    except ValueError:
        if early:
            return image
        raise


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit/float data: rescale its actual range to 0..255 instead of clipping to white
        lo, hi = image.getextrema()
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        image = image.point(lambda v: (v - lo) * scale).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "RGBa"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")
