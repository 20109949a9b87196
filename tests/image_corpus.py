"""Uploads a user might send: images in every mode we must classify, and files we must refuse clearly."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# name -> regex the error message must match
BAD = {
    "text.png": "not an image format",
    "truncated.jpg": "corrupt or truncated",
    "empty.png": "empty",
    "drawing.svg": "not an image format",
    "bomb.png": "megapixels|too large",
    "one_pixel.png": "at least 8 pixels",
}
GOOD = ["grey.png", "rgba.png", "palette.png", "cmyk.jpg", "sixteen_bit.png", "exif_rotated.jpg", "animated.gif"]


def write_corpus(folder: Path, reference: Image.Image) -> Path:
    """`reference`: an RGB image the model classifies confidently; every GOOD file shows the same picture."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "text.png").write_text("this is plain text, renamed to .png")
    jpeg = io.BytesIO()
    reference.save(jpeg, "JPEG", quality=95)
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
                                        '<circle cx="32" cy="32" r="20" fill="red"/></svg>')
    Image.new("1", (30000, 30000)).save(folder / "bomb.png")  # 2.7 GB of RGB pixels, 100 kB on disk
    Image.new("RGB", (1, 1), (200, 30, 30)).save(folder / "one_pixel.png")

    grey = np.asarray(reference.convert("L")).copy()
    grey[0, 0], grey[0, 1] = 0, 255  # full range, so the 16-bit copy rescales to exactly this
    Image.fromarray(grey).save(folder / "grey.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "sixteen_bit.png")
    rgba = reference.copy()
    rgba.putalpha(255)
    rgba.save(folder / "rgba.png")
    reference.quantize(256).save(folder / "palette.png")
    reference.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    # stored rotated, with the EXIF orientation that tells viewers to rotate it back (6 = rotate 270° to view)
    exif = Image.Exif()
    exif[0x0112] = 6
    reference.transpose(Image.Transpose.ROTATE_90).save(folder / "exif_rotated.jpg", quality=95, exif=exif)
    other = Image.new("RGB", reference.size, (0, 0, 0))
    reference.save(folder / "animated.gif", save_all=True, append_images=[other, other], duration=100, loop=0)
    return folder
