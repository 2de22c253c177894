"""Write the tiny seed files of fuzz/corpus/decode/: one small image per decoding path of
dereflect.images.read_image (8-bit, 16-bit PNG/TIFF, alpha, palette, CMYK, EXIF orientation,
animated GIF, grey, BMP, WebP). Each is a few hundred bytes: libFuzzer mutates them, so
small seeds reach the decoders' branches faster than photos would.

Run from the repository root: python fuzz/make_corpus.py (it rewrites the folder's files).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from dereflect.images import write_image

OUT = Path(__file__).resolve().parent / "corpus" / "decode"


def _pattern(h: int, w: int, c: int, dtype: type = np.uint8) -> np.ndarray:
    top = 255 if dtype == np.uint8 else 65535
    y, x, ch = np.meshgrid(np.arange(h), np.arange(w), np.arange(c), indexing="ij")
    return ((y * 37 + x * 11 + ch * 101) * (top // 97) % (top + 1)).astype(dtype)


def _pil_bytes(im: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    rgb8 = _pattern(6, 5, 3)
    rgb16 = _pattern(5, 4, 3, np.uint16)
    alpha8 = _pattern(6, 5, 1)[..., 0]
    write_image(OUT / "rgb8.png", rgb8)
    write_image(OUT / "rgba8.png", rgb8, alpha=alpha8)
    write_image(OUT / "rgb16.png", rgb16)
    write_image(OUT / "rgba16.png", rgb16, alpha=rgb16[..., 0])
    write_image(OUT / "grey16.png", rgb16[..., 0])
    write_image(OUT / "rgb16.tif", rgb16)
    write_image(OUT / "rgb8.tif", rgb8)
    write_image(OUT / "rgb8.bmp", rgb8)
    write_image(OUT / "rgb8.webp", rgb8)
    write_image(OUT / "rgb8.jpg", np.repeat(np.repeat(rgb8, 2, 0), 2, 1))
    grey = Image.fromarray(alpha8, "L")
    (OUT / "grey_alpha.png").write_bytes(_pil_bytes(Image.merge("LA", (grey, grey)), "PNG"))
    (OUT / "grey16_pillow.png").write_bytes(_pil_bytes(Image.fromarray(np.ascontiguousarray(rgb16[..., 0])), "PNG"))
    palette = Image.fromarray(rgb8).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    (OUT / "palette_trns.png").write_bytes(_pil_bytes(palette, "PNG", transparency=0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate on read
    (OUT / "orient6.jpg").write_bytes(_pil_bytes(Image.fromarray(rgb8), "JPEG", exif=exif.tobytes(), quality=50))
    (OUT / "cmyk.jpg").write_bytes(_pil_bytes(Image.fromarray(rgb8).convert("CMYK"), "JPEG", quality=50))
    frames = [Image.fromarray(rgb8).convert("P"), Image.fromarray(rgb8[::-1].copy()).convert("P")]
    (OUT / "anim.gif").write_bytes(_pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    (OUT / "bilevel.tif").write_bytes(_pil_bytes(grey.convert("1"), "TIFF"))
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} seeds, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()
