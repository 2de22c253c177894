"""The demo server under load, on loopback only: 2,000 requests from 50 concurrent clients, every
answer right, the server's memory flat. Bounded: fixed counts, a timeout on every request and a
wall-clock cap on the whole run."""

from __future__ import annotations

import gzip
import http.client
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")

CLIENTS = 50
REQUESTS = 2000
WARMUP = 500  # requests before the first memory reading (allocator and caches settle)
MAX_RSS_GROWTH_MB = 25.0
WALL_CLOCK_CAP_S = 180.0


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("load") / "www"
    root.mkdir()
    (root / "index.html").write_text("<!doctype html><title>demo</title>")
    (root / "main.js").write_text("export const x = 1;\n" * 200)
    (root / "runtime.wasm").write_bytes(b"\x00asm\x01\x00\x00\x00" + bytes(range(256)) * 256)
    with gzip.open(root / "runtime.wasm.gz", "wb") as fh:
        fh.write((root / "runtime.wasm").read_bytes())
    return root


@pytest.fixture(scope="module")
def served(site: Path):
    """`dereflect demo serve` as a real process on a free loopback port: (port, psutil.Process)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dereflect", "demo", "serve", "--port", "0", "--quiet", "--root", str(site)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith("serving ") and "http://127.0.0.1:" in first, first + proc.stderr.read()
        port = int(first.split("http://127.0.0.1:")[1].split("/")[0])
        yield port, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


#: (path, headers, expected status, expected body check)
MIX = [
    ("/", {}, 200),
    ("/main.js", {}, 200),
    ("/runtime.wasm", {"Accept-Encoding": "gzip"}, 200),
    ("/runtime.wasm", {}, 200),
    ("/missing.js", {}, 404),
    ("/../secret.txt", {}, 404),
]


def _client(port: int, count: int, offset: int, site: Path, errors: list[str], deadline: float) -> None:
    sizes = {"/": len((site / "index.html").read_bytes()), "/main.js": (site / "main.js").stat().st_size}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for i in range(count):
            if time.monotonic() > deadline:
                errors.append("wall-clock cap reached")
                return
            path, headers, status = MIX[(offset + i) % len(MIX)]
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                errors.append(f"{path}: {type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            if resp.status != status or resp.getheader("Cross-Origin-Embedder-Policy") != "require-corp":
                errors.append(f"{path}: {resp.status}")
            elif path in sizes and len(body) != sizes[path]:
                errors.append(f"{path}: {len(body)} bytes")
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    finally:
        conn.close()


def _load(port: int, total: int, site: Path, deadline: float) -> tuple[list[str], float]:
    errors: list[str] = []
    per_client = total // CLIENTS
    threads = [threading.Thread(target=_client, args=(port, per_client, k, site, errors, deadline)) for k in range(CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "clients still running at the wall-clock cap"
    return errors, time.perf_counter() - started


def test_2000_requests_from_50_clients(served: tuple[int, psutil.Process], site: Path) -> None:
    port, server = served
    deadline = time.monotonic() + WALL_CLOCK_CAP_S
    errors, _ = _load(port, WARMUP, site, deadline)
    assert errors == []
    before = server.memory_info().rss / 2**20
    errors, seconds = _load(port, REQUESTS, site, deadline)
    after = server.memory_info().rss / 2**20
    assert errors == [], errors[:10]
    assert after - before < MAX_RSS_GROWTH_MB, f"server RSS {before:.0f} -> {after:.0f} MB over {REQUESTS} requests"
    print(
        f"{REQUESTS} requests from {CLIENTS} clients in {seconds:.1f} s ({REQUESTS / seconds:.0f}/s); "
        f"server RSS {before:.0f} -> {after:.0f} MB"
    )
