"""`dereflect demo run` (the main job on built-in defaults) and `dereflect demo serve` (phone app).

The main job walks the pipeline with nothing but a fresh clone: synthesise sequences through
glass from scikit-image's bundled photos, score the identity baseline (input as output) and the
shipped default student on them, remove reflections from the synthesised photos, export the
student to every format this machine builds (fp32, fp16, int8) and benchmark every artifact on
every backend here with the synthesised photos as pairs (latency, SSIM/LMSE parity, a ledger and
an HTML report).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("run")
def run_command(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where the results go."),
    sequences: int = typer.Option(8, "--sequences", min=1, help="How many sequences to synthesise."),
    size: int = typer.Option(256, "--size", min=32, help="Frame side in pixels."),
    bench_sizes: str = typer.Option("256", "--bench-sizes", help="Square sizes (px) the benchmark times."),
    formats: str = typer.Option("all", "--formats", help="Export formats to benchmark (comma-separated, or all)."),
    precisions: str = typer.Option("fp32,fp16,int8", "--precisions", help="Export precisions to benchmark."),
) -> None:
    """Run the main job on built-in defaults and print where the results are.

    Example: dereflect demo run --out runs/demo
    """
    from rich.console import Console
    from rich.table import Table

    from dereflect.data.cli import synth_command
    from dereflect.evaluate import evaluate, load_predict
    from dereflect.files import write_bytes_atomic

    console = Console(highlight=False)
    synth_dir = out / "synth"
    console.print(f"[bold]1/5[/] synthesising {sequences} sequences through glass from scikit-image's photos")
    synth_command(out=synth_dir, images=None, sequences=sequences, frames=5, size=size, seed=0, preview=out / "preview.png")

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
    from dereflect.images import read_image, write_image
    from dereflect.runtime import load

    session = load("default")
    removed = out / "removed"
    for seq in sorted(p.parent for p in synth_dir.glob("*/frame_000.png")):
        frames = sorted(seq.glob("frame_*.png"))
        photo = read_image(frames[len(frames) // 2]).pixels
        write_image(removed / f"{seq.name}_photo.png", photo)
        write_image(removed / f"{seq.name}_clean.png", session.run(photo))
    console.print(f"\nbackend: {session.describe()}")

    from dereflect.bench.exporting import export_all
    from dereflect.bench.runner import BenchOptions
    from dereflect.bench_cli import BROWSER_LEDGER, bench_and_report, parse_sizes
    from dereflect.errors import UsageError
    from dereflect.export.formats import PRECISIONS
    from dereflect.runtime.resolve import default_checkpoint

    wanted = tuple(p.strip() for p in precisions.split(",") if p.strip())
    if not wanted or any(p not in PRECISIONS for p in wanted):
        raise UsageError(None, f"--precisions takes {', '.join(PRECISIONS)} (comma-separated), got '{precisions}'")
    opts = BenchOptions(sizes=parse_sizes(bench_sizes), runs=10, warmup=2, time_cap_s=2.0, pairs=synth_dir, thumbs=4)
    opts.check()
    artifacts = out / "artifacts"
    console.print(f"[bold]4/5[/] exporting the default student ({formats}; {', '.join(wanted)}) into {artifacts}")
    export_all(default_checkpoint().resolve(), artifacts, wanted, formats, log=lambda line: console.print(f"  {line}", markup=False),
               size=128, val_count=4, calib_count=16)
    console.print("[bold]5/5[/] benchmarking every artifact on every backend here (synthesised photos as pairs)")
    merged = [BROWSER_LEDGER] if BROWSER_LEDGER.is_file() else []
    try:
        bench_and_report(console, artifacts, opts, merged, out / "bench.json", out / "bench.html")
    finally:
        console.print(f"results in {out}/: preview.png (the synthetic sequences), scores-*.json, removed/ (photo and "
                      f"clean pairs), artifacts/ (exports + manifests), bench.json (ledger)")
        console.print(f"report: {(out / 'bench.html').resolve()} (open it in a browser)")


from dereflect.demo_server import serve_command  # noqa: E402  (the phone demo's server lives beside its app)

app.command("serve", help=serve_command.__doc__)(serve_command)
