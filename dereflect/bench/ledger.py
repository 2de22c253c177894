"""The benchmark ledger: one row per device x backend x format x precision x size.

The format (Qualcomm AI Hub's numerics ledger is the model): `{"schema", "rows": [...],
"summary"}`; every row carries at least device, backend, format, precision, size, status,
latency_ms (median), p90_ms, psnr, ssim, lmse, ref_ssim, plus the tools and the machine. The
browser demo (`ledger_row` below, a bare JSON list) and the standalone
speed/device_runner.py write rows of the same shape, so ledgers from several machines merge
into one table and one report. Statuses: passed / failed (measured, outside the parity budget) /
error (the backend is here but the artifact would not run) / could not run (no such backend on
this machine: not a failure) / reference (the PyTorch fp32 model) / ok (latency measured where
no verdict was made, e.g. the browser).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dereflect.errors import DereflectError

LEDGER_SCHEMA = "dereflect-bench/1"
#: Where android_demo/bench.py writes the browser's rows; `dereflect bench` merges it when present.
BROWSER_LEDGER = Path("runs/bench/browser-ledger.json")
REQUIRED_KEYS = ("device", "backend", "format", "precision", "size", "status")
ROW_KEYS = REQUIRED_KEYS + ("latency_ms", "p90_ms", "psnr", "ssim", "lmse", "ref_ssim")
MEASURED = ("passed", "failed", "ok", "reference")  # statuses that carry a latency
GATE_FAILS = ("failed", "error")


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two rows the same measurement (a newer one replaces an older one)."""
    return (
        row.get("device"),
        row.get("backend"),
        row.get("format"),
        row.get("precision"),
        row.get("size"),
        row.get("artifact") or row.get("model"),
        row.get("threads"),
    )


def clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null, numpy scalars plain floats, floats rounded sensibly."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.6g}") if abs(value) < 1e-3 else round(value, 6)
    return value


def load_ledger(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ledger file: `{"rows": [...]}` (dereflect bench, device_runner.py) or a bare
    list (the browser demo). A row without the keys that place it is refused, naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DereflectError(path, "no such ledger file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DereflectError(path, f"not a ledger: invalid JSON ({exc})") from None
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise DereflectError(path, 'not a ledger: expected {"rows": [...]} or a list of rows')
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DereflectError(path, f"ledger row {i} is not an object")
        missing = [k for k in REQUIRED_KEYS if k not in row]
        if missing:
            raise DereflectError(path, f"ledger row {i} has no {', '.join(missing)}")
    return rows


def merge_rows(*groups: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of several ledgers as one list; a later group's row replaces an earlier one with the
    same key (so this run's rows win over a merged file's old ones), order otherwise kept."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rows in groups:
        for row in rows:
            key = row_key(row)
            merged.pop(key, None)
            merged[key] = row
    return list(merged.values())


def _latency(row: dict[str, Any]) -> float | None:
    value = row.get("latency_ms")
    return float(value) if row.get("status") in MEASURED and isinstance(value, (int, float)) else None


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """fp32 median / int8 (and fp16) median for each device, backend, format and size that has
    both; also written into the rows as `speedup_vs_fp32`."""
    fp32 = {(r["device"], r["backend"], r["format"], r["size"]): _latency(r) for r in rows if r.get("precision") == "fp32"}
    out = []
    for r in rows:
        if r.get("precision") not in ("fp16", "int8"):
            continue
        base = fp32.get((r["device"], r["backend"], r["format"], r["size"]))
        mine = _latency(r)
        if base and mine:
            r["speedup_vs_fp32"] = round(base / mine, 3)
            out.append(
                {
                    "device": r["device"],
                    "backend": r["backend"],
                    "format": r["format"],
                    "size": r["size"],
                    "precision": r["precision"],
                    "fp32_ms": base,
                    "ms": mine,
                    "speedup": r["speedup_vs_fp32"],
                    "status": r["status"],
                }
            )
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per device: the fastest passing target at each size (what to ship) and the INT8-vs-fp32
    speed-up of the best backend (the backend+format whose INT8 is fastest at the largest size)."""
    ups = speedups(rows)
    devices: dict[str, Any] = {}
    for device in dict.fromkeys(r["device"] for r in rows):
        mine = [r for r in rows if r["device"] == device]
        ship = {}
        for size in sorted({r["size"] for r in mine if _latency(r) is not None}):
            candidates = [r for r in mine if r["size"] == size and r["status"] in ("passed", "ok") and _latency(r) is not None]
            if candidates:
                best = min(candidates, key=lambda r: _latency(r) or math.inf)
                ship[str(size)] = {
                    k: best.get(k)
                    for k in ("backend", "format", "precision", "artifact", "latency_ms", "ssim", "lmse", "ref_ssim", "status")
                }
        int8 = [u for u in ups if u["device"] == device and u["precision"] == "int8"]
        best_int8 = None
        if int8:
            largest = max(u["size"] for u in int8)
            best_int8 = min((u for u in int8 if u["size"] == largest), key=lambda u: u["ms"])
        devices[device] = {"ship": ship, "int8_vs_fp32_best": best_int8, "int8_vs_fp32": [u for u in ups if u["device"] == device]}
    return {
        "devices": devices,
        "gate": {"failed": sum(r["status"] in GATE_FAILS for r in rows), "passed": sum(r["status"] == "passed" for r in rows)},
    }


def ledger_document(rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The JSON file: schema, rows, summary (computed from the rows), anything else given."""
    summary = summarize(rows)
    return clean({"schema": LEDGER_SCHEMA, "rows": rows, "summary": summary, **extra})


def write_ledger(path: str | Path, document: dict[str, Any]) -> None:
    from dereflect.files import write_bytes_atomic

    write_bytes_atomic(Path(path), (json.dumps(document, indent=1, allow_nan=False) + "\n").encode())


def ledger_row(
    latencies_ms: list[float],
    *,
    size: int,
    device: str,
    backend: str = "onnxruntime-web/wasm",
    fmt: str = "onnx",
    precision: str = "int8",
    status: str = "ok",
    **extra: Any,
) -> dict[str, Any]:
    """One benchmark-ledger row from per-run latencies (ms) of one input size (square, px).

    median and p90 (nearest rank) are what the ledger compares across targets; the raw runs
    are kept so a reader can judge the spread. `extra` (threads, model, browser...) is kept.
    """
    if status == "ok" and not latencies_ms:
        raise ValueError("an 'ok' ledger row needs at least one latency")
    runs = sorted(float(v) for v in latencies_ms)
    p90 = runs[min(len(runs) - 1, max(0, -(-9 * len(runs) // 10) - 1))] if runs else None
    return {
        "device": device,
        "backend": backend,
        "format": fmt,
        "precision": precision,
        "size": int(size),
        "status": status,
        "latency_ms": round(statistics.median(runs), 2) if runs else None,
        "p90_ms": round(p90, 2) if p90 is not None else None,
        "runs": len(runs),
        "runs_ms": [round(v, 2) for v in latencies_ms],
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
