"""Trimmed pretrained weights: only the layers a run uses, cut from a known full file, in safetensors.

Why: the lent GPU machine carries at most 64 MiB with the repository (issue 13, item 5b), and the
full HED VGG16 (29 MB in fp16) and MobileNetV2 (14 MB) files do not fit beside the training data.
`tools/pack_gpu_data.py --out .gpu` cuts them to the layers the perceptual loss, the privileged
teacher and the MobileNetV2 encoder read, and the loaders (`vgg.load_hed_state`,
`backbones.read_mobilenet_v2_features`) accept such a file through their normal paths.

A trimmed file is a safetensors file whose metadata says what it is:
- `format`: FORMAT; `kind`: which network ("hed-vgg16", "mobilenet_v2");
- `source_file`, `source_sha256`: the full original it was cut from (the loaders compare the hash
  with the one file they accept, exactly as they do for the full file);
- `layers`: JSON list of the layers it holds (a loader refuses the file naming the first layer it
  needs that is not there);
- `tensors`: JSON {name: [encoding, shape]} for every tensor, encoding one of
  "f16" (stored as float16), "raw" (stored as it was: integer buffers) or
  "pal4" (4-bit palette per output channel: `name:idx` uint8, two indices a byte, and
  `name:palette` float16 (out, 16); 4 bits a weight, for layers only the teacher's frozen features use);
- `payload_sha256`: sha256 over the stored tensors (names, dtypes, shapes, bytes), checked on load,
  so a file that was edited or cut short is refused rather than loaded half right.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from dereflect.errors import DereflectError

FORMAT = "dereflect-trimmed-weights/1"
SUFFIX = ".safetensors"
ENCODINGS = ("f16", "raw", "pal4")
_PALETTE = 16


def is_trimmed(path: str | os.PathLike[str]) -> bool:
    """A trimmed file is told by its suffix: the full originals are .h5 / .pth."""
    return Path(path).suffix == SUFFIX


def _payload_digest(stored: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(stored):
        t = stored[name].contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def palettize4(weight: torch.Tensor, iterations: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """4-bit palette per output channel (Lloyd's k-means in 1-D, started at the quantiles, so the
    result is deterministic). Returns (indices uint8 (out, n) in 0..15, palette float16 (out, 16))."""
    w = weight.detach().float().reshape(weight.shape[0], -1).numpy().astype(np.float64)
    out, n = w.shape
    qs = (np.arange(_PALETTE) + 0.5) / _PALETTE
    palette = np.quantile(w, qs, axis=1).T.copy()  # (out, 16)
    idx = np.zeros((out, n), np.int64)
    for _ in range(iterations):
        palette.sort(axis=1)
        mids = (palette[:, 1:] + palette[:, :-1]) / 2
        for c in range(out):
            idx[c] = np.searchsorted(mids[c], w[c])
        offset = (np.arange(out) * _PALETTE)[:, None]
        flat = (idx + offset).ravel()
        sums = np.bincount(flat, weights=w.ravel(), minlength=out * _PALETTE).reshape(out, _PALETTE)
        counts = np.bincount(flat, minlength=out * _PALETTE).reshape(out, _PALETTE)
        palette = np.where(counts > 0, sums / np.maximum(counts, 1), palette)
    palette16 = palette.astype(np.float16)
    # final assignment against the float16 palette actually stored
    p = palette16.astype(np.float64)
    order = np.argsort(p, axis=1, kind="stable")
    ps = np.take_along_axis(p, order, axis=1)
    mids = (ps[:, 1:] + ps[:, :-1]) / 2
    for c in range(out):
        idx[c] = order[c][np.searchsorted(mids[c], w[c])]
    return torch.from_numpy(idx.astype(np.uint8)), torch.from_numpy(palette16)


def _pack_nibbles(idx: torch.Tensor) -> torch.Tensor:
    flat = idx.reshape(-1).numpy()
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return torch.from_numpy((flat[0::2] | (flat[1::2] << 4)).astype(np.uint8))


def _unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    p = packed.numpy()
    flat = np.empty(p.size * 2, np.uint8)
    flat[0::2], flat[1::2] = p & 0x0F, p >> 4
    return torch.from_numpy(flat[:n].astype(np.int64))


def write_trimmed(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    *,
    kind: str,
    source: str | os.PathLike[str],
    source_sha256: str,
    layers: Iterable[str],
    encodings: Mapping[str, str] | None = None,
) -> Path:
    """Write `tensors` (the float32 state of the kept layers, names as the loader returns them) as a
    trimmed file. `encodings` maps a tensor name to "pal4"/"raw"; floating tensors default to "f16",
    others to "raw"."""
    from safetensors.torch import save_file

    path = Path(path)
    encodings = dict(encodings or {})
    unknown = sorted(set(encodings) - set(tensors))
    if unknown:
        raise ValueError(f"encodings for tensors that are not there: {unknown[:6]}")
    stored: dict[str, torch.Tensor] = {}
    table: dict[str, list] = {}
    for name, t in tensors.items():
        if ":" in name:
            raise ValueError(f"tensor names may not contain ':' ({name!r})")
        enc = encodings.get(name, "f16" if t.is_floating_point() else "raw")
        if enc not in ENCODINGS:
            raise ValueError(f"unknown encoding {enc!r} for {name}; expected one of {ENCODINGS}")
        if enc == "f16":
            stored[name] = t.detach().to(torch.float16).contiguous()
        elif enc == "raw":
            stored[name] = t.detach().contiguous()
        else:
            if t.ndim < 2:
                raise ValueError(f"pal4 needs a weight with an output-channel axis, {name} has shape {tuple(t.shape)}")
            idx, palette = palettize4(t)
            stored[f"{name}:idx"] = _pack_nibbles(idx)
            stored[f"{name}:palette"] = palette.contiguous()
        table[name] = [enc, list(t.shape)]
    meta = {
        "format": FORMAT,
        "kind": kind,
        "source_file": Path(source).name,
        "source_sha256": source_sha256,
        "layers": json.dumps(list(layers)),
        "tensors": json.dumps(table, sort_keys=True),
        "payload_sha256": _payload_digest(stored),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(stored, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_trimmed(path: str | os.PathLike[str], kind: str, source_sha256: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(float32 tensors by name, layers held) of a trimmed file of `kind` cut from the file whose
    sha256 is `source_sha256`. Refuses (DereflectError naming the file) anything else: another
    format or network, another source file, a payload whose digest differs, a tensor table that
    does not match what is stored."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            stored = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # header, truncation and dtype errors all mean "not a readable file"
        raise DereflectError(path, f"not a readable safetensors file: {exc}") from None
    if meta.get("format") != FORMAT:
        raise DereflectError(path, f"not a trimmed weights file (format {meta.get('format')!r}, expected {FORMAT!r})")
    if meta.get("kind") != kind:
        raise DereflectError(path, f"trimmed weights of {meta.get('kind')!r}, expected {kind!r}")
    if meta.get("source_sha256") != source_sha256:
        raise DereflectError(
            path,
            f"cut from {meta.get('source_file')!r} with sha256 {str(meta.get('source_sha256'))[:12]}..., "
            f"not from the accepted original (sha256 {source_sha256[:12]}...)",
        )
    if _payload_digest(stored) != meta.get("payload_sha256"):
        raise DereflectError(path, "payload sha256 differs from the one recorded: the file was changed after it was written")
    table = json.loads(meta["tensors"])
    layers = json.loads(meta["layers"])
    out: dict[str, torch.Tensor] = {}
    expected_keys: set[str] = set()
    for name, (enc, shape) in table.items():
        if enc == "pal4":
            expected_keys |= {f"{name}:idx", f"{name}:palette"}
            missing = {f"{name}:idx", f"{name}:palette"} - set(stored)
            if missing:
                raise DereflectError(path, f"{name}: stored tensors {sorted(missing)} missing")
            n = int(np.prod(shape))
            palette = stored[f"{name}:palette"].float()
            idx = _unpack_nibbles(stored[f"{name}:idx"], n).reshape(shape[0], -1)
            out[name] = torch.gather(palette, 1, idx).reshape(shape)
        else:
            expected_keys.add(name)
            if name not in stored:
                raise DereflectError(path, f"{name}: stored tensor missing")
            t = stored[name]
            out[name] = t.float() if enc == "f16" else t
            if list(out[name].shape) != list(shape):
                raise DereflectError(path, f"{name} has shape {tuple(out[name].shape)}, table says {tuple(shape)}")
    extra = sorted(set(stored) - expected_keys)
    if extra:
        raise DereflectError(path, f"stored tensors not in the table: {extra[:6]}")
    return out, layers


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
