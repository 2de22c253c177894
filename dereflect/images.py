"""Image read/write for the whole project: one place that knows about image files.

Everything else sees HxWx3 RGB arrays (uint8, or uint16 for 16-bit sources). What this module
takes care of so no one else has to:

- EXIF orientation is applied on read (the pixels come out the way the photo is meant to be
  seen) and the returned EXIF block says orientation 1, so writing it back cannot rotate twice.
- Grey, grey+alpha, palette, RGBA, CMYK, 16-bit grey and 16-bit RGB(A) all become RGB (+ alpha).
  Pillow decodes 16-bit RGB PNG only to 8 bits; we decode it twice through Pillow's own PNG
  decoder, once for the high and once for the low byte of every sample (tile rawmodes
  "RGB;16B" / "RGB;16L"), and 16-bit RGB TIFF with tifffile. Pillow writes no 48-bit PNG
  either, so 16-bit PNGs are written by a small encoder here (zlib, "Up" filter, iCCP, eXIf).
- Size limits are checked from the header before any pixel is decoded (decompression bombs).
- Animated / multi-page files: the first frame is used, with a MultiFrameWarning naming the file.
- CMYK: converted to sRGB through its ICC profile when it has one (the CMYK profile would
  mislabel RGB pixels, so the returned profile is then sRGB), else with Pillow's plain formula.
- Every problem is one DereflectError(path, problem); nothing half-read escapes. Pillow's plugins
  raise many exception types on malformed files (IndexError, TypeError, struct.error... found by
  fuzz/fuzz_decode.py), so decoding is guarded as a whole, not call by call.
- Only the formats we document are decoded (DECODE_FORMATS): every other Pillow plugin is attack
  surface without a use here.
- Writes are atomic: a temporary file in the target folder, then os.replace.

Do not enable ImageFile.LOAD_TRUNCATED_IMAGES: a truncated photo must be an error, not grey rows.
"""

from __future__ import annotations

import numbers
import os
import struct
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from dereflect.errors import DereflectError
from dereflect.files import new_file_mode

PathLike = Union[str, "os.PathLike[str]"]

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"})
#: Largest width*height read by default (checked from the header, before decoding): ~100 MP.
DEFAULT_MAX_PIXELS = 100_000_000
JPEG_QUALITY = 95
WEBP_QUALITY = 95

_ORIENTATION = 0x0112
_WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
_EIGHT_BIT_MODES = {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr"}
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
_GREY16_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)
#: Pillow format names read_image decodes (JPEG includes multi-picture MPO files from phones; GIF: first frame).
DECODE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class MultiFrameWarning(UserWarning):
    """An animated or multi-page file was read: only its first frame is used."""


@dataclass
class LoadedImage:
    """A decoded image with what must survive a round trip through the pipeline.

    pixels: HxWx3 RGB, uint8 (bit_depth 8) or uint16 (bit_depth 16), orientation applied.
    alpha: HxW, same dtype, or None. icc_profile: the embedded colour profile or None.
    exif: raw EXIF block (JPEG/PNG/WebP) with orientation reset to 1, or None.
    """

    pixels: np.ndarray
    alpha: Optional[np.ndarray]
    bit_depth: int
    icc_profile: Optional[bytes]
    exif: Optional[bytes]
    path: Path


# --------------------------------------------------------------------------------------- reading


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DereflectError(path, "no such file")
    if path.is_dir():
        raise DereflectError(path, "is a directory, not an image file")
    if path.stat().st_size == 0:
        raise DereflectError(path, "empty file (0 bytes)")


def _png_header_size(path: Path) -> Optional[tuple[int, int]]:
    """(width, height) from a PNG's IHDR, or None when the file is not a PNG."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    if len(head) < 24 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def _open(path: Path) -> Image.Image:
    """Image.open with our errors; Pillow's own bomb warning is silenced because our limit rules."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(path, formats=DECODE_FORMATS)
        except Image.DecompressionBombError as exc:
            raise DereflectError(path, f"too many pixels to decode safely ({exc})") from None
        except UnidentifiedImageError:
            size = _png_header_size(path)
            if size is not None and 0 in size:
                raise DereflectError(path, f"zero-size image ({size[0]}x{size[1]} pixels)") from None
            raise DereflectError(path, "not an image (or a format Pillow cannot read)") from None  # or not in DECODE_FORMATS
        except _DECODE_ERRORS as exc:
            raise DereflectError(path, f"corrupt image header ({exc})") from None


def _tile_rawmode(im: Image.Image) -> Optional[str]:
    """The raw mode of the first decoder tile (must be read before load(), which clears it)."""
    if not im.tile:
        return None
    args = im.tile[0][3]
    return args if isinstance(args, str) else (args[0] if args and isinstance(args[0], str) else None)


def _png_redecode(path: Path, rawmode: str) -> np.ndarray:
    """Decode a PNG again with another unpacker: same filters and bytes per pixel, other bytes kept."""
    with _open(path) as im:
        tile = im.tile[0]
        args = rawmode if isinstance(tile[3], str) else (rawmode, *tile[3][1:])
        im.tile = [ImageFile._Tile(tile[0], tile[1], tile[2], args)]
        try:
            im.load()
        except _DECODE_ERRORS as exc:
            raise DereflectError(path, f"corrupt or truncated image ({exc})") from None
        return np.asarray(im)


def _png16_colour(path: Path, rawmode: str, high_bytes: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """16-bit RGB / RGBA / grey+alpha PNG at full precision, from Pillow's own decoder."""
    if rawmode == "LA;16B":
        # "RGBA" has the same 4 bytes per pixel: R, G, B, A = L hi, L lo, A hi, A lo.
        raw = _png_redecode(path, "RGBA").astype(np.uint16)
        grey = raw[..., 0] << 8 | raw[..., 1]
        return np.repeat(grey[..., None], 3, axis=2), raw[..., 2] << 8 | raw[..., 3]
    low = _png_redecode(path, rawmode.replace(";16B", ";16L"))  # the other byte of each sample
    full = high_bytes.astype(np.uint16) << 8 | low
    return (full[..., :3], full[..., 3]) if full.shape[2] == 4 else (full, None)


def _tiff16_colour(path: Path) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """16-bit RGB(A) TIFF with tifffile (Pillow would keep only the high byte)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            arr = page.asarray()
            axes = page.axes
    except Exception as exc:  # tifffile raises many types; the message is what matters
        raise DereflectError(path, f"cannot decode this 16-bit TIFF ({exc})") from None
    if axes.startswith("S"):  # planar configuration: samples first
        arr = np.moveaxis(arr, 0, -1)
    if arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise DereflectError(path, f"unsupported 16-bit TIFF layout (axes {axes}, dtype {arr.dtype})")
    return (arr[..., :3], arr[..., 3]) if arr.shape[2] == 4 else (arr, None)


def _cmyk_to_rgb(im: Image.Image, icc: Optional[bytes]) -> tuple[Image.Image, Optional[bytes]]:
    """CMYK -> RGB through its ICC profile (then labelled sRGB), or Pillow's formula without one."""
    if icc:
        try:
            from io import BytesIO

            from PIL import ImageCms

            srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
            rgb = ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(BytesIO(icc)), srgb, outputMode="RGB")
            if rgb is not None:
                return rgb, srgb.tobytes()
        except Exception:  # a broken profile: fall back to the plain conversion below
            pass
    return im.convert("RGB"), None


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip HxW[xC] pixels as EXIF orientation 1-8 says (same result as ImageOps.exif_transpose)."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return arr[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


def _exif(p: Path, im: Image.Image) -> tuple[int, Optional[bytes]]:
    """(orientation 1-8, EXIF block with orientation reset to 1 or None). Broken EXIF in an image
    whose pixels decode is dropped with a warning, not an error: the photo is still usable."""
    try:
        exif_obj = im.getexif()
        value = exif_obj.get(_ORIENTATION, 1)
        orientation = int(value) if isinstance(value, numbers.Real) and 1 <= value <= 8 else 1
        exif = None
        if im.info.get("exif"):
            if _ORIENTATION in exif_obj:
                exif_obj[_ORIENTATION] = 1
            exif = exif_obj.tobytes()
        return orientation, exif
    except Exception as exc:  # noqa: BLE001 - Pillow's EXIF parser raises many types on bad blocks
        warnings.warn(f"{p}: unreadable EXIF metadata ignored ({type(exc).__name__}: {exc})", stacklevel=4)
        return 1, None


def read_image(path: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read PNG/JPEG/WebP/TIFF/BMP as RGB (+ alpha), orientation applied, metadata kept.

    Raises DereflectError(path, problem) for a missing/empty/corrupt/non-image file, an image
    with more than max_pixels pixels (checked before decoding), zero size or an unsupported mode.
    """
    p = Path(path)
    _check_file(p)
    try:
        return _decode(p, max_pixels)
    except DereflectError:
        raise
    except MemoryError:
        raise DereflectError(p, "not enough memory to decode this image") from None
    except RecursionError:
        raise DereflectError(p, "corrupt image (nested too deeply to parse)") from None
    except Exception as exc:  # noqa: BLE001 - a malformed file makes Pillow's plugins raise anything
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise DereflectError(p, f"corrupt image ({type(exc).__name__}{': ' + detail if detail else ''})") from None


def _check_size(p: Path, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise DereflectError(p, f"zero-size image ({width}x{height} pixels)")
    if width * height > max_pixels:
        raise DereflectError(p, f"too many pixels ({width}x{height} = {width * height:,}; limit {max_pixels:,})")


def _decode(p: Path, max_pixels: int) -> LoadedImage:
    """read_image's work, for a file that exists and is not empty (read_image guards the errors)."""
    with _open(p) as im:
        _check_size(p, *im.size, max_pixels)
        try:
            frames = getattr(im, "n_frames", 1)  # walks the frame table: a broken one raises here
        except _DECODE_ERRORS + (TypeError, KeyError) as exc:
            raise DereflectError(p, f"corrupt image: unreadable frame table ({type(exc).__name__}: {exc})") from None
        if frames > 1:
            warnings.warn(f"{p}: has {frames} frames; using the first", MultiFrameWarning, stacklevel=3)
        rawmode = _tile_rawmode(im)
        fmt = im.format
        try:
            im.load()
        except _DECODE_ERRORS as exc:
            raise DereflectError(p, f"corrupt or truncated image ({exc})") from None
        _check_size(p, *im.size, max_pixels)  # a few formats only know their real size after load()
        icc = im.info.get("icc_profile") or None
        orientation, exif = _exif(p, im)

        mode = im.mode
        alpha: Optional[np.ndarray] = None
        bits = getattr(im, "tag_v2", {}).get(258, 8) if fmt == "TIFF" else 8
        bits_per_sample = max(bits) if isinstance(bits, tuple) and bits else int(bits) if isinstance(bits, int) else 8
        if mode in _GREY16_MODES:
            grey = np.asarray(im).astype(np.uint16)
            pixels, bit_depth = np.repeat(grey[..., None], 3, axis=2), 16
        elif fmt == "PNG" and rawmode in ("RGB;16B", "RGBA;16B", "LA;16B"):
            pixels, alpha = _png16_colour(p, rawmode, np.asarray(im))
            bit_depth = 16
        elif fmt == "TIFF" and bits_per_sample == 16 and mode in ("RGB", "RGBA"):
            pixels, alpha = _tiff16_colour(p)
            bit_depth = 16
        elif mode in _ALPHA_MODES or (mode in _EIGHT_BIT_MODES and "transparency" in im.info):
            rgba = np.asarray(im.convert("RGBA"))
            pixels, alpha, bit_depth = rgba[..., :3], rgba[..., 3], 8
        elif mode == "CMYK":
            rgb_im, icc = _cmyk_to_rgb(im, icc)
            pixels, bit_depth = np.asarray(rgb_im), 8
        elif mode in _EIGHT_BIT_MODES:
            pixels, bit_depth = np.asarray(im if mode == "RGB" else im.convert("RGB")), 8  # RGB: no copy of a copy
        else:
            raise DereflectError(p, f"unsupported image mode {mode!r} (expected 8/16-bit grey, palette, RGB, RGBA or CMYK)")

    pixels = np.ascontiguousarray(apply_orientation(pixels, orientation))
    if alpha is not None:
        alpha = np.ascontiguousarray(apply_orientation(alpha, orientation))
    return LoadedImage(pixels=pixels, alpha=alpha, bit_depth=bit_depth, icc_profile=icc, exif=exif, path=p)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 with rounding (65535 -> 255, 257*k -> k); uint8 unchanged."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype != np.uint16:
        raise TypeError(f"expected uint8 or uint16 pixels, got {pixels.dtype}")
    return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def read_rgb(path: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """HxWx3 uint8 RGB (16-bit sources rounded down to 8 bits; alpha ignored)."""
    return to_uint8(read_image(path, max_pixels).pixels)


def to_float(pixels: np.ndarray) -> np.ndarray:
    """uint8/uint16 pixels -> float32 in [0,1]; float input is clipped. The one scaling rule the
    runtime, the benchmarks and training validation share."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) * np.float32(1.0 / 255.0)
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float32) * np.float32(1.0 / 65535.0)
    return np.clip(pixels.astype(np.float32, copy=False), 0.0, 1.0)


def from_float(values: np.ndarray, dtype: np.dtype = np.uint8) -> np.ndarray:
    """float [0,1] -> uint8/uint16 (clip, scale, round half to even); float32 for any other dtype.
    The one rounding rule, so scores computed anywhere match what `dereflect remove` writes."""
    if dtype in (np.uint8, np.uint16):
        scale = 255.0 if dtype == np.uint8 else 65535.0
        scaled = np.clip(values, 0.0, 1.0)  # the one new array: the same operations in place after it
        if scaled.dtype.kind != "f":
            return np.rint(scaled * scale).astype(dtype)
        scaled *= scale  # 12 MP: 4x fewer passes over memory than temporaries for each step
        return np.rint(scaled, out=scaled).astype(dtype)
    return values.astype(np.float32, copy=False)


def from_float_chw_into(values: np.ndarray, out: np.ndarray) -> None:
    """`out[...] = from_float(values.transpose(1, 2, 0), out.dtype)` for a channels-first float32
    `values` (C, H, W) and an HWC `out`, without the temporaries: `values` is overwritten (scratch).
    The same rounding rule; channel-by-channel copies because a strided copy with a last axis of 3
    is the slowest way numpy moves memory (12 MP: 14 vs 40 ms per 848-row band here)."""
    if out.dtype in (np.uint8, np.uint16):
        np.clip(values, 0.0, 1.0, out=values)
        values *= 255.0 if out.dtype == np.uint8 else 65535.0
        np.rint(values, out=values)
    for c in range(values.shape[0]):
        out[:, :, c] = values[c]  # a cast on assignment: exact for the rounded values in range


def read_rgb_float(path: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """HxWx3 float32 RGB in [0, 1]; 16-bit sources keep their precision."""
    img = read_image(path, max_pixels)
    scale = 255.0 if img.bit_depth == 8 else 65535.0
    return img.pixels.astype(np.float32) / np.float32(scale)


def list_images(folder: PathLike) -> list[Path]:
    """Image files directly in folder (by suffix, case-insensitive; hidden files skipped), sorted."""
    f = Path(folder)
    if not f.exists():
        raise DereflectError(f, "no such folder")
    if not f.is_dir():
        raise DereflectError(f, "is a file, not a folder of images")
    return sorted(p for p in f.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())


# --------------------------------------------------------------------------------------- writing


def _to_depth(path: Path, arr: np.ndarray, bit_depth: int, what: str) -> np.ndarray:
    """uint8 / uint16 / float in [0, 1] -> the requested depth (float rounded, clipped)."""
    if arr.dtype == np.uint8:
        return arr if bit_depth == 8 else arr.astype(np.uint16) * np.uint16(257)
    if arr.dtype == np.uint16:
        return arr if bit_depth == 16 else to_uint8(arr)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise DereflectError(path, f"{what} contain NaN or infinite values")
        top = 255.0 if bit_depth == 8 else 65535.0
        return np.round(np.clip(arr, 0.0, 1.0) * top).astype(np.uint8 if bit_depth == 8 else np.uint16)
    raise DereflectError(path, f"{what} must be uint8, uint16 or float in [0, 1], got {arr.dtype}")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _write_png16(fh, samples: np.ndarray, icc_profile: Optional[bytes], exif: Optional[bytes]) -> None:
    """A 16-bit PNG (grey, grey+alpha, RGB, RGBA from HxWxC uint16): Pillow cannot write 48/64-bit PNG."""
    h, w, c = samples.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = samples.astype(">u2").reshape(h, w * c).view(np.uint8)
    filtered = np.empty((h, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = 2  # "Up": each row minus the one above (vectorised; rows of photos are alike)
    filtered[0, 0] = 0
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 wraps modulo 256, as PNG wants
    out = [_PNG_SIGNATURE, _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))]
    if icc_profile:
        out.append(_png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile)))
    if exif:
        out.append(_png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    out.append(_png_chunk(b"IDAT", zlib.compress(filtered.tobytes(), 6)))
    out.append(_png_chunk(b"IEND", b""))
    fh.write(b"".join(out))


def _write_tiff16(fh, samples: np.ndarray, icc_profile: Optional[bytes]) -> None:
    """16-bit TIFF with tifffile (deflate). EXIF is not written: tifffile has no EXIF IFD writer."""
    from io import BytesIO

    import tifffile

    c = samples.shape[2]
    buf = BytesIO()  # tifffile wants a named file or a buffer; ours is an os.fdopen handle
    tifffile.imwrite(
        buf,
        samples[..., 0] if c == 1 else samples,
        photometric="minisblack" if c <= 2 else "rgb",
        extrasamples=["unassalpha"] if c in (2, 4) else None,
        compression="zlib",
        iccprofile=icc_profile,
        metadata=None,
    )
    fh.write(buf.getvalue())


def write_image(
    path: PathLike,
    pixels: np.ndarray,
    *,
    alpha: Optional[np.ndarray] = None,
    icc_profile: Optional[bytes] = None,
    exif: Optional[bytes] = None,
    bit_depth: Optional[int] = None,
    overwrite: bool = True,
) -> None:
    """Write HxWx3 (or HxW grey) pixels atomically; the format follows the suffix.

    pixels / alpha: uint8, uint16 or float in [0, 1]. bit_depth: 8 or 16 (default: 16 for uint16
    input, else 8); 16 only for PNG/TIFF (uint16 input to JPEG/WebP/BMP is rounded to 8 bits).
    JPEG is written at quality 95 and cannot hold alpha. ICC and EXIF are kept where the format
    holds them (not in BMP; no EXIF in 16-bit TIFF). The file appears complete or not at all:
    a temporary file beside it is renamed over the target, and removed if anything fails.
    """
    p = Path(path)
    fmt = _WRITE_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise DereflectError(p, f"cannot write {p.suffix or 'files without a suffix'!r}: use one of {', '.join(sorted(_WRITE_FORMATS))}")
    if not overwrite and p.exists():
        raise DereflectError(p, "already exists (not overwriting)")
    arr = np.asarray(pixels)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)) or 0 in arr.shape:
        raise DereflectError(p, f"pixels must be HxWx3 RGB or HxW grey, got shape {arr.shape}")
    if bit_depth is None:
        bit_depth = 16 if arr.dtype == np.uint16 and fmt in ("PNG", "TIFF") else 8
    if bit_depth not in (8, 16):
        raise DereflectError(p, f"bit depth must be 8 or 16, got {bit_depth}")
    if bit_depth == 16 and fmt not in ("PNG", "TIFF"):
        raise DereflectError(p, f"{fmt} holds 8 bits per channel: write .png or .tif for 16-bit")
    samples = _to_depth(p, arr, bit_depth, "pixels")
    if samples.ndim == 2:
        samples = samples[..., None]
    if alpha is not None:
        a = np.asarray(alpha)
        if a.shape != arr.shape[:2]:
            raise DereflectError(p, f"alpha has shape {a.shape} but pixels are {arr.shape[:2]}")
        if fmt == "JPEG":
            raise DereflectError(p, "JPEG cannot store alpha: write .png, .webp or .tif")
        samples = np.concatenate([samples, _to_depth(p, a, bit_depth, "alpha")[..., None]], axis=2)

    if not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    new_file_mode(fd)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            if bit_depth == 16 and fmt == "PNG":
                _write_png16(fh, samples, icc_profile, exif)
            elif bit_depth == 16:
                _write_tiff16(fh, samples, icc_profile)
            else:
                _write_pillow(fh, samples, fmt, icc_profile, exif)
        os.replace(tmp, p)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, (DereflectError, KeyboardInterrupt, SystemExit)):
            raise
        raise DereflectError(p, f"could not write the image ({exc})") from exc


def _write_pillow(fh, samples: np.ndarray, fmt: str, icc_profile: Optional[bytes], exif: Optional[bytes]) -> None:
    c = samples.shape[2]
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[c]
    im = Image.frombytes(mode, (samples.shape[1], samples.shape[0]), np.ascontiguousarray(samples).tobytes())
    options: dict = {}
    if fmt != "BMP":
        if icc_profile:
            options["icc_profile"] = icc_profile
        if exif:
            options["exif"] = exif
    if fmt == "JPEG":
        options["quality"] = JPEG_QUALITY
    elif fmt == "WEBP":
        options["quality"] = WEBP_QUALITY
    elif fmt == "TIFF":
        options["compression"] = "tiff_adobe_deflate"
    if fmt in ("WEBP", "BMP") and mode == "LA":  # no grey+alpha there: store RGBA
        im = im.convert("RGBA")
    im.save(fh, format=fmt, **options)
