"""The main job on built-in defaults, with nothing but a fresh clone (`dereflect demo run`).

Synthesise sequences through glass from scikit-image's bundled photos, score the identity
baseline (input as output) and the shipped default student on them, remove reflections from the
synthesised photos, export the student to every format this machine builds and benchmark every
artifact on every backend here with the synthesised photos as pairs (latency, SSIM/LMSE parity,
a ledger and an HTML report).
"""

from __future__ import annotations

import json
from pathlib import Path

from dereflect.errors import UsageError


def run_main_job(console, out: Path, sequences: int, size: int, bench_sizes: str, formats: str, precisions: str) -> None:
    """Every step, printed to `console` (rich); results in `out`. A failed benchmark gate raises at the end."""
    from rich.table import Table

    from dereflect.bench.ledger import BROWSER_LEDGER
    from dereflect.bench.runner import BenchOptions, bench_folder, check_passed, parse_sizes
    from dereflect.bench.table import print_results
    from dereflect.data.cli import synthesize_folder
    from dereflect.evaluate import evaluate, load_predict
    from dereflect.export.formats import PRECISIONS
    from dereflect.export.pipeline import export_all
    from dereflect.files import write_bytes_atomic
    from dereflect.images import read_image, write_image
    from dereflect.runtime import load
    from dereflect.runtime.resolve import default_checkpoint

    wanted = tuple(p.strip() for p in precisions.split(",") if p.strip())
    if not wanted or any(p not in PRECISIONS for p in wanted):
        raise UsageError(None, f"--precisions takes {', '.join(PRECISIONS)} (comma-separated), got '{precisions}'")
    opts = BenchOptions(sizes=parse_sizes(bench_sizes), runs=10, warmup=2, time_cap_s=2.0, thumbs=4)
    opts.check()

    synth_dir = out / "synth"
    console.print(f"[bold]1/5[/] synthesising {sequences} sequences through glass from scikit-image's photos")
    synthesize_folder(synth_dir, None, sequences=sequences, frames=5, size=size, seed=0, preview=out / "preview.png")

    console.print("[bold]2/5[/] scoring the identity baseline and the default student on the middle frames")
    scores = {}
    for model in ("identity", "default"):
        result = evaluate(load_predict(model), synth_dir, progress=False)
        scores[model] = result.mean
        write_bytes_atomic(out / f"scores-{model}.json", json.dumps(result.to_json(model, synth_dir), indent=2).encode())
    table = Table(title=f"middle frames of {sequences} synthetic sequences ({size}px)")
    for col in ("model", "PSNR (dB)", "SSIM", "LMSE", "NCC"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for model, m in scores.items():
        table.add_row(model, f"{m['psnr']:.2f}", f"{m['ssim']:.4f}", f"{m['lmse']:.4f}", f"{m['ncc']:.4f}")
    console.print(table)

    console.print("[bold]3/5[/] removing reflections from the synthesised photos with the default student")
    session = load("default")
    removed = out / "removed"
    for seq in sorted(p.parent for p in synth_dir.glob("*/frame_000.png")):
        frames = sorted(seq.glob("frame_*.png"))
        photo = read_image(frames[len(frames) // 2]).pixels
        write_image(removed / f"{seq.name}_photo.png", photo)
        write_image(removed / f"{seq.name}_clean.png", session.run(photo))
    console.print(f"\nbackend: {session.describe()}")

    artifacts = out / "artifacts"
    console.print(f"[bold]4/5[/] exporting the default student ({formats}; {', '.join(wanted)}) into {artifacts}")
    export_all(
        default_checkpoint().resolve(),
        artifacts,
        wanted,
        formats,
        log=lambda line: console.print(f"  {line}", markup=False),
        size=128,
        val_count=4,
        calib_count=16,
    )
    console.print("[bold]5/5[/] benchmarking every artifact on every backend here (synthesised photos as pairs)")
    opts.pairs = synth_dir
    merged = [BROWSER_LEDGER] if BROWSER_LEDGER.is_file() else []
    try:
        result, document = bench_folder(
            artifacts, opts, merged, out / "bench.json", out / "bench.html", log=lambda line: console.print(line, markup=False)
        )
        print_results(console, result, document)
        check_passed(result, artifacts)
    finally:
        console.print(
            f"results in {out}/: preview.png (the synthetic sequences), scores-*.json, removed/ (photo and "
            f"clean pairs), artifacts/ (exports + manifests), bench.json (ledger)"
        )
        console.print(f"report: {(out / 'bench.html').resolve()} (open it in a browser)")
