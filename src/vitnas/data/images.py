"""Image files checked at prepare time and encoded for shards.

Every image is decoded once when a dataset is sharded, so a corrupt or truncated file, a
decompression bomb (more pixels than PIL's `Image.MAX_IMAGE_PIXELS`) or a non-image file is one line
naming its path before any training, not a crash in a DataLoader worker hours later. With
`skip_bad` such files are left out and counted instead.
"""

from __future__ import annotations

import io
import warnings
from pathlib import PurePosixPath

import numpy as np
from PIL import Image

PNG_UP_TO = 64  # pre-resized images up to this size are stored as PNG
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class BadImage(ValueError):
    """A file that is not a readable image of a sane size."""


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _open(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise BadImage(f"decompression bomb ({str(e).split('.')[0][:120]})") from None
        except Exception as e:  # PIL raises many types for corrupt files
            raise BadImage(f"not a readable image ({type(e).__name__}: {str(e)[:100]})") from None
    return im


def encode_file(data: bytes, name: str, in_chans: int, store_size: int | None) -> tuple[bytes, str]:
    """(bytes, extension) to store for an image file: its original bytes (checked by decoding), or
    the image converted to the dataset's channels and shrunk so its shorter side is `store_size`,
    re-encoded as PNG up to 64 px (lossless, and the fastest to decode at that size) and above that
    as JPEG (quality 95) when it was a JPEG (PNG decodes slower than the JPEG it replaces at 256 px;
    benchmarks/loader_throughput.py), else as PNG."""
    im = _open(data)
    if store_size is None:
        ext = PurePosixPath(name).suffix.lower().lstrip(".") or "img"
        return data, ext[:8]
    was_jpeg = im.format == "JPEG"
    im = im.convert("L" if in_chans == 1 else "RGB")
    short = min(im.size)
    if short > store_size:
        w, h = im.size
        im = im.resize((max(1, round(w * store_size / short)), max(1, round(h * store_size / short))),
                       Image.Resampling.BICUBIC)
    if was_jpeg and store_size > PNG_UP_TO:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=95)
        return buf.getvalue(), "jpg"
    return png(im), "png"


def encode_array(image: np.ndarray) -> bytes:
    """PNG of a uint8 HWC array (lossless: decoding gives the same pixels)."""
    return png(Image.fromarray(image[..., 0], mode="L") if image.shape[-1] == 1 else Image.fromarray(image))


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
