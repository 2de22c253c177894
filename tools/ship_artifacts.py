"""Build the artifacts `dereflect remove` runs by default, and ship them in dereflect/weights/.

    .venv/bin/python tools/ship_artifacts.py --model student-nano          (the default student)
    .venv/bin/python tools/ship_artifacts.py --model student-mnv2-hq --formats onnx --precisions int8

Why shipped, not built on first use: the slim install (`pip install dereflect`: no torch, no
converters) cannot export, and an export takes half a minute; the artifacts are small (each file
well under MAX_FILE_BYTES). Re-run this whenever dereflect/weights/<model>.safetensors changes
(a new default student): the runtime skips artifacts whose manifest names other weights, and
tests/test_default_fast_path.py fails until they are rebuilt.

What it does, through the export stage's own command (nothing here converts or quantizes):
1. `python -m dereflect export dereflect/weights/<model>.safetensors --format F --precision P`
   per precision, into a temporary folder (its default calibration and parity images:
   synthesised from scikit-image's photos, seeded, so a rebuild on another machine matches).
2. Keeps each artifact whose parity gate passed and whose files are each under MAX_FILE_BYTES;
   says why it left out the others (a failed gate is never shipped).
3. Measures how much tile overlap the model needs (`measure_tile_overlap`): the smallest of
   OVERLAPS whose tiled output stays within TILE_SEAM_LEVELS of the whole-image output on real
   photos; the runtime tiles this model's shipped artifacts with it (fewer pixels run twice: a
   12 MP photo in 20 tiles runs 13.7 instead of 15.3 MP at 64 instead of 128 px).
4. Writes ship.json (model, checkpoint sha256, each artifact's format/precision/sha256/bytes and
   parity verdict, what was left out and why, the tile overlap and its measurement, the command) and swaps the folder into
   dereflect/weights/<model>-artifacts/ in one rename, so a half-built set is never shipped.
Exit status 1 when nothing passed. `--tile-overlap-only` re-measures step 3 for the shipped folder
and rewrites its ship.json (atomically), leaving the artifacts alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dereflect.export.manifest import find_artifacts, manifest_path, sha256_file  # noqa: E402
from dereflect.runtime.resolve import ARTIFACTS_SUFFIX, DEFAULT_NAME  # noqa: E402

WEIGHTS = ROOT / "dereflect" / "weights"
#: No shipped file may be larger (the lead's budget for package data; the default student's are < 1.3 MB).
MAX_FILE_BYTES = 10 * 1024 * 1024
#: What `dereflect remove` picks from (resolve.FAST_PRECISIONS order) on a CPU: OpenVINO IR where
#: openvino is installed, the .onnx on ONNX Runtime otherwise; fp32 for `--precision fp32`.
DEFAULT_FORMATS = "onnx,openvino"
DEFAULT_PRECISIONS = "int8,fp32"
INDEX = "ship.json"
#: Tile overlaps tried, smallest first, and the largest difference from the whole-image run (8-bit
#: levels) a tiled run may have; the runtime's default (tiling.DEFAULT_OVERLAP) is the last.
OVERLAPS = (64, 96, 128)
TILE_SEAM_LEVELS = 1


def log(msg: str) -> None:
    print(f"[ship] {msg}", flush=True)


def export(checkpoint: Path, formats: str, precision: str, out: Path, extra: list[str]) -> int:
    """One `dereflect export` run (the stage's CLI, as a user would run it); its exit status."""
    cmd = [sys.executable, "-m", "dereflect", "export", str(checkpoint.relative_to(ROOT)), "--format", formats]
    cmd += ["--precision", precision, "--out", str(out), *extra]
    log(" ".join(["dereflect", *cmd[3:]]))
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(tuple(f"{f} {precision}" for f in formats.split(","))):
            log(f"  {line.strip()}")
    if proc.returncode != 0:
        log(f"  exit {proc.returncode} in {time.perf_counter() - started:.0f} s: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return proc.returncode


def files_of(artifact: Path) -> list[Path]:
    return [artifact] if artifact.is_file() else sorted(p for p in artifact.rglob("*") if p.is_file())


def measure_tile_overlap(folder: Path) -> dict:
    """{"tile_overlap": N, "tile_overlap_check": {...}}: the smallest overlap in OVERLAPS whose output,
    in tiles of 384 px, differs from the whole-image output by at most TILE_SEAM_LEVELS on every
    photo (scikit-image's, upscaled to 1536x2048: many seams, real content), run on the shipped fp32
    ONNX artifact with ONNX Runtime. Falls back to the largest when none holds."""
    import numpy as np
    from PIL import Image
    from skimage import data

    from dereflect.runtime import load

    fp32 = next((a for a, m in find_artifacts(folder) if m["format"] == "onnx" and m["precision"] == "fp32"), None)
    if fp32 is None:
        return {}
    photos = [
        np.asarray(Image.fromarray(f()).convert("RGB").resize((2048, 1536), Image.BICUBIC))
        for f in (data.astronaut, data.coffee, data.chelsea)
    ]
    whole = load(fp32, "onnxruntime", max_pixels=2048 * 1536)
    reference = [whole.run(p).astype(np.int16) for p in photos]
    check: dict[str, dict] = {}
    chosen = OVERLAPS[-1]
    for overlap in OVERLAPS:
        tiled = load(fp32, "onnxruntime", tile=384, overlap=overlap)
        diffs = [np.abs(tiled.run(p).astype(np.int16) - ref) for p, ref in zip(photos, reference)]
        check[str(overlap)] = {
            "max_levels": int(max(d.max() for d in diffs)),
            "mean_levels": round(float(np.mean([d.mean() for d in diffs])), 4),
        }
        log(
            f"tile overlap {overlap}: tiled vs whole max {check[str(overlap)]['max_levels']} levels, mean {check[str(overlap)]['mean_levels']}"
        )
        if check[str(overlap)]["max_levels"] <= TILE_SEAM_LEVELS:
            chosen = overlap
            break
    return {
        "tile_overlap": chosen,
        "tile_overlap_check": {
            "tile": 384,
            "photos": "scikit-image astronaut, coffee, chelsea at 2048x1536",
            "max_levels_allowed": TILE_SEAM_LEVELS,
            "by_overlap": check,
        },
    }


def rewrite_tile_overlap(target: Path) -> int:
    """--tile-overlap-only: re-measure and rewrite target/ship.json in place (atomically)."""
    index_path = target / INDEX
    index = json.loads(index_path.read_text())
    index.update(measure_tile_overlap(target))
    tmp = index_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(tmp, index_path)
    log(f"{index_path.relative_to(ROOT)}: tile overlap {index.get('tile_overlap')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default=DEFAULT_NAME, help=f"shipped student name (dereflect/weights/NAME.safetensors; default {DEFAULT_NAME})"
    )
    ap.add_argument("--formats", default=DEFAULT_FORMATS, help=f"export formats, comma-separated (default {DEFAULT_FORMATS})")
    ap.add_argument("--precisions", default=DEFAULT_PRECISIONS, help=f"precisions, comma-separated (default {DEFAULT_PRECISIONS})")
    ap.add_argument(
        "--export-arg", action="append", default=[], help="passed on to `dereflect export` (repeat), e.g. --export-arg=--size=512"
    )
    ap.add_argument("--tile-overlap-only", action="store_true", help="re-measure the tile overlap of the shipped folder; no export")
    args = ap.parse_args(argv)

    if args.tile_overlap_only:
        return rewrite_tile_overlap(WEIGHTS / f"{args.model}{ARTIFACTS_SUFFIX}")
    checkpoint = WEIGHTS / f"{args.model}.safetensors"
    if not checkpoint.is_file():
        shipped = ", ".join(sorted(p.stem for p in WEIGHTS.glob("*.safetensors")))
        print(f"error: {checkpoint}: no such shipped student (shipped: {shipped})", file=sys.stderr)
        return 2
    target = WEIGHTS / f"{args.model}{ARTIFACTS_SUFFIX}"
    weights_sha = sha256_file(checkpoint)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".ship-", dir=WEIGHTS) as tmp:
        build, stage = Path(tmp) / "build", Path(tmp) / target.name
        stage.mkdir()
        kept, left_out = [], []
        for precision in precisions:
            export(checkpoint, args.formats, precision, build / precision, args.export_arg)
            found = find_artifacts(build / precision) if (build / precision).is_dir() else []
            if not found:
                left_out.append({"precision": precision, "reason": "the export wrote no artifact (see its output above)"})
            for artifact, manifest in found:
                parity = manifest["parity"]
                too_big = [f.name for f in files_of(artifact) if f.stat().st_size > MAX_FILE_BYTES]
                reason = None
                if parity.get("status") != "passed":
                    reason = f"parity {parity.get('status')}: {'; '.join(parity.get('failures') or []) or 'not checked'}"
                elif too_big:
                    reason = f"over {MAX_FILE_BYTES >> 20} MB: {', '.join(too_big)}"
                elif (manifest.get("source") or {}).get("sha256") != weights_sha:
                    reason = "its manifest names other weights than the checkpoint"
                if reason is not None:
                    left_out.append({"artifact": artifact.name, "reason": reason})
                    log(f"left out {artifact.name}: {reason}")
                    continue
                dst = stage / artifact.name
                (shutil.copytree if artifact.is_dir() else shutil.copy2)(artifact, dst)
                shutil.copy2(manifest_path(artifact), manifest_path(dst))
                kept.append(
                    {
                        "artifact": artifact.name,
                        "format": manifest["format"],
                        "precision": manifest["precision"],
                        "sha256": manifest["artifact_sha256"],
                        "bytes": manifest.get("artifact_bytes"),
                        "parity": {k: parity.get(k) for k in ("status", "runner", "budget")} | {"metrics": parity.get("metrics")},
                    }
                )
        if not kept:
            print(f"error: no artifact of {args.model} passed; nothing shipped ({target} unchanged)", file=sys.stderr)
            return 1
        index = {
            "kind": "dereflect-shipped-artifacts",
            "model": args.model,
            "checkpoint": checkpoint.name,
            "checkpoint_sha256": weights_sha,
            "artifacts": sorted(kept, key=lambda a: a["artifact"]),
            "left_out": left_out,
            **measure_tile_overlap(stage),
            "command": f"python tools/ship_artifacts.py --model {args.model} --formats {args.formats} --precisions {args.precisions}"
            + "".join(f" --export-arg={a}" for a in args.export_arg),
        }
        (stage / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        old = Path(tmp) / "old"
        if target.exists():
            os.replace(target, old)
        os.replace(stage, target)
    total = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    log(f"{target.relative_to(ROOT)}: {len(kept)} artifact(s), {total / 1e6:.1f} MB, in {time.perf_counter() - started:.0f} s")
    for a in index["artifacts"]:
        log(f"  {a['artifact']:32s} {a['format']:8s} {a['precision']:5s} {a['bytes'] / 1e6:5.2f} MB  parity {a['parity']['status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
