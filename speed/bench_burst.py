"""Burst model latency and quality: 5 frames at 512x512 and at 1 MP (1024x1024), per exported artifact, this CPU.

Why: the issue's budget is <= 150 ms for 5 frames at 512x512 (INT8 or fp16 on the CPU's best
backend); this times the model alone (`BurstModel.impl.infer` on (1,5,3,H,W), the call `dereflect
remove --burst` makes once per burst), median and p90 of --runs after --warmup runs, batch 1, each
artifact an export wrote into --artifacts (its manifest says it is a burst model), plus PyTorch
eager on the checkpoint. Quality per artifact: PSNR/SSIM/LMSE against the transmission on --quality
synthesised 5-frame sequences at 256 px (registered first for a model that asks for it), with the
PyTorch model's SSIM beside it (ref_ssim). Rows are benchmark-ledger rows (dereflect/bench/ledger.py:
status = the artifact's parity verdict at export), so `dereflect bench ARTIFACTS --merge FILE`
puts them in the same table and HTML report as the students'.

    .venv/bin/python speed/bench_burst.py --model burst-mnv2 --artifacts runs/burst-export-mnv2 --export \\
        --json docs/burst_bench_mnv2.json [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dereflect import metrics  # noqa: E402
from dereflect.bench.ledger import ledger_document, ledger_row, write_ledger  # noqa: E402
from dereflect.bench.machine import device_name, machine_info  # noqa: E402
from dereflect.bench.timing import time_call  # noqa: E402
from dereflect.burst import pipeline  # noqa: E402
from dereflect.export.manifest import find_artifacts  # noqa: E402

SIZES = (512, 1024)  # square sides: 512x512 and 1 MP


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


def quality_set(count: int):
    from dereflect.export.calib import synthesize_sequences

    return synthesize_sequences(count, 256, seed=4242, frames=5)


def score(net: pipeline.BurstModel, seqs) -> dict[str, float]:
    """Mean PSNR/SSIM/LMSE of `net` on the sequences, as the runtime feeds it (registered if it asks)."""
    values: dict[str, list[float]] = {"psnr": [], "ssim": [], "lmse": []}
    for frames, truth in zip(seqs.images, seqs.truth):
        if net.registered:
            frames = pipeline.register_frames(frames.transpose(0, 2, 3, 1), 2).transpose(0, 3, 1, 2)
        out = np.asarray(net.impl.infer(np.ascontiguousarray(frames[None], dtype=np.float32)))[0]
        g, o = (np.clip(a, 0, 1).transpose(1, 2, 0) * 255.0 for a in (truth, out))
        values["psnr"].append(metrics.psnr(g, o))
        values["ssim"].append(metrics.ssim(g, o))
        values["lmse"].append(metrics.lmse(g, o))
    return {k: round(float(np.mean(v)), 4) for k, v in values.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, required=True, help="folder a `dereflect export --model burst-base|burst-mnv2` wrote")
    ap.add_argument("--model", default="burst-base", help="checkpoint for the PyTorch row")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true", help="leave out the PyTorch eager row")
    ap.add_argument("--only", default="", help="artifacts to time as format:precision[:backend], comma-separated (default: all)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", type=Path, help="benchmark ledger to write (merge it with `dereflect bench --merge`)")
    ap.add_argument("--quality", type=int, default=8, help="synthesised 5-frame sequences for PSNR/SSIM/LMSE")
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
    seqs = quality_set(args.quality)
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
            scores = score(net, seqs)
            parity = (manifest.get("parity") or {}) if manifest else {}
            name = ((manifest or {}).get("source") or {}).get("model") or Path(model).stem
            for side in SIZES:
                x = np.random.default_rng(0).random((1, net.frames, 3, side, side), dtype=np.float32)
                t = time_call(lambda net=net, x=x: net.impl.infer(x), runs=args.runs, warmup=args.warmup, time_cap_s=120.0)
                row = ledger_row(
                    t.runs_ms,
                    size=side,
                    device=device_name(info),
                    backend=backend,
                    fmt=fmt,
                    precision=precision,
                    status=parity.get("status", "reference"),
                    model=name,
                    artifact=Path(model).name,
                    frames=net.frames,
                    threads=os.environ.get("OMP_NUM_THREADS"),
                    **scores,
                    ref_ssim=None,
                    parity_ssim_drop=(parity.get("metrics") or {}).get("ssim_drop"),
                    parity_max_abs_diff=(parity.get("metrics") or {}).get("max_abs_diff"),
                    artifact_bytes=manifest.get("artifact_bytes") if manifest else None,
                )
                rows.append(row)
                print(
                    json.dumps({k: row[k] for k in ("model", "format", "backend", "precision", "size", "latency_ms", "ssim")}), flush=True
                )
    ref = {r["size"]: r["ssim"] for r in rows if r["status"] == "reference"}
    for r in rows:
        r["ref_ssim"] = ref.get(r["size"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_ledger(args.json, ledger_document(rows, machine=info, sequences=seqs.source))


if __name__ == "__main__":
    main()
