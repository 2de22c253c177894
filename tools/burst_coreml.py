"""Try Core ML on the burst model: does coremltools convert its grid sampling (torch grid_sample)?

Why a script and not a row of `dereflect export`: Core ML predicts only on macOS, so on this machine
no parity gate can pass; what can be learnt here is whether the conversion goes through and what the
warps become (MIL `resample`, iOS 15+), which this prints and records as JSON.

    .venv/bin/python tools/burst_coreml.py --size 256 --json docs/burst_coreml.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dereflect.models import load_checkpoint, shipped_weights  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="burst-base")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import coremltools as ct

    net = load_checkpoint(shipped_weights(args.model) or Path(args.model)).eval()
    example = torch.rand(1, net.input_frames, 3, args.size, args.size)
    record: dict = {"model": args.model, "coremltools": ct.__version__, "input": list(example.shape)}
    started = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:  # torch.export's program (coremltools' newer frontend); the TorchScript trace fails earlier on the shape ops
            program = torch.export.export(net, (example,)).run_decompositions({})
            ml = ct.convert(
                program,
                inputs=[ct.TensorType(name="input", shape=tuple(example.shape))],
                convert_to="mlprogram",
                minimum_deployment_target=ct.target.iOS16,
                compute_precision=ct.precision.FLOAT16,
            )
        except Exception as exc:  # noqa: BLE001 - the finding is the failure itself
            record.update(status="failed", error=f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}")
            ml = None
    record["convert_s"] = round(time.perf_counter() - started, 1)
    if ml is not None:
        ops = Counter(op.op_type for fn in ml._mil_program.functions.values() for op in fn.operations)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "burst.mlpackage"
            ml.save(str(path))
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        record.update(status="converted", resample_ops=ops.get("resample", 0), ops=dict(sorted(ops.items())), mlpackage_bytes=size)
        record["predict"] = "not run: Core ML predicts only on macOS"
    print(json.dumps({k: v for k, v in record.items() if k != "ops"}))
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
