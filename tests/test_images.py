"""Image IO: every mode to RGB, orientation, 16 bits, metadata, atomic writes, one clear error each."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms, ImageOps

from dereflect.errors import DereflectError
from dereflect.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    MultiFrameWarning,
    apply_orientation,
    list_images,
    read_image,
    read_rgb,
    read_rgb_float,
    to_uint8,
    write_image,
)

SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_bytes(width: int, height: int, depth: int, colour_type: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _png16_all_filters(samples: np.ndarray) -> bytes:
    """Independent 16-bit PNG encoder cycling through all five row filters (0-4)."""
    h, w, c = samples.shape
    raw = samples.astype(">u2").reshape(h, w * c).view(np.uint8).astype(np.int32)
    bpp = 2 * c
    out = bytearray()
    for y in range(h):
        ftype = y % 5
        x = raw[y]
        up = raw[y - 1] if y else np.zeros_like(x)
        left = np.concatenate([np.zeros(bpp, np.int32), x[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), up[:-bpp]])
        if ftype == 0:
            pred = np.zeros_like(x)
        elif ftype == 1:
            pred = left
        elif ftype == 2:
            pred = up
        elif ftype == 3:
            pred = (left + up) // 2
        else:
            p = left + up - upleft
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        out.append(ftype)
        out += ((x - pred) % 256).astype(np.uint8).tobytes()
    return _png_bytes(w, h, 16, {3: 2, 4: 6, 2: 4}[c], zlib.compress(bytes(out)))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


# ------------------------------------------------------------------------------------ round trips


def test_png8_round_trip_with_alpha(tmp_path: Path, photo: np.ndarray, rng: np.random.Generator) -> None:
    alpha = rng.integers(0, 256, photo.shape[:2], dtype=np.uint8)
    write_image(tmp_path / "a.png", photo, alpha=alpha)
    img = read_image(tmp_path / "a.png")
    assert img.bit_depth == 8 and img.pixels.dtype == np.uint8
    np.testing.assert_array_equal(img.pixels, photo)
    np.testing.assert_array_equal(img.alpha, alpha)
    assert img.path == tmp_path / "a.png"


@pytest.mark.parametrize("channels", [3, 4])
def test_png16_colour_decodes_every_filter_exactly(tmp_path: Path, rng: np.random.Generator, channels: int) -> None:
    samples = rng.integers(0, 65536, (23, 17, channels), dtype=np.uint16)
    (tmp_path / "f.png").write_bytes(_png16_all_filters(samples))
    img = read_image(tmp_path / "f.png")
    assert img.bit_depth == 16 and img.pixels.dtype == np.uint16
    np.testing.assert_array_equal(img.pixels, samples[..., :3])
    if channels == 4:
        np.testing.assert_array_equal(img.alpha, samples[..., 3])
    else:
        assert img.alpha is None


def test_png16_grey_alpha_is_read_at_full_precision(tmp_path: Path, rng: np.random.Generator) -> None:
    samples = rng.integers(0, 65536, (9, 11, 2), dtype=np.uint16)
    (tmp_path / "la.png").write_bytes(_png16_all_filters(samples))
    img = read_image(tmp_path / "la.png")
    np.testing.assert_array_equal(img.pixels, np.repeat(samples[..., :1], 3, axis=2))
    np.testing.assert_array_equal(img.alpha, samples[..., 1])


def test_png16_write_round_trip_with_alpha_and_icc(tmp_path: Path, rng: np.random.Generator) -> None:
    px = rng.integers(0, 65536, (31, 45, 3), dtype=np.uint16)
    alpha = rng.integers(0, 65536, (31, 45), dtype=np.uint16)
    write_image(tmp_path / "x.png", px, alpha=alpha, icc_profile=SRGB_ICC)
    img = read_image(tmp_path / "x.png")
    assert img.bit_depth == 16
    np.testing.assert_array_equal(img.pixels, px)
    np.testing.assert_array_equal(img.alpha, alpha)
    assert img.icc_profile == SRGB_ICC
    # And an independent decoder (Pillow's 8-bit path) sees the high bytes.
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "x.png"))[..., :3], (px >> 8).astype(np.uint8))


def test_png16_grey_from_pillow(tmp_path: Path, rng: np.random.Generator) -> None:
    grey = rng.integers(0, 65536, (12, 10), dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    img = read_image(tmp_path / "g16.png")
    assert img.bit_depth == 16
    np.testing.assert_array_equal(img.pixels, np.repeat(grey[..., None], 3, axis=2))
    write_image(tmp_path / "g16b.png", grey)  # grey uint16 in -> 16-bit grey PNG out
    assert Image.open(tmp_path / "g16b.png").mode == "I;16"
    np.testing.assert_array_equal(read_image(tmp_path / "g16b.png").pixels[..., 0], grey)


def test_tiff16_round_trip_and_planar_tiff(tmp_path: Path, rng: np.random.Generator) -> None:
    px = rng.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    write_image(tmp_path / "x.tif", px, icc_profile=SRGB_ICC)
    img = read_image(tmp_path / "x.tif")
    assert img.bit_depth == 16 and img.icc_profile == SRGB_ICC
    np.testing.assert_array_equal(img.pixels, px)
    tifffile.imwrite(tmp_path / "planar.tiff", np.moveaxis(px, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tiff").pixels, px)


def test_16bit_conversions(tmp_path: Path) -> None:
    px = np.array([[[0, 128, 257], [32896, 65407, 65535]]], dtype=np.uint16)  # 1x2x3
    np.testing.assert_array_equal(to_uint8(px), [[[0, 0, 1], [128, 255, 255]]])
    write_image(tmp_path / "p.png", px)
    assert read_rgb(tmp_path / "p.png").dtype == np.uint8
    np.testing.assert_array_equal(read_rgb(tmp_path / "p.png"), to_uint8(px))
    as_float = read_rgb_float(tmp_path / "p.png")
    assert as_float.dtype == np.float32
    np.testing.assert_allclose(as_float, px / 65535.0, atol=1e-7)
    # uint16 to JPEG: rounded to 8 bits; explicitly asking 16 bits there is refused.
    write_image(tmp_path / "p.jpg", np.zeros((8, 8, 3), np.uint16))
    assert read_image(tmp_path / "p.jpg").bit_depth == 8
    with pytest.raises(DereflectError, match="8 bits per channel"):
        write_image(tmp_path / "q.jpg", px, bit_depth=16)


def test_float_input_is_converted_to_the_requested_depth(tmp_path: Path) -> None:
    f = np.array([[[0.0, 0.5, 1.0], [1.2, -0.1, 0.25]]], np.float32)
    write_image(tmp_path / "f8.png", f)
    np.testing.assert_array_equal(read_image(tmp_path / "f8.png").pixels, [[[0, 128, 255], [255, 0, 64]]])
    write_image(tmp_path / "f16.png", f, bit_depth=16)
    np.testing.assert_array_equal(read_image(tmp_path / "f16.png").pixels, [[[0, 32768, 65535], [65535, 0, 16384]]])
    with pytest.raises(DereflectError, match="NaN"):
        write_image(tmp_path / "nan.png", np.full((2, 2, 3), np.nan))


@pytest.mark.parametrize("suffix", [".jpg", ".JPEG", ".webp", ".tif", ".bmp"])
def test_8bit_formats_round_trip(tmp_path: Path, photo: np.ndarray, suffix: str) -> None:
    write_image(tmp_path / f"x{suffix}", photo)
    got = read_rgb(tmp_path / f"x{suffix}")
    assert got.shape == photo.shape
    if suffix in (".tif", ".bmp"):
        np.testing.assert_array_equal(got, photo)
    else:  # lossy at quality 95: close, not equal
        assert np.abs(got.astype(int) - photo).mean() < 3.0


# ------------------------------------------------------------------------------------ metadata


def _asymmetric(h: int = 40, w: int = 60) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:10, :20] = (255, 0, 0)  # red top-left block
    img[-5:, :, 2] = 255  # blue bottom rows
    return img


def test_jpeg_exif_orientation_6_is_applied_and_reset(tmp_path: Path) -> None:
    src = Image.fromarray(_asymmetric())
    exif = src.getexif()
    exif[0x0112] = 6
    exif[0x010F] = "TestCam"  # Make: must survive
    src.save(tmp_path / "o6.jpg", exif=exif.tobytes(), quality=95)
    img = read_image(tmp_path / "o6.jpg")
    assert img.pixels.shape == (60, 40, 3)  # rotated 90 degrees clockwise
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o6.jpg")).convert("RGB"))
    np.testing.assert_array_equal(img.pixels, expected)
    assert img.pixels[:20, -10:, 0].mean() > 200  # the red block went to the top-right
    out_exif = Image.Exif()
    out_exif.load(img.exif)
    assert out_exif[0x0112] == 1 and out_exif[0x010F] == "TestCam"
    write_image(tmp_path / "again.jpg", img.pixels, exif=img.exif)
    again = read_image(tmp_path / "again.jpg")
    assert again.pixels.shape == (60, 40, 3)  # not rotated a second time
    assert Image.open(tmp_path / "again.jpg").getexif()[0x010F] == "TestCam"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow(tmp_path: Path, orientation: int) -> None:
    src = Image.fromarray(_asymmetric(7, 12))
    exif = src.getexif()
    exif[0x0112] = orientation
    src.save(tmp_path / "o.png", exif=exif.tobytes())  # lossless, so pixels compare exactly
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")))
    np.testing.assert_array_equal(read_rgb(tmp_path / "o.png"), expected)
    np.testing.assert_array_equal(apply_orientation(np.asarray(src), orientation), expected)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tif"])
def test_icc_profile_and_exif_kept_through_write(tmp_path: Path, photo: np.ndarray, suffix: str) -> None:
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    write_image(tmp_path / f"x{suffix}", photo[:64, :64], icc_profile=SRGB_ICC, exif=exif.tobytes())
    img = read_image(tmp_path / f"x{suffix}")
    assert img.icc_profile == SRGB_ICC
    assert Image.open(tmp_path / f"x{suffix}").getexif().get(0x010F) == "TestCam"


def test_png16_keeps_exif(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    write_image(tmp_path / "e.png", np.zeros((4, 5, 3), np.uint16), exif=exif.tobytes())
    assert Image.open(tmp_path / "e.png").getexif()[0x010F] == "TestCam"
    assert read_image(tmp_path / "e.png").exif is not None


# ------------------------------------------------------------------------------------ modes


def test_grey_palette_and_alpha_modes_become_rgb(tmp_path: Path, photo: np.ndarray) -> None:
    base = Image.fromarray(photo[:32, :48])
    grey = base.convert("L")
    grey.save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "l.png"), np.repeat(np.asarray(grey)[..., None], 3, axis=2))

    la = base.convert("LA")
    la.save(tmp_path / "la.png")
    img = read_image(tmp_path / "la.png")
    np.testing.assert_array_equal(img.alpha, np.asarray(la)[..., 1])

    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))

    pal.info["transparency"] = 0
    pal.save(tmp_path / "pt.png", transparency=0)
    img = read_image(tmp_path / "pt.png")
    assert img.alpha is not None and set(np.unique(img.alpha)) <= {0, 255}
    assert (img.alpha == 0).sum() == (np.asarray(pal) == 0).sum()

    base.convert("1").save(tmp_path / "b.bmp")
    assert set(np.unique(read_rgb(tmp_path / "b.bmp"))) <= {0, 255}


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :8] = (200, 30, 30)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    img = read_image(tmp_path / "c.jpg")
    assert img.pixels.shape == (16, 16, 3) and img.bit_depth == 8
    assert np.abs(img.pixels.astype(int) - rgb).max() < 12


def test_animated_gif_uses_first_frame_with_a_warning(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 6), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    with pytest.warns(MultiFrameWarning, match=r"a\.gif.*2 frames"):
        px = read_rgb(tmp_path / "a.gif")
    assert tuple(px[0, 0]) == (255, 0, 0)


# ------------------------------------------------------------------------------------ bad input


def _error(path: Path, **kwargs) -> str:
    with pytest.raises(DereflectError) as info:
        read_image(path, **kwargs)
    assert info.value.path == str(path)
    return info.value.problem


def test_missing_directory_and_empty_files(tmp_path: Path) -> None:
    assert _error(tmp_path / "nope.png") == "no such file"
    assert _error(tmp_path) == "is a directory, not an image file"
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert _error(tmp_path / "empty.jpg") == "empty file (0 bytes)"


def test_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("this is not a picture\n")
    assert _error(tmp_path / "notes.png") == "not an image (or a format Pillow cannot read)"


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_images(tmp_path: Path, photo: np.ndarray, suffix: str) -> None:
    write_image(tmp_path / f"full{suffix}", photo)
    data = (tmp_path / f"full{suffix}").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    assert _error(tmp_path / f"cut{suffix}").startswith("corrupt or truncated image (image file is truncated")


def test_too_many_pixels_is_checked_before_decoding(tmp_path: Path) -> None:
    # A header that claims 20000x20000 with no pixel data at all: decoding would fail as
    # "corrupt"; the size check must come first, with the default limit.
    (tmp_path / "bomb.png").write_bytes(_png_bytes(20000, 20000, 8, 2, zlib.compress(b"")))
    problem = _error(tmp_path / "bomb.png")
    assert problem.startswith("too many pixels")
    assert "400,000,000" in problem or "exceeds limit" in problem
    (tmp_path / "mid.png").write_bytes(_png_bytes(11000, 10000, 8, 2, zlib.compress(b"")))
    assert _error(tmp_path / "mid.png") == f"too many pixels (11000x10000 = 110,000,000; limit {DEFAULT_MAX_PIXELS:,})"
    Image.new("RGB", (40, 30)).save(tmp_path / "small.png")
    assert _error(tmp_path / "small.png", max_pixels=1000) == "too many pixels (40x30 = 1,200; limit 1,000)"
    assert read_image(tmp_path / "small.png", max_pixels=1200).pixels.shape == (30, 40, 3)


def test_zero_size_image(tmp_path: Path) -> None:
    (tmp_path / "zero.png").write_bytes(_png_bytes(0, 5, 8, 2, zlib.compress(b"")))
    assert _error(tmp_path / "zero.png") == "zero-size image (0x5 pixels)"


def test_unsupported_mode(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "f.tif")
    assert _error(tmp_path / "f.tif").startswith("unsupported image mode 'F'")


# ------------------------------------------------------------------------------------ writing


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_write_failure_leaves_target_and_no_temp_files(tmp_path: Path, photo: np.ndarray) -> None:
    target = tmp_path / "out.png"
    write_image(target, photo)
    before = target.read_bytes()
    with pytest.raises(DereflectError, match="could not write the image"):
        write_image(target, photo, icc_profile=12345)  # type: ignore[arg-type]  # fails inside the encoder
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []
    with pytest.raises(DereflectError, match=r"cannot write '\.gif'"):
        write_image(tmp_path / "out.gif", photo)
    assert not (tmp_path / "out.gif").exists()
    with pytest.raises(DereflectError, match="JPEG cannot store alpha"):
        write_image(tmp_path / "a.jpg", photo, alpha=photo[..., 0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_overwrite_flag_and_replacing(tmp_path: Path, photo: np.ndarray) -> None:
    target = tmp_path / "sub" / "o.png"
    write_image(target, photo)  # creates the folder
    with pytest.raises(DereflectError, match="already exists"):
        write_image(target, photo[::-1], overwrite=False)
    np.testing.assert_array_equal(read_rgb(target), photo)
    write_image(target, photo[::-1])
    np.testing.assert_array_equal(read_rgb(target), photo[::-1])
    assert _leftovers(target.parent) == []


def test_bad_arrays_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DereflectError, match="HxWx3 RGB or HxW grey"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(DereflectError, match="uint8, uint16 or float"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.int64))
    with pytest.raises(DereflectError, match="alpha has shape"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8), alpha=np.zeros((3, 4), np.uint8))


def test_list_images(tmp_path: Path) -> None:
    for name in ("b.PNG", "a.jpg", "c.JpEg", "d.txt", ".hidden.png", "e.tiff", "f.webp", "g.bmp"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.JpEg", "e.tiff", "f.webp", "g.bmp"]
    assert {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"} == set(IMAGE_SUFFIXES)
    with pytest.raises(DereflectError, match="no such folder"):
        list_images(tmp_path / "missing")
    with pytest.raises(DereflectError, match="is a file"):
        list_images(tmp_path / "a.jpg")


def test_no_warnings_on_plain_reads(tmp_path: Path, photo: np.ndarray) -> None:
    write_image(tmp_path / "p.png", photo)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(tmp_path / "p.png")
