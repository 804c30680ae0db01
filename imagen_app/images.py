"""Image helpers shared by the pipeline, the UI, training and evaluation: tensors <-> PIL, grids, and reading an image
a user sent (`read_image`: the formats and the largest size accepted, every bad file refused with a message)."""
from __future__ import annotations

import base64
import binascii
import io
import os
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from diffusers.utils import make_image_grid
from PIL import Image, ImageOps, UnidentifiedImageError


def to_pil(x: torch.Tensor) -> List[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> B PIL images."""
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def ink_mask(pixels: np.ndarray, level: int) -> np.ndarray:
    """(H, W) bool: the pixels of an (H, W, 3) uint8 image on white that are ink, darker than white by more than
    `level` in some channel (what the scene renders are cropped to, the grounding masks and the GenEval detector
    read, each at its own level)."""
    return (255 - pixels.astype(int)).max(axis=2) > level


def pixels_to_tensor(pixels) -> torch.Tensor:
    """(N, H, W, 3) uint8 pixels (an array, or a sequence of (H, W, 3) arrays) -> (N, 3, H, W) float32 in [-1, 1].
    Always a copy, so read-only memory maps are fine."""
    arr = np.stack([np.asarray(p, dtype=np.float32) for p in pixels]) if isinstance(pixels, (list, tuple)) \
        else np.array(pixels, dtype=np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1


def pil_to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images (all one size) -> (B, 3, H, W) float32 in [-1, 1]."""
    return pixels_to_tensor([np.asarray(im.convert("RGB")) for im in images])


def image_grid(images: Sequence[Image.Image], cols: Optional[int] = None, fill: str = "white") -> Image.Image:
    """The images in rows of `cols` (default: 2, or 1 for a single image); empty cells are `fill`.
    One image comes back as it is."""
    images = list(images)
    if len(images) == 1:
        return images[0]
    cols = cols or 2
    rows = (len(images) + cols - 1) // cols
    blank = Image.new("RGB", images[0].size, fill)
    return make_image_grid(images + [blank] * (rows * cols - len(images)), rows=rows, cols=cols)


# ----- reading an image a user sent (the app's /edit and /upscale) ---------------------------------------------------
# The formats read (Pillow's names) and how messages call them; any other file is refused before it is decoded.
ACCEPTED_FORMATS: Dict[str, str] = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "GIF": "GIF", "BMP": "BMP"}
# The largest image read, each side in pixels (4096 x 4096 = 16.8 megapixels, 64 MiB as RGBA): checked from the file's
# header before any pixel is decoded, so that a small file that claims 16000 x 16000 px (a "decompression bomb")
# costs nothing.
MAX_IMAGE_SIDE = 4096


class ImageInputError(ValueError):
    """An image that cannot be used; its message names the input, says what is wrong and what is accepted."""


def accepted_images(max_side: int = MAX_IMAGE_SIDE) -> str:
    """What `read_image` accepts, in words."""
    names = list(ACCEPTED_FORMATS.values())
    return f"{', '.join(names[:-1])} or {names[-1]} files of at most {max_side} x {max_side} pixels"


def read_image(source, what: str = "The image", mode: Optional[str] = "RGB", max_side: int = MAX_IMAGE_SIDE,
               name: Optional[str] = None) -> Image.Image:
    """A user's image as a decoded PIL image in `mode` (None: its own mode), its EXIF orientation applied.

    `source`: a PIL image, a numpy array ((H, W), (H, W, 1/3/4); uint8, bool, or floats in [0, 1]), a file path,
    the bytes of a file, a "data:" URL, or a file record (a dict or object with a "path" or "url", such as Gradio's
    FileData; its "orig_name" is the file's name as the user had it). Files are read only in ACCEPTED_FORMATS, and
    their size is checked from the header before decoding (at most `max_side` pixels a side). Anything else raises
    an ImageInputError whose message starts with `what` ("The image", "The mask"), says what is wrong (not an
    image file, an empty file, cut short, too large: W x H, an SVG drawing, ...) and what is accepted."""
    accepted = accepted_images(max_side)

    def refuse(problem: str) -> ImageInputError:
        named = what
        if name:  # the file's name beside the input's: "The image (image: photo.png)", "The mask (photo.png)"
            named = f"{what[:-1]}: {name})" if what.endswith(")") else f"{what} ({name})"
        return ImageInputError(f"{named} {problem}. Accepted: {accepted}.")

    if isinstance(source, Image.Image):
        _check_size(source.size, max_side, refuse)
        return _in_mode(source, mode, refuse)
    if isinstance(source, np.ndarray):
        return _in_mode(_array_image(source, max_side, refuse), mode, refuse)
    record = source if isinstance(source, dict) else None
    if record is None and hasattr(source, "path") and not isinstance(source, (str, bytes, os.PathLike)):
        record = {k: getattr(source, k, None) for k in ("path", "url", "orig_name")}
    if record is not None:  # a file record: its path, else a data: URL
        name = name or (os.path.basename(record["orig_name"]) if isinstance(record.get("orig_name"), str) else None)
        if isinstance(record.get("path"), str):
            source = record["path"]
        elif isinstance(record.get("url"), str) and record["url"].startswith("data:"):
            source = record["url"]
        else:
            raise refuse(f"must be an image file; got a record without a file path ({short_repr(record)})")
    if isinstance(source, str) and source.startswith("data:"):
        try:
            header, payload = source.split(",", 1)
            source = base64.b64decode(payload, validate=True) if header.endswith(";base64") else payload.encode()
        except (ValueError, binascii.Error):
            raise refuse("is a data: URL whose contents are not base64 (data:image/png;base64,...)") from None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        name = name or os.path.basename(path)
        try:
            with open(path, "rb") as f:
                data = f.read(_max_file_bytes(max_side) + 1)
        except FileNotFoundError:
            raise refuse("could not be read: there is no such file") from None
        except (IsADirectoryError, PermissionError, OSError) as e:
            raise refuse(f"could not be read ({type(e).__name__})") from None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        raise refuse(f"must be an image file, got {type(source).__name__} {short_repr(source)}")
    return _in_mode(_decode(data, name, max_side, refuse), mode, refuse)


def short_repr(value) -> str:
    """repr(value), cut to 60 characters: how a message quotes a value a user sent."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _max_file_bytes(max_side: int) -> int:
    """The largest file read: an uncompressed image of max_side x max_side RGBA pixels, with room for metadata."""
    return max_side * max_side * 4 + (1 << 20)


def _check_size(size, max_side: int, refuse) -> None:
    w, h = size
    if w > max_side or h > max_side:
        raise refuse(f"is too large: {w} x {h} pixels")
    if w < 1 or h < 1:
        raise refuse(f"has no pixels ({w} x {h})")


def _array_image(arr: np.ndarray, max_side: int, refuse) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise refuse(f"must be an array of shape (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    _check_size((arr.shape[1], arr.shape[0]), max_side, refuse)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise refuse("is an array of floats that are not all in [0, 1]")
        arr = np.rint(arr * 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 255:
            raise refuse(f"is an array of {arr.dtype} values outside 0..255")
        arr = arr.astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr))


def _looks_like_svg(head: bytes, name: Optional[str]) -> bool:
    if name and os.path.splitext(name)[1].lower() in (".svg", ".svgz"):
        return True
    text = head[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith(b"<svg") or (text.startswith((b"<?xml", b"<!doctype svg", b"<!--")) and b"<svg" in text)


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head[:1024].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n" for c in text)


# How files start: the accepted formats, and formats that are refused by name.
SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
              (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"%PDF", "PDF"), (b"8BPS", "Photoshop (PSD)"),
              (b"\x00\x00\x01\x00", "ICO"), (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
              (b"qoif", "QOI"), (b"\x76\x2f\x31\x01", "OpenEXR"), (b"PK\x03\x04", "ZIP archive"))


def _signature(head: bytes) -> Optional[str]:
    """The format a file's first bytes announce (None: none known)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[4:8] == b"ftyp":  # ISO media: HEIC, AVIF, MP4, ...
        brand = head[8:12].decode("latin-1").strip().lower()
        return "AVIF" if brand.startswith("avi") else "HEIC" if brand.startswith(("hei", "mif")) else "MP4/ISO media"
    return next((name for magic, name in SIGNATURES if head.startswith(magic)), None)


def _header_size(data: bytes):
    """(width, height) from the header of an image in ACCEPTED_FORMATS, without decoding or Pillow's bomb check
    (None where no format knows the file)."""
    Image.init()
    for fmt in ACCEPTED_FORMATS:
        factory, accept = Image.OPEN.get(fmt, (None, None))
        if factory is None or (accept is not None and not accept(data[:16])):
            continue
        try:
            return factory(io.BytesIO(data), None).size
        except Exception:  # noqa: BLE001 - the next format, or unknown
            continue
    return None


def _unidentified(data: bytes) -> str:
    """What is wrong with a file that no accepted format reads."""
    kind = _signature(data)
    accepted = ACCEPTED_FORMATS.values()
    if kind in accepted:
        return f"is {_a(kind)} file that is cut short or damaged: its header could not be read"
    if kind is not None:
        return f"is {_a(kind)} file: {kind} is not accepted; convert it to PNG"
    if _looks_like_text(data):
        return "is a text file, not an image"
    return "is not an image file: its first bytes are not those of any accepted format"


def _a(word: str) -> str:
    return ("an " if word[0] in "AEFHILMNORSX" else "a ") + word  # as the letter's name is said: an ICO, an SVG


def _undecodable(data: bytes, error: Exception) -> str:
    """What is wrong with a file of an accepted format whose header or pixels could not be decoded."""
    kind = _signature(data) or "image"
    if "truncated" in str(error).lower() or isinstance(error, EOFError):
        return f"is cut short: the {kind} file ends before its image data does (an incomplete upload or copy?)"
    return f"is cut short or damaged: the {kind} file's data could not be decoded ({type(error).__name__})"


def _decode(data: bytes, name: Optional[str], max_side: int, refuse) -> Image.Image:
    """The image in `data` (a whole file), decoded after its header's size was checked."""
    if not data:
        raise refuse("is an empty file (0 bytes)")
    if len(data) > _max_file_bytes(max_side):
        raise refuse(f"is too large a file (over {_max_file_bytes(max_side) // (1 << 20)} MiB)")
    if _looks_like_svg(data, name):
        raise refuse("is an SVG drawing: SVG (vector graphics) is not accepted; export it as a PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # refused, not decoded
        try:
            im = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            size = _header_size(data)
            raise refuse(f"is too large: {size[0]} x {size[1]} pixels" if size else "is too large") from None
        except UnidentifiedImageError:
            raise refuse(_unidentified(data)) from None
        except Exception as e:  # noqa: BLE001 - a header Pillow recognised but could not parse
            raise refuse(_undecodable(data, e)) from None
        _check_size(im.size, max_side, refuse)
        try:
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise refuse(f"is too large: {im.size[0]} x {im.size[1]} pixels") from None
        except Exception as e:  # noqa: BLE001 - OSError "truncated", EOFError, SyntaxError, zlib errors, ...
            raise refuse(_undecodable(data, e)) from None
    try:
        im = ImageOps.exif_transpose(im) or im
    except Exception:  # noqa: BLE001 - a damaged EXIF block: the pixels as stored
        pass
    return im


def _in_mode(im: Image.Image, mode: Optional[str], refuse) -> Image.Image:
    if mode is None or im.mode == mode:
        return im
    try:
        if mode == "RGB" and ("A" in im.getbands() or "transparency" in im.info):  # transparent pixels on white
            rgba = im.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", im.size, "white"), rgba).convert("RGB")
        return im.convert(mode)
    except Exception as e:  # noqa: BLE001 - a pixel format Pillow cannot convert
        raise refuse(f"has a pixel format ({im.mode}) that cannot be converted to {mode} ({type(e).__name__})") from None
