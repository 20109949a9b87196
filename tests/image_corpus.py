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
    "one_by_10000.png": "at least 8 pixels",
    "truncated.png": "corrupt or truncated",
    "document.pdf": "not an image format",
    "archive.zip": "not an image format",
    "page.html": "not an image format",
    "huge_text_chunk.png": "too large|corrupt",
}
# decoded to the reference picture, colours intact: the model must give the reference's class
GOOD = ["rgba.png", "palette.png", "palette_transparency.png", "cmyk.jpg", "exif_rotated.jpg", "broken_exif.jpg",
        "animated.gif", "multi_frame.tiff", "multi_picture.mpo", "png_named.jpg", "image.webp", "image.bmp",
        "image.tiff", "progressive.jpg", "icon.ico"]
# colour is gone (greyscale variants): a valid prediction is all that can be asked
GREY = ["grey.png", "sixteen_bit.png", "grey_alpha.png", "one_bit.png", "int32.tiff", "float32.tiff"]


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

    # more refusals
    Image.new("RGB", (1, 10000), (200, 30, 30)).save(folder / "one_by_10000.png")
    png = io.BytesIO()
    reference.save(png, "PNG")
    (folder / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (folder / "document.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n")
    import zipfile

    with zipfile.ZipFile(folder / "archive.zip", "w") as z:
        z.writestr("inside.txt", "hello")
    (folder / "page.html").write_text("<!doctype html><html><body><img src='cat.png'></body></html>")
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (80 * 2**20), zip=True)  # 80 MB of text once inflated, in a few kB
    reference.save(folder / "huge_text_chunk.png", pnginfo=info)

    # more pictures to classify
    with_hole = reference.convert("RGBA")
    with_hole.putpixel((0, 0), (0, 0, 0, 0))
    with_hole.quantize(255).save(folder / "palette_transparency.png", transparency=0)
    upright = io.BytesIO()
    exif[0x0112] = 1
    reference.save(upright, "JPEG", quality=95, exif=exif)
    broken = upright.getvalue()
    start = broken.index(b"Exif")  # keep the APP1 marker and length, scramble the TIFF structure inside it
    (folder / "broken_exif.jpg").write_bytes(broken[:start + 6] + b"MM\x00\x2a\xff\xff\xff\xff" + broken[start + 14:])
    reference.save(folder / "multi_frame.tiff", save_all=True, append_images=[other])
    reference.save(folder / "multi_picture.mpo", save_all=True, append_images=[other])
    reference.save(folder / "png_named.jpg", format="PNG")
    reference.save(folder / "image.webp", lossless=True)
    reference.save(folder / "image.bmp")
    reference.save(folder / "image.tiff")
    reference.save(folder / "progressive.jpg", quality=95, progressive=True)
    reference.save(folder / "icon.ico", sizes=[reference.size])
    Image.fromarray(grey).convert("LA").save(folder / "grey_alpha.png")
    Image.fromarray(grey).convert("1").save(folder / "one_bit.png")
    Image.fromarray(grey.astype(np.int32) * 1000).save(folder / "int32.tiff")
    Image.fromarray(grey.astype(np.float32) / 255).save(folder / "float32.tiff")
    return folder
