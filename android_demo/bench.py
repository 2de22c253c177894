"""Browser latency of the demo's model: onnxruntime-web in headless Chromium, into the bench ledger.

    python android_demo/bench.py [--sizes 256,512] [--runs 15] [--threads 0,1] [--backend wasm] [--json FILE]
    python android_demo/bench.py --full 4000x3000 [--runs 3] [--threads 0]

For each thread setting (0 = the app's default: all cores up to 4 when cross-origin isolated; 1 =
single-threaded) the app is loaded with ?threads=N and `window.__dereflect.bench(size)` times the
model alone (same session the capture button uses, after warm-up runs), at each size. One ledger
row per (threads, size) via dereflect.bench.ledger.ledger_row; the rows are printed and written as
a JSON list (default runs/bench/browser-ledger.json). Needs the built app and Chromium (see README).

--full WxH times the app's "Full resolution" button instead, as a person uses it: a synthetic
photo of that size (a JPEG) is picked from the gallery, then the button is clicked `--runs` times;
each run is timed in the page from the click to the result on screen (the metrics line), while a
16 ms setInterval heartbeat on the main thread records its longest gap (how long the page froze).
One ledger row per thread setting: median/p90 seconds, tiles, and the heartbeat's worst gap
(default file runs/bench/browser-full-ledger.json).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _browser_module():
    spec = importlib.util.spec_from_file_location("android_demo_browser", HERE / "browser.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(sizes: list[int], runs: int, warmup: int, threads: list[int], backend: str) -> list[dict]:
    from dereflect.demo.server import APP_ROOT

    browser = _browser_module()
    version = browser.chromium_version()
    device = f"headless {version} on {platform.machine()} ({os.cpu_count()} cores), {platform.system()}"
    rows = []
    with browser.serving(APP_ROOT) as server, browser.chromium() as context:
        for n in threads:
            query = f"?backend={backend}" + (f"&threads={n}" if n else "")
            page = browser.open_app(context, f"http://127.0.0.1:{server.port}/{query}")
            info = page.evaluate("window.__dereflect.info()")
            for size in sizes:
                times = page.evaluate("([s, r, w]) => window.__dereflect.bench(s, r, w)", [size, runs, warmup])
                row = browser.page_ledger_row(
                    times, info, size=size, device=device, browser=version, source="android_demo/bench.py", warmup=warmup
                )
                rows.append(row)
                print(
                    f"{row['backend']} {size}px, {row['threads']} thread(s): median {row['latency_ms']:.1f} ms, "
                    f"p90 {row['p90_ms']:.1f} ms over {row['runs']} runs",
                    flush=True,
                )
    return rows


#: In the page: click "Full resolution", wait for the result line, and report the wall time, the
#: main thread's longest heartbeat gap and the progress values seen (aria-valuenow, if any).
FULL_RUN_JS = """
async () => {
  const metrics = document.getElementById('metrics');
  const bar = document.getElementById('progress');
  const ticks = [];
  const progress = []; // [time, tiles done] from the bar's aria-valuenow (the worker's progress messages)
  new MutationObserver(() => progress.push([performance.now(), Number(bar.getAttribute('aria-valuenow'))]))
    .observe(bar, { attributes: true, attributeFilter: ['aria-valuenow'] });
  const done = new Promise((resolve) => {
    const seen = new MutationObserver(() => {
      const t = metrics.textContent;
      if (t.includes('tiles') || t.startsWith('failed')) { seen.disconnect(); resolve(t); }
    });
    seen.observe(metrics, { childList: true, characterData: true, subtree: true });
  });
  const t0 = performance.now();
  ticks.push(t0);
  const beat = setInterval(() => ticks.push(performance.now()), 16);
  document.getElementById('full').click();
  const text = await done;
  const end = performance.now();
  clearInterval(beat);
  // the run ends with the last tile's progress message (then the result is drawn); an app without
  // progress froze for the whole run
  const runEnd = progress.length ? progress[progress.length - 1][0] : end;
  const maxGap = (ts) => ts.slice(1).reduce((m, t, i) => Math.max(m, t - ts[i]), 0);
  const maxGapMs = maxGap([...ticks.filter((t) => t < runEnd), runEnd]);
  const drawGapMs = maxGap([runEnd, ...ticks.filter((t) => t >= runEnd), end]);
  const full = window.__dereflect.lastFull ? window.__dereflect.lastFull() : null; // model/worker split (new app)
  return { ms: end - t0, text, maxGapMs, drawGapMs, ticks: ticks.length, progress: progress.map((p) => p[1]), full };
}
"""


def browser_cpu_seconds() -> float:
    """CPU time (user + system, s) used so far by this process's descendants: the Playwright driver
    and the Chromium it launched. On a shared machine the wall time says how busy the others were;
    the CPU time a run took says what it costs (on an idle 2-core machine: wall ~ CPU time / 2)."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass  # exited meanwhile
    return total


def synthetic_photo(path: Path, width: int, height: int) -> Path:
    """A photo-like JPEG of width x height: skimage's coffee enlarged, a faint reflection of the
    astronaut on top, sensor-like noise (so the JPEG decodes like a camera file, ~quality 92)."""
    import numpy as np
    from PIL import Image
    from skimage import data

    base = np.asarray(Image.fromarray(data.coffee()).resize((width, height), Image.BICUBIC), np.float32)
    refl = np.asarray(Image.fromarray(data.astronaut()).resize((width, height), Image.BILINEAR), np.float32)
    rng = np.random.default_rng(0)
    img = 0.8 * base + 0.25 * refl + rng.normal(0, 3, base.shape).astype(np.float32)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=92)
    return path


def measure_full(
    width: int,
    height: int,
    runs: int,
    threads: list[int],
    backend: str,
    tile: int | None = None,
    overlap: int | None = None,
    root: Path | None = None,
) -> list[dict]:
    """The "Full resolution" button on a width x height photo, `runs` times per thread setting
    (tile/overlap: the app's ?tile= and ?overlap= options; None = the app's defaults; root: another
    build of the app to serve, e.g. an older one to compare with)."""
    import statistics
    import tempfile

    from dereflect.demo.server import APP_ROOT

    browser = _browser_module()
    version = browser.chromium_version()
    device = f"headless {version} on {platform.machine()} ({os.cpu_count()} cores), {platform.system()}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp, browser.serving(root or APP_ROOT) as server, browser.chromium() as context:
        photo = synthetic_photo(Path(tmp) / f"photo-{width}x{height}.jpg", width, height)
        for n in threads:
            query = f"?backend={backend}" + (f"&threads={n}" if n else "")
            query += (f"&tile={tile}" if tile else "") + (f"&overlap={overlap}" if overlap is not None else "")
            page = browser.open_app(context, f"http://127.0.0.1:{server.port}/{query}")
            info = page.evaluate("window.__dereflect.info()")
            results = []
            load = [os.getloadavg()[0]]  # the machine is shared: note how busy it was around each run
            for i in range(runs):
                if i == 0 or page.evaluate("document.getElementById('full').disabled"):
                    page.evaluate("document.getElementById('retake').click()")
                    before = page.evaluate("window.__dereflect.runs")
                    page.set_input_files("#file", str(photo))
                    page.wait_for_function("n => window.__dereflect.runs > n || window.__dereflect.error", arg=before, timeout=120_000)
                cpu0 = browser_cpu_seconds()
                r = page.evaluate(FULL_RUN_JS)
                r["cpuS"] = browser_cpu_seconds() - cpu0
                if "tiles" not in r["text"]:
                    raise RuntimeError(f"full resolution failed: {r['text']}")
                results.append(r)
                load.append(os.getloadavg()[0])
                print(
                    f"  run {i + 1}: {r['ms'] / 1000:.2f} s ({r['cpuS']:.1f} CPU s), longest main-thread gap {r['maxGapMs']:.0f} ms while it ran, "
                    f"{r['drawGapMs']:.0f} ms drawing the result, "
                    f"{len(r['progress'])} progress updates; {r['text']}"
                    + (f" (model {r['full']['modelMs'] / 1000:.2f} s, worker {r['full']['workerMs'] / 1000:.2f} s)" if r["full"] else ""),
                    flush=True,
                )
            times = [r["ms"] for r in results]
            tiles = int(results[0]["text"].split(" tiles")[0].split()[-1])
            row = browser.page_ledger_row(
                times,
                info,
                size=max(width, height),
                device=device,
                browser=version,
                source="android_demo/bench.py --full",
                image=[width, height],
                load_average_1min=[round(a, 2) for a in load],
                tiles=tiles,
                max_main_thread_gap_ms=round(max(r["maxGapMs"] for r in results), 1),
                median_main_thread_gap_ms=round(statistics.median(r["maxGapMs"] for r in results), 1),
                max_draw_gap_ms=round(max(r["drawGapMs"] for r in results), 1),
                tile_plan=results[0]["full"]["plan"] if results[0]["full"] else None,
                browser_cpu_s=[round(r["cpuS"], 2) for r in results],
                model_ms=[round(r["full"]["modelMs"], 1) for r in results if r["full"]],
            )
            rows.append(row)
            print(
                f"full resolution {width}x{height} ({tiles} tiles), {row['backend']}, {row['threads']} thread(s): "
                f"median {row['latency_ms'] / 1000:.2f} s, p90 {row['p90_ms'] / 1000:.2f} s over {row['runs']} runs; "
                f"longest main-thread gap {row['max_main_thread_gap_ms']:.0f} ms; load average {min(load):.1f}-{max(load):.1f}",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="256,512", help="square input sizes, comma-separated")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", default="0,1", help="thread settings (0 = app default), comma-separated")
    ap.add_argument("--backend", default="wasm", choices=["wasm", "webgpu", "auto"])
    ap.add_argument("--full", metavar="WxH", help="time the Full resolution button on a WxH photo instead")
    ap.add_argument("--tile", type=int, help="--full: the app's tile side (?tile=; default the app's 512)")
    ap.add_argument("--overlap", type=int, help="--full: the app's tile overlap (?overlap=; default the app's 64)")
    ap.add_argument("--root", type=Path, help="--full: serve this build of the app instead of dereflect/demo/www")
    ap.add_argument("--json", type=Path, help="ledger file (default runs/bench/browser-ledger.json, -full- for --full)")
    args = ap.parse_args(argv)
    if args.full:
        width, height = (int(v) for v in args.full.lower().split("x"))
        rows = measure_full(
            width, height, args.runs, [int(t) for t in args.threads.split(",")], args.backend, args.tile, args.overlap, args.root
        )
        args.json = args.json or REPO / "runs" / "bench" / "browser-full-ledger.json"
    else:
        rows = measure(
            [int(s) for s in args.sizes.split(",")], args.runs, args.warmup, [int(t) for t in args.threads.split(",")], args.backend
        )
        args.json = args.json or REPO / "runs" / "bench" / "browser-ledger.json"
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"ledger: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
