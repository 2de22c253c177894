"""Burst model latency: 5 frames at 512x512 and at 1 MP (1024x1024), per exported artifact, this CPU.

Why: the issue's budget is <= 150 ms for 5 frames at 512x512 (INT8 or fp16 on the CPU's best
backend); this times the model alone (`BurstModel.impl.infer` on (1,5,3,H,W), the call `dereflect
remove --burst` makes once per burst), median and p90 of --runs after --warmup runs, batch 1, each
artifact an export wrote into --artifacts (its manifest says it is a burst model), plus PyTorch
eager on the checkpoint. Rows go to --json as ledger rows ({"rows": [...]}), with the parity each
artifact passed at export.

    .venv/bin/python speed/bench_burst.py --artifacts runs/burst-export --json docs/burst_bench.json [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dereflect.bench.machine import device_name, machine_info  # noqa: E402
from dereflect.bench.timing import time_call  # noqa: E402
from dereflect.burst import pipeline  # noqa: E402
from dereflect.export.manifest import find_artifacts  # noqa: E402

SIZES = {"512x512": (512, 512), "1MP (1024x1024)": (1024, 1024)}


def export(model: str, out: Path, size: int) -> None:
    """The export stage's own Exporter, once per precision, the fp32 ONNX exported once (it takes minutes)."""
    import shutil
    import tempfile

    from dereflect.export.formats import FORMATS_BY_NAME
    from dereflect.export.pipeline import Exporter, ExportOptions
    from dereflect.models import load_deployable, shipped_weights

    ckpt = shipped_weights(model) or Path(model)
    net = load_deployable(ckpt)
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        for precision in ("fp32", "fp16", "int8"):
            opts = ExportOptions(precision=precision, size=size, val_count=4, calib_count=8)
            exporter = Exporter(ckpt, out, opts, log=lambda line: print(line, flush=True), model=net, base_onnx=base)
            if base is None:
                base = Path(shutil.copyfile(exporter.onnx_path("fp32"), Path(tmp) / "base.onnx"))
            for r in exporter.run([FORMATS_BY_NAME["onnx"], FORMATS_BY_NAME["openvino"]]):
                print(f"{r.format} {r.precision}: {r.status} {r.message}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, required=True, help="folder a `dereflect export --model burst-base|burst-mnv2` wrote")
    ap.add_argument("--model", default="burst-base", help="checkpoint for the PyTorch row")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true", help="leave out the PyTorch eager row")
    ap.add_argument("--only", default="", help="artifacts to time as format:precision[:backend], comma-separated (default: all)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--export", action="store_true", help="first export --model to ONNX and OpenVINO at fp32, fp16 and int8 into --artifacts"
    )
    ap.add_argument("--size", type=int, default=256, help="export: calibration and parity size")
    args = ap.parse_args()
    if args.export:
        export(args.model, args.artifacts, args.size)
    targets: list[tuple[str, str, str, dict]] = [] if args.no_torch else [("pytorch", "fp32", args.model, {})]
    for path, manifest in find_artifacts(args.artifacts):
        if pipeline.input_frames(manifest) and manifest["format"] in ("onnx", "openvino") and manifest.get("target") != "web":
            targets.append((manifest["format"], manifest["precision"], str(path), manifest))
    info = machine_info()
    rows = []
    for fmt, precision, model, manifest in targets:
        backends = ["torch"] if fmt == "pytorch" else (["onnxruntime", "openvino"] if fmt == "onnx" else ["openvino"])
        wanted = [tuple(item.split(":")) for item in args.only.split(",") if item]
        if fmt != "pytorch" and wanted and not any(w[:2] == (fmt, precision) for w in wanted):
            continue
        backends = [
            b
            for b in backends
            if not wanted or fmt == "pytorch" or any(w[:2] == (fmt, precision) and (len(w) < 3 or w[2] == b) for w in wanted)
        ]
        for backend in backends:
            net = pipeline.load_model(model, backend)
            for label, (h, w) in SIZES.items():
                x = np.random.default_rng(0).random((1, net.frames, 3, h, w), dtype=np.float32)
                t = time_call(lambda net=net, x=x: net.impl.infer(x), runs=args.runs, warmup=args.warmup, time_cap_s=120.0)
                parity = (manifest.get("parity") or {}) if manifest else {}
                row = {
                    "device": device_name(info),
                    "model": ((manifest or {}).get("source") or {}).get("model") or Path(model).stem,
                    "format": fmt,
                    "backend": backend,
                    "precision": precision,
                    "frames": net.frames,
                    "size": label,
                    "median_ms": round(t.median_ms, 1),
                    "p90_ms": round(t.p90_ms, 1),
                    "runs": len(t.runs_ms),
                    "parity": parity.get("status", "reference"),
                    "ssim_drop": (parity.get("metrics") or {}).get("ssim_drop"),
                    "max_abs_diff": (parity.get("metrics") or {}).get("max_abs_diff"),
                    "artifact_bytes": manifest.get("artifact_bytes") if manifest else None,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
