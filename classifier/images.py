"""Turn whatever bytes a user or a dataset hands us into an RGB PIL image, or say clearly why not."""
from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own bomb guard warns at ~89 MP and raises at twice that; we raise at the warning level
# so a 30000x30000 upload is refused before it is decoded into 2.7 GB of pixels.
MAX_PIXELS = 89_478_485
# below this the image holds too little to classify (a 1x1 upload is almost always a mistake or a probe)
MIN_SIDE = 8


class BadImageError(ValueError):
    """The input is not an image we can classify; the message says why in plain words."""


def open_rgb(source: bytes | str, name: str = "image") -> Image.Image:
    """Decode `source` (bytes or a path) to an RGB image with EXIF rotation applied.

    Transparency is composited onto white (what a viewer shows), 16-bit and float images are
    scaled to 8 bits, CMYK/palette/greyscale are converted, and animated files give their first frame.
    """
    if isinstance(source, (bytes, bytearray)) and len(source) == 0:
        raise BadImageError(f"{name} is empty (0 bytes).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise BadImageError(
                    f"{name} is {width}x{height} pixels; images above {MAX_PIXELS // 1_000_000} megapixels are refused."
                )
            image.seek(0)
            image.load()
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
    return to_rgb(image)


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
