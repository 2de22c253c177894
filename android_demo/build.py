"""Build the phone demo into dereflect/demo/www: app files + onnxruntime-web + the exported student.

The built app is package data of dereflect.demo, so `pip install .` after this build carries it
and `dereflect demo serve` finds it with importlib.resources, editable install or not.

    python android_demo/build.py            (what `make demo-app` runs)

Why a build step at all (the app is plain ES modules, no bundler): the browser must never reach a
CDN, so onnxruntime-web comes from the npm registry (`npm ci`, pinned by package-lock.json) and
its runtime files are copied next to the app; the model is exported from the shipped default
weights (student-mnv2-rt) by `dereflect export` (the stage contract: we read its artifact + manifest); PWA icons are
drawn with Pillow; the service worker gets this build's id and precache list.

Steps, each skipped when its inputs have not changed:
1. node_modules/onnxruntime-web at the pinned version (`npm ci` otherwise; needs npm).
2. `dereflect export CKPT --format ort --precision P` for int8 (the WASM model), fp16 and fp32
   (the WebGPU models, with and without shader-f16), cached in android_demo/.cache/ by checkpoint sha256; the manifest's sha256 is
   verified and its parity verdict must be "passed".
3. www.tmp/ assembled (app, ort/, model/, icons/, build.json, sw.js, .wasm.gz), then swapped
   in for www/ in one rename, so a half-built app is never served.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from dereflect.export.manifest import sha256_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
APP = HERE / "app"
OUT = REPO / "dereflect" / "demo" / "www"
CACHE = HERE / ".cache"
#: The real-time student on the ImageNet MobileNetV2 encoder (issue 13): H/W multiples of 16 (build.json's
#: multiple_of), and its global colour path makes the export take the photo's colour as a second input
#: (the worker estimates it once per tiled photo). student-nano (`--checkpoint`) still builds.
DEFAULT_CHECKPOINT = REPO / "dereflect" / "weights" / "student-mnv2-rt.safetensors"

#: Which exported precision each backend loads (see app/engine.js): WASM runs INT8 QDQ with integer
#: kernels; WebGPU runs fp16 where the GPU has shader-f16, else fp32 (no int8 conv path on GPUs).
BACKEND_PRECISION = {"wasm": "int8", "webgpu": "fp16", "webgpu_fp32": "fp32"}
#: The burst model (5 frames in, the middle frame's transmission out) for the Burst shutter, exported
#: when its checkpoint is shipped and `dereflect export` takes it; a build without it has no Burst
#: button. The phone-sized burst-mnv2 (models/burst_student.py; the worker registers its frames first)
#: where shipped, else the teacher as burst-base. Run on WASM in fp32 (the browser test compares it
#: with onnxruntime to 1e-4).
BURST_CHECKPOINT = next(
    (p for p in (REPO / "dereflect" / "weights" / f"{n}.safetensors" for n in ("burst-mnv2", "burst-base")) if p.is_file()),
    REPO / "dereflect" / "weights" / "burst-base.safetensors",
)
BURST_PRECISION = "fp32"
#: onnxruntime-web files per backend (from node_modules/onnxruntime-web/dist).
ORT_FILES = {
    "wasm": ["ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"],
    "webgpu": ["ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"],
}
APP_FILES = ["index.html", "main.js", "worker.js", "engine.js", "imageops.js", "style.css", "manifest.webmanifest"]


class BuildError(Exception):
    """A step that cannot go on; printed as one line by main()."""


def log(msg: str) -> None:
    print(f"[demo-app] {msg}", flush=True)


# ------------------------------------------------------------------ 1. onnxruntime-web from npm
def pinned_ort_version() -> str:
    return json.loads((HERE / "package.json").read_text())["dependencies"]["onnxruntime-web"]


def ensure_node_modules() -> Path:
    pkg = HERE / "node_modules" / "onnxruntime-web"
    want = pinned_ort_version()
    if (pkg / "package.json").is_file() and json.loads((pkg / "package.json").read_text()).get("version") == want:
        return pkg / "dist"
    npm = shutil.which("npm")
    if npm is None:
        raise BuildError("npm is not installed: it fetches onnxruntime-web from the npm registry (Debian: apt-get install npm)")
    log(f"npm ci (onnxruntime-web {want})")
    # --ignore-scripts: nothing here needs an install script (protobufjs's only prints a notice)
    proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=HERE)
    if proc.returncode != 0:
        raise BuildError(f"npm ci failed (exit {proc.returncode})")
    got = json.loads((pkg / "package.json").read_text()).get("version")
    if got != want:
        raise BuildError(f"npm installed onnxruntime-web {got}, package.json pins {want}")
    return pkg / "dist"


# ------------------------------------------------------------------ 2. the models
def export_model(checkpoint: Path, precision: str, fmt: str = "ort") -> tuple[Path, dict]:
    """The artifact + manifest for `precision`, exported once per checkpoint content: `--format ort`'s
    `.web.onnx` (onnxruntime-web), or with fmt="onnx" the plain `.onnx` (which onnxruntime-web runs too)."""
    from dereflect.export import load_manifest_for

    ckpt_sha = sha256_file(checkpoint)
    folder = CACHE / "models" / (f"{checkpoint.stem}-{ckpt_sha[:12]}-{precision}" + ("" if fmt == "ort" else f"-{fmt}"))
    pattern = "*.web.onnx" if fmt == "ort" else "*.onnx"
    found = sorted(folder.glob(pattern)) if folder.is_dir() else []
    if found:
        try:
            manifest = load_manifest_for(found[0])
            if manifest["source"].get("sha256") == ckpt_sha:
                return found[0], manifest
        except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt, not fatal
            log(f"cached model unusable ({exc}); exporting again")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"dereflect export {checkpoint.name} --format {fmt} --precision {precision}")
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "dereflect", "export", str(checkpoint), "--format", fmt, "--precision", precision, "--out", str(tmp)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise BuildError(
            f"dereflect export --precision {precision} failed (exit {proc.returncode}):\n" + (proc.stderr or proc.stdout)[-2000:]
        )
    webs = sorted(tmp.glob(pattern))
    if not webs:
        raise BuildError(f"dereflect export wrote no {pattern} into {tmp}")
    manifest = load_manifest_for(webs[0])
    if fmt == "ort" and manifest.get("runtime") != "onnxruntime-web":
        raise BuildError(f"{webs[0].name}: manifest runtime is {manifest.get('runtime')!r}, expected onnxruntime-web")
    if manifest["parity"].get("status") != "passed":
        raise BuildError(f"{webs[0].name}: export parity {manifest['parity'].get('status')}: not shipping it")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    log(f"exported {webs[0].name} in {time.perf_counter() - started:.0f} s")
    web = folder / webs[0].name
    return web, load_manifest_for(web)


# ------------------------------------------------------------------ icons
def draw_icon(size: int, maskable: bool = False):
    """The app icon: a window pane, streaked with reflections on the left, clear on the right.
    Drawn at 4x and downsampled (antialiasing). Maskable icons keep the pane in the 80% safe zone."""
    from PIL import Image, ImageDraw

    s = size * 4
    img = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    top, bottom = (22, 52, 60), (10, 22, 27)
    column = Image.new("RGBA", (1, s))
    column.putdata([tuple(round(a + (b - a) * y / (s - 1)) for a, b in zip(top, bottom)) + (255,) for y in range(s)])
    bg = column.resize((s, s), Image.NEAREST)
    mask = Image.new("L", (s, s), 0)
    if maskable:
        mask.paste(255, (0, 0, s, s))
    else:
        ImageDraw.Draw(mask).rounded_rectangle((0, 0, s - 1, s - 1), radius=s * 0.22, fill=255)
    img.paste(bg, (0, 0), mask)
    d = ImageDraw.Draw(img)
    inset = s * (0.24 if maskable else 0.18)
    box = (inset, inset, s - inset, s - inset)
    mid = s / 2
    line = max(4, round(s * 0.035))
    # reflections: translucent diagonal streaks on the left half only
    streaks = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    sd = ImageDraw.Draw(streaks)
    for k, (off, width) in enumerate([(0.0, 0.10), (0.17, 0.05), (0.28, 0.03)]):
        x0 = box[0] + (off - 0.15) * s
        sd.polygon(
            [(x0, box[3]), (x0 + width * s, box[3]), (x0 + width * s + 0.45 * s, box[1]), (x0 + 0.45 * s, box[1])],
            fill=(235, 245, 246, 120 - 25 * k),
        )
    clip = Image.new("L", (s, s), 0)
    ImageDraw.Draw(clip).rectangle((box[0], box[1], mid, box[3]), fill=255)
    img.paste(streaks, (0, 0), Image.composite(streaks.getchannel("A"), Image.new("L", (s, s), 0), clip))
    # clear right half: a dot of the accent colour
    r = s * 0.07
    cx, cy = mid + (box[2] - mid) / 2, s / 2
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(79, 209, 197, 255))
    d.rounded_rectangle(box, radius=s * 0.05, outline=(232, 241, 242, 255), width=line)
    d.line((mid, box[1], mid, box[3]), fill=(232, 241, 242, 255), width=line)
    return img.resize((size, size), Image.LANCZOS)


def write_icons(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    made = {
        "icon-192.png": draw_icon(192),
        "icon-512.png": draw_icon(512),
        "maskable-512.png": draw_icon(512, maskable=True),
        "apple-touch-icon.png": draw_icon(180, maskable=True),
    }
    for name, img in made.items():
        img.save(folder / name, optimize=True)
    return [f"icons/{n}" for n in made]


# ------------------------------------------------------------------ 3. assemble
def gzip_copy(path: Path) -> None:
    with open(path, "rb") as src, open(path.with_name(path.name + ".gz"), "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def tree_hash(root: Path, names: list[str]) -> str:
    h = hashlib.sha256()
    for name in sorted(names):
        h.update(f"{name}\0{sha256_file(root / name)}\n".encode())
    return h.hexdigest()[:16]


def assemble(dist: Path, models: dict[str, tuple[Path, dict]], checkpoint: Path, out: Path) -> dict:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files: list[str] = []
    for name in APP_FILES:
        shutil.copyfile(APP / name, tmp / name)
        files.append(name)
    (tmp / "ort").mkdir()
    ort_lists: dict[str, list[str]] = {}
    for backend, names in ORT_FILES.items():
        ort_lists[backend] = []
        for name in names:
            src = dist / name
            if not src.is_file():
                raise BuildError(f"{src}: missing from onnxruntime-web (is node_modules complete?)")
            shutil.copyfile(src, tmp / "ort" / name)
            if name.endswith(".wasm"):
                gzip_copy(tmp / "ort" / name)
            ort_lists[backend].append(f"ort/{name}")
    pkg = json.loads((dist.parent / "package.json").read_text())
    (tmp / "ort" / "NOTICE.txt").write_text(
        f"{pkg['name']} {pkg['version']} (license: {pkg.get('license')}), from the npm registry.\n"
        "Copyright (c) Microsoft Corporation (ONNX Runtime).\n"
    )
    (tmp / "model").mkdir()
    model_info: dict[str, dict] = {}
    for backend, (web, manifest) in models.items():
        shutil.copyfile(web, tmp / "model" / web.name)
        shutil.copyfile(web.with_name(web.name + ".json"), tmp / "model" / (web.name + ".json"))
        files += [f"model/{web.name}", f"model/{web.name}.json"]
        parity = manifest.get("parity", {})
        model_info[backend] = {
            "file": web.name,
            "manifest": web.name + ".json",
            "precision": manifest["precision"],
            "sha256": manifest["artifact_sha256"],
            "bytes": manifest.get("artifact_bytes"),
            "multiple_of": manifest["constraints"]["multiple_of"],
            **({"frames": manifest["constraints"]["frames"]} if "frames" in manifest["constraints"] else {}),
            **({"frame_alignment": manifest["constraints"]["frame_alignment"]} if "frame_alignment" in manifest["constraints"] else {}),
            "parity": {
                "status": parity.get("status"),
                "reference": parity.get("reference"),
                **{k: v for k, v in parity.get("metrics", {}).items() if k in ("max_abs_diff", "mean_abs_diff", "ssim_drop", "lmse_rise")},
            },
        }
    files += write_icons(tmp / "icons")
    build_id = tree_hash(tmp, files + [p for v in ort_lists.values() for p in v])
    build = {
        "build_id": build_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "onnxruntime_web": pkg["version"],
        "checkpoint": {"file": checkpoint.name, "sha256": sha256_file(checkpoint)},
        "models": model_info,
        "ort": ort_lists,
        "preview_long_side": 512,
    }
    (tmp / "build.json").write_text(json.dumps(build, indent=2) + "\n")
    precache = ["./", *[f"./{f}" for f in files], "./build.json"]
    sw = (APP / "sw.js").read_text().replace("'__BUILD_ID__'", json.dumps(build_id)).replace("__PRECACHE__", json.dumps(precache))
    (tmp / "sw.js").write_text(sw)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return build


def build(checkpoint: Path = DEFAULT_CHECKPOINT, out: Path = OUT, burst: Path | None = BURST_CHECKPOINT) -> dict:
    if burst is not None and not burst.is_file():
        log(f"{burst}: not there, no burst model in this build")
        burst = None
    if not checkpoint.is_file():
        raise BuildError(f"{checkpoint}: no such checkpoint")
    dist = ensure_node_modules()
    models = {backend: export_model(checkpoint, p) for backend, p in BACKEND_PRECISION.items()}
    if burst is not None:
        try:
            models["burst"] = export_model(burst, BURST_PRECISION, fmt="onnx")
        except BuildError as exc:  # the single-image app is still complete
            log(f"no burst model in this build (no Burst button): {str(exc).splitlines()[0]}")
    result = assemble(dist, models, checkpoint, out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and not p.name.endswith(".gz"))
    log(f"built {out} (build {result['build_id']}, {size / 1e6:.1f} MB); serve it with: dereflect demo serve")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="student checkpoint to export")
    ap.add_argument("--out", type=Path, default=OUT, help="folder to build into (replaced)")
    args = ap.parse_args(argv)
    try:
        build(args.checkpoint.resolve(), args.out.resolve())
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
