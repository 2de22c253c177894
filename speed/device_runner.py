#!/usr/bin/env python3
"""Benchmark one exported dereflect artifact on a device that only has Python, numpy, Pillow and
ONNX Runtime or OpenVINO: a phone-class Linux board, Termux on Android, a Raspberry Pi.

Copy this file, the artifact and its manifest (`x.onnx` + `x.onnx.json`, `x.ort` + `x.ort.json`,
or an OpenVINO IR folder + `<folder>.json`) to the device, and optionally a paired set
(`blended/` + `transmission/`). It reads the manifest (input/output names, the H/W multiple,
the artifact's sha256), pads to the multiple (reflect at bottom/right, as dereflect's runtime
does; a fixed-shape artifact, `constraints.fixed_hw`, gets tiles of exactly its size, blended as
dereflect's tiler blends them, and smaller photos padded up to it), times the model at each size (end to end from a uint8 photo, and model only), scores
the pairs at full resolution, and writes ledger rows in the format of `dereflect bench --json`
(`{"rows": [...]}`), which `dereflect bench DIR --merge rows.json` folds into its table and
report. No dereflect import: nothing here needs torch.

Metrics (`metric_impl` in each row): PSNR per channel averaged; SSIM with a 7x7 uniform window,
K1=0.01, K2=0.03, data range 255, sample covariance, the 3-pixel border left out (scikit-image's
defaults, the SIRR literature's protocol), computed here with numpy box sums; LMSE over 20x20
windows at stride 10 with a per-window scale; NCC global. They equal dereflect.metrics to 1e-6
(tests/test_bench_device_runner.py). Status is "ok" (measured): the parity verdict needs the
PyTorch reference, which the main runner has (`ref_ssim` there).

Usage: python3 device_runner.py student-nano-int8.onnx --pairs pairs/ --sizes 256,512 --json rows.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

SOURCE = "speed/device_runner.py"
METRIC_IMPL = "device_runner.py numpy (PSNR; SSIM 7x7 uniform, K1 0.01, K2 0.03, sample covariance, as scikit-image; LMSE 20/10 windows)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


# ------------------------------------------------------------------ metrics (literature protocol)
def _box7(a: np.ndarray) -> np.ndarray:
    """Sums over every 7x7 window ("valid" positions) of a 2-D float64 array."""
    c = np.zeros((a.shape[0] + 1, a.shape[1] + 1))
    c[1:, 1:] = a.cumsum(0).cumsum(1)
    return c[7:, 7:] - c[:-7, 7:] - c[7:, :-7] + c[:-7, :-7]


def ssim(gt: np.ndarray, est: np.ndarray) -> float:
    """Mean SSIM over RGB channels, as skimage.metrics.structural_similarity with its defaults."""
    n, c1, c2 = 49.0, (0.01 * 255) ** 2, (0.03 * 255) ** 2
    scores = []
    for ch in range(gt.shape[2]):
        x, y = gt[..., ch].astype(np.float64), est[..., ch].astype(np.float64)
        mx, my = x.mean(), y.mean()
        x, y = x - mx, y - my  # centred: box sums of squares stay small, so no cancellation
        ux, uy = _box7(x) / n, _box7(y) / n
        vx = (_box7(x * x) / n - ux * ux) * n / (n - 1)
        vy = (_box7(y * y) / n - uy * uy) * n / (n - 1)
        vxy = (_box7(x * y) / n - ux * uy) * n / (n - 1)
        ux, uy = ux + mx, uy + my
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        scores.append(float(s.mean()))
    return float(np.mean(scores))


def psnr(gt: np.ndarray, est: np.ndarray) -> float:
    mse = ((gt.astype(np.float64) - est.astype(np.float64)) ** 2).mean(axis=(0, 1))
    with np.errstate(divide="ignore"):
        return float(np.mean(10.0 * np.log10(255.0**2 / mse)))


def lmse(gt: np.ndarray, est: np.ndarray) -> float:
    """Local MSE: 20x20 windows at stride 10, the estimate scaled per window and channel."""
    h, w, c = gt.shape
    bh, bw = (h - 20) // 10 + 2, (w - 20) // 10 + 2
    g = gt[: bh * 10, : bw * 10].astype(np.float64)
    e = est[: bh * 10, : bw * 10].astype(np.float64)

    def win(a: np.ndarray) -> np.ndarray:
        blocks = a.reshape(bh, 10, bw, 10, c).sum(axis=(1, 3))
        return blocks[:-1, :-1] + blocks[1:, :-1] + blocks[:-1, 1:] + blocks[1:, 1:]

    gg, ge, ee = win(g * g), win(g * e), win(e * e)
    a = np.divide(ge, ee, out=np.zeros_like(ge), where=ee > 1e-5)
    total = gg.sum()
    return float((gg - 2 * a * ge + a * a * ee).sum() / total) if total else 0.0


def ncc(gt: np.ndarray, est: np.ndarray) -> float:
    g = gt.astype(np.float64) - gt.mean()
    e = est.astype(np.float64) - est.mean()
    den = math.sqrt(float((g * g).sum()) * float((e * e).sum()))
    return float((g * e).sum() / den) if den else float("nan")


def score(gt: np.ndarray, est: np.ndarray) -> dict:
    return {"psnr": psnr(gt, est), "ssim": ssim(gt, est), "lmse": lmse(gt, est), "ncc": ncc(gt, est)}


# ------------------------------------------------------------------ the machine
def machine_info() -> dict:
    cpu = platform.processor() or platform.machine() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                cpu = " ".join(value.split())
                break
    except OSError:
        pass
    osname = f"{platform.system()} {platform.release()}"
    if sys.platform.startswith("linux"):
        osname = "Linux"
        try:
            for line in Path("/etc/os-release").read_text().splitlines():
                if line.startswith("PRETTY_NAME="):
                    osname = line.split("=", 1)[1].strip().strip('"') or "Linux"
        except OSError:
            if "ANDROID_ROOT" in os.environ:
                osname = "Android (Termux)"
    elif sys.platform == "darwin":
        osname = f"macOS {platform.mac_ver()[0]}"
    info = {"cpu": cpu, "cores": os.cpu_count() or 1, "os": osname, "arch": platform.machine(), "python": platform.python_version()}
    try:
        info["memory_gb"] = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info


def device_name(info: dict) -> str:
    """Same form as dereflect.bench.machine.device_name, so rows from one machine merge."""
    return f"{info['cpu']} ({info['cores']} cores), {info['os']} {info['arch']}"


def peak_rss_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024) / 2**20


# ------------------------------------------------------------------ the artifact
def manifest_for(artifact: Path, given: Path | None) -> dict:
    path = given or artifact.parent / (artifact.name + ".json")
    if not path.is_file():
        sys.exit(f"error: {path}: no manifest (copy the .json the export wrote beside the artifact)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        sys.exit(f"error: {path}: not valid JSON ({exc})")
    if not isinstance(data, dict) or data.get("schema") != "dereflect-export/1":
        sys.exit(f"error: {path}: not a dereflect export manifest")
    return data


def sha256_artifact(path: Path) -> str:
    def file_hash(p: Path) -> str:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        return h.hexdigest()

    if path.is_file():
        return file_hash(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{file_hash(f)}\n".encode())
    return h.hexdigest()


class Model:
    """The artifact on ONNX Runtime or OpenVINO: `infer((1,3,H,W) float32) -> same shape`."""

    def __init__(self, artifact: Path, manifest: dict, backend: str, threads: int | None) -> None:
        self.input = manifest["inputs"][0]["name"]
        self.output = manifest["outputs"][0]["name"]
        # A student with a global colour path takes `photo_colour` (N,13,1,1): 12 values and a weight
        # (0: each input its own estimate). Tiles of one photo get the photo's estimate (run_tiles).
        self.colour = "photo_colour" if any(i["name"] == "photo_colour" for i in manifest["inputs"]) else None
        self.feed = np.zeros((1, 13, 1, 1), np.float32)
        self.multiple = int(manifest["constraints"].get("multiple_of", 8))
        fixed = manifest["constraints"].get("fixed_hw")  # `dereflect export --fixed-shape`: one (H, W) only
        self.fixed: tuple[int, int] | None = (int(fixed[0]), int(fixed[1])) if fixed else None
        if backend == "auto":
            backend = "openvino" if manifest.get("format") == "openvino" else "onnxruntime"
        if backend == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            opts.enable_mem_pattern = False
            if threads:
                opts.intra_op_num_threads = threads
            for key, value in ((manifest.get("ort_format") or {}).get("session_options") or {}).items():
                opts.add_session_config_entry(str(key), str(value))
            self.session = ort.InferenceSession(str(artifact), opts, providers=["CPUExecutionProvider"])
            self.label, self.version = "onnxruntime/cpu", ort.__version__
            self.run_graph = lambda x, names: self.session.run(names, self.feeds(x))
        elif backend == "openvino":
            import openvino as ov

            xml = artifact
            if artifact.is_dir():
                xml = artifact / ((manifest.get("openvino") or {}).get("xml") or next(artifact.glob("*.xml")).name)
            config = {"PERFORMANCE_HINT": "LATENCY"}
            if manifest.get("precision") == "fp32":
                config["INFERENCE_PRECISION_HINT"] = "f32"  # else bf16 on CPUs that have it
            if threads:
                config["INFERENCE_NUM_THREADS"] = str(threads)
            compiled = ov.Core().compile_model(str(xml), "CPU", config)
            request = compiled.create_infer_request()
            self.label, self.version = "openvino/cpu", ov.get_version().split("-")[0]
            self.run_graph = lambda x, names: [np.array(request.infer(self.feeds(x))[compiled.output(n)], copy=True) for n in names]
        else:
            sys.exit(f"error: unknown backend {backend!r} (onnxruntime, openvino or auto)")
        self.backend = backend

    def feeds(self, x: np.ndarray) -> dict:
        return {self.input: x, self.colour: self.feed} if self.colour else {self.input: x}

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.run_graph(x, [self.output])[0]

    def prepare(self, photo: np.ndarray) -> np.ndarray:
        """uint8 HWC -> float32 NCHW padded at the bottom/right to the multiple (reflect; edge if
        tiny); for a fixed-shape artifact, its top-left tile padded up to the fixed size."""
        if self.fixed is not None:
            photo = photo[: self.fixed[0], : self.fixed[1]]
        x = photo.astype(np.float32) * np.float32(1.0 / 255.0)
        h, w = x.shape[:2]
        ph, pw = -h % self.multiple, -w % self.multiple
        if self.fixed is not None:
            ph, pw = self.fixed[0] - h, self.fixed[1] - w
        if ph or pw:
            x = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > max(ph, pw) else "edge")
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    def run(self, photo: np.ndarray) -> np.ndarray:
        """uint8 HWC photo -> uint8 HWC transmission (the end-to-end path that gets timed)."""
        h, w = photo.shape[:2]
        if self.fixed is not None:
            out = self.run_tiles(photo)
        else:
            out = self.infer(self.prepare(photo))[0, :, :h, :w].transpose(1, 2, 0)
        return np.rint(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)

    def run_tiles(self, photo: np.ndarray) -> np.ndarray:
        """A fixed-shape artifact over any photo, as dereflect.runtime.tiling does it: tiles of the
        fixed size at a stride of the tile minus the overlap, the last one flush with the (padded)
        edge, raised-cosine ramps over the shared part, normalised by the summed weights."""
        th, tw = self.fixed
        m = self.multiple
        h, w = photo.shape[:2]
        canvas_h, canvas_w = max(-(-h // m) * m, th), max(-(-w // m) * m, tw)
        ov = min(-(-128 // m) * m, (min(th, tw) // 2) // m * m)

        def origins(canvas: int, tile: int) -> list[int]:
            return [0] if tile >= canvas else [*range(0, canvas - tile, max(tile - ov, m)), canvas - tile]

        def weights(size: int, start: int, canvas: int) -> np.ndarray:
            wt = np.ones(size, np.float32)
            if ov and canvas > size:
                margin = ov // 4
                core = ov - 2 * margin
                rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(core) + 0.5) / core)
                ramp = np.concatenate([np.zeros(margin), rise, np.ones(margin)]).astype(np.float32)
                if start > 0:
                    wt[:ov] = ramp
                if start + size < canvas:
                    wt[size - ov :] = ramp[::-1]
            return wt

        if self.colour:  # the photo's colour estimate, once, on a copy that fits one tile (dereflect's photo_copy)
            scale = min(1.0, th / h, tw / w)
            step = max(1, int(1.0 / scale) // 2)  # subsampled to at most twice the size first, as photo_copy does
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = np.asarray(Image.fromarray(np.ascontiguousarray(photo[::step, ::step])).resize(size, Image.BILINEAR))
            self.feed = np.zeros((1, 13, 1, 1), np.float32)
            colour = self.run_graph(self.prepare(small), ["colour"])[0]
            self.feed = np.concatenate([colour.reshape(1, 12, 1, 1), np.ones((1, 1, 1, 1), np.float32)], 1)
        acc = np.zeros((h, w, 3), np.float32)
        total = np.zeros((h, w, 1), np.float32)
        for y in origins(canvas_h, th):
            for x in origins(canvas_w, tw):
                tile = self.infer(self.prepare(photo[y : y + th, x : x + tw]))[0].transpose(1, 2, 0)
                rows, cols = min(th, h - y), min(tw, w - x)
                wgt = np.outer(weights(th, y, canvas_h)[:rows], weights(tw, x, canvas_w)[:cols])[..., None]
                acc[y : y + rows, x : x + cols] += tile[:rows, :cols] * wgt
                total[y : y + rows, x : x + cols] += wgt
        self.feed = np.zeros((1, 13, 1, 1), np.float32)
        return acc / total


# ------------------------------------------------------------------ pairs and timing
def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def find_pairs(root: Path) -> list[tuple[str, Path, Path]]:
    """blended/ + transmission/ (or transmission_layer/), or SEQ/frame_*.png + SEQ/transmission/."""

    def images(d: Path) -> dict[str, Path]:
        return {p.stem: p for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES} if d.is_dir() else {}

    if (root / "blended").is_dir():
        truth = next((images(root / d) for d in ("transmission", "transmission_layer") if (root / d).is_dir()), {})
        blended = images(root / "blended")
        return [(s, blended[s], truth[s]) for s in sorted(set(blended) & set(truth))]
    pairs = []
    for seq in sorted(p for p in root.iterdir() if p.is_dir()):
        frames = [p for s, p in images(seq).items() if s.startswith("frame_")]
        if frames:
            middle = frames[len(frames) // 2]
            gt = images(seq / "transmission").get(middle.stem)
            if gt is not None:
                pairs.append((seq.name, middle, gt))
    return pairs


def time_call(fn, runs: int, warmup: int, cap_s: float) -> list[float]:
    for _ in range(warmup):
        fn()
    times, spent = [], 0.0
    for i in range(max(runs, 1)):
        if i >= 3 and spent >= cap_s:
            break
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        spent += dt
        times.append(dt * 1000.0)
    return times


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(0.9 * len(ordered)) - 1))]


def fit_square(photo: np.ndarray, size: int) -> np.ndarray:
    img = Image.fromarray(photo)
    scale = size / min(img.size)
    new = (max(size, round(img.size[0] * scale)), max(size, round(img.size[1] * scale)))
    if new != img.size:
        img = img.resize(new, Image.Resampling.LANCZOS)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return np.ascontiguousarray(np.asarray(img.crop((left, top, left + size, top + size))))


def bench(args: argparse.Namespace) -> list[dict]:
    artifact = Path(args.artifact)
    if artifact.suffix == ".xml" and artifact.is_file():
        artifact = artifact.parent
    if not artifact.exists():
        sys.exit(f"error: {artifact}: no such artifact")
    manifest = manifest_for(artifact, Path(args.manifest) if args.manifest else None)
    sha = sha256_artifact(artifact)
    if sha != manifest.get("artifact_sha256") and not args.no_verify:
        sys.exit(f"error: {artifact}: sha256 differs from its manifest (changed or corrupted after export); --no-verify runs it anyway")
    model = Model(artifact, manifest, args.backend, args.threads)
    pairs = find_pairs(Path(args.pairs)) if args.pairs else []
    if args.pairs and not pairs:
        sys.exit(f"error: {args.pairs}: no pairs found (blended/ + transmission/, or SEQ/frame_*.png + SEQ/transmission/)")
    pairs = pairs[: args.max_pairs] if args.max_pairs else pairs
    scores, ident = [], []
    first = None
    for _name, b_path, t_path in pairs:
        blended, truth = read_rgb(b_path), read_rgb(t_path)
        first = blended if first is None else first
        scores.append(score(truth, model.run(blended)))
        ident.append(score(truth, blended))
    mean = {k: float(np.mean([s[k] for s in scores])) for k in ("psnr", "ssim", "lmse", "ncc")} if scores else {}
    ident_mean = {k: float(np.mean([s[k] for s in ident])) for k in ("psnr", "ssim", "lmse")} if ident else {}
    if first is None:  # no pairs: time on a smooth synthetic photo
        yy, xx = np.mgrid[0:512, 0:512]
        first = np.stack([(xx / 2) % 256, (yy / 2) % 256, ((xx + yy) / 4) % 256], axis=2).astype(np.uint8)
    info = machine_info()
    tools = {"python": platform.python_version(), "numpy": np.__version__, model.backend: model.version, "pillow": Image.__version__}
    rows = []
    for size in args.sizes:
        photo = fit_square(first, size)
        reset = peak_rss_reset()
        e2e = time_call(lambda photo=photo: model.run(photo), args.runs, args.warmup, args.time_cap)
        peak = peak_rss_mb()
        x = model.prepare(photo)
        only = time_call(lambda x=x: model.infer(x), args.runs, args.warmup, args.time_cap)
        med = statistics.median(e2e)
        rows.append(
            {
                "device": args.device or device_name(info),
                "backend": model.label,
                "format": manifest.get("format"),
                "precision": manifest.get("precision"),
                "size": size,
                "status": "ok",
                "latency_ms": med,
                "p90_ms": p90(e2e),
                "runs": len(e2e),
                "runs_ms": [round(v, 3) for v in e2e],
                "warmup": args.warmup,
                "model_latency_ms": statistics.median(only),
                "model_p90_ms": p90(only),
                "img_per_s": 1000.0 / med,
                "mp_per_s": size * size / 1e6 * 1000.0 / med,
                "peak_rss_mb": peak,
                "peak_rss_kind": "VmHWM (reset per measurement)" if reset else "ru_maxrss (process lifetime)",
                "psnr": mean.get("psnr"),
                "ssim": mean.get("ssim"),
                "lmse": mean.get("lmse"),
                "ncc": mean.get("ncc"),
                "ref_ssim": None,
                "identity_psnr": ident_mean.get("psnr"),
                "identity_ssim": ident_mean.get("ssim"),
                "identity_lmse": ident_mean.get("lmse"),
                "pairs": f"{args.pairs} ({len(pairs)} pairs, full resolution)" if pairs else None,
                "pair_count": len(pairs),
                "metric_impl": METRIC_IMPL,
                "artifact": artifact.name,
                "artifact_sha256": sha,
                "size_bytes": manifest.get("artifact_bytes"),
                "threads": args.threads,
                "machine": info,
                "tools": tools,
                "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "source": SOURCE,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", help="exported .onnx / .ort file or OpenVINO IR folder (its manifest beside it)")
    ap.add_argument("--manifest", help="the artifact's manifest (default: ARTIFACT.json beside it)")
    ap.add_argument("--pairs", help="paired set (blended/ + transmission/) to score at full resolution")
    ap.add_argument("--max-pairs", type=int, default=None)
    ap.add_argument("--sizes", default="256,512", help="comma-separated square sizes (px)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--time-cap", type=float, default=10.0, help="seconds of timed runs per size and mode (at least 3 runs)")
    ap.add_argument("--backend", default="auto", help="onnxruntime, openvino or auto (by the manifest's format)")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the runtime's choice)")
    ap.add_argument("--device", help="device label for the ledger (default: CPU model, cores, OS)")
    ap.add_argument("--no-verify", action="store_true", help="run even if the artifact's sha256 differs from its manifest")
    ap.add_argument("--json", help='write/extend this ledger file ({"rows": [...]})')
    args = ap.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    rows = bench(args)
    for r in rows:
        q = f" SSIM {r['ssim']:.4f} LMSE {r['lmse']:.4f} PSNR {r['psnr']:.2f}" if r["ssim"] is not None else ""
        print(
            f"{r['device']} | {r['backend']} {r['format']} {r['precision']} {r['size']}px: "
            f"{r['latency_ms']:.1f} ms (p90 {r['p90_ms']:.1f}, model {r['model_latency_ms']:.1f}){q}"
        )
    if args.json:
        path = Path(args.json)
        old = json.loads(path.read_text()).get("rows", []) if path.is_file() else []
        keys = {(r["device"], r["backend"], r["format"], r["precision"], r["size"], r["artifact"]) for r in rows}
        old = [
            r
            for r in old
            if (r.get("device"), r.get("backend"), r.get("format"), r.get("precision"), r.get("size"), r.get("artifact")) not in keys
        ]
        clean = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v  # noqa: E731
        doc = {"schema": "dereflect-bench/1", "rows": old + [{k: clean(v) for k, v in r.items()} for r in rows]}
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"ledger: {path} ({len(doc['rows'])} rows)")


if __name__ == "__main__":
    main()
