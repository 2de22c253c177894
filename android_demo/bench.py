"""Browser latency of the demo's model: onnxruntime-web in headless Chromium, into the bench ledger.

    python android_demo/bench.py [--sizes 256,512] [--runs 15] [--threads 0,1] [--backend wasm] [--json FILE]

For each thread setting (0 = the app's default: all cores up to 4 when cross-origin isolated; 1 =
single-threaded) the app is loaded with ?threads=N and `window.__dereflect.bench(size)` times the
model alone (same session the capture button uses, after warm-up runs), at each size. One ledger
row per (threads, size) via dereflect.bench.ledger.ledger_row; the rows are printed and written as
a JSON list (default runs/bench/browser-ledger.json). Needs the built app and Chromium (see README).
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="256,512", help="square input sizes, comma-separated")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", default="0,1", help="thread settings (0 = app default), comma-separated")
    ap.add_argument("--backend", default="wasm", choices=["wasm", "webgpu", "auto"])
    ap.add_argument("--json", type=Path, default=REPO / "runs" / "bench" / "browser-ledger.json")
    args = ap.parse_args(argv)
    rows = measure([int(s) for s in args.sizes.split(",")], args.runs, args.warmup, [int(t) for t in args.threads.split(",")], args.backend)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"ledger: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
