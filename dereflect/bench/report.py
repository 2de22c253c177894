"""The HTML report: one self-contained file (inline CSS, inline SVG plots, base64 JPEG
thumbnails; no script, no CDN), readable offline and attachable to an issue.

Per device: what to ship at each size, the INT8-vs-fp32 speed-up of the best backend, a
latency-vs-SSIM plot per size (numbered points, keyed in the table under it; dashed lines at the
PyTorch fp32 reference and the identity baseline), then every row. Devices that measured latency
only (the browser) get a latency chart. Last, before/after thumbnails of the first pairs: input,
ground truth, the reference, the shipped pick of each precision, and |int8 - fp32| x20.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

import numpy as np

from dereflect.export.formats import PRECISIONS

PALETTE = ["#1f77b4", "#9467bd", "#2ca02c", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
FIXED = {"torch": "#7f7f7f", "onnxruntime": "#1f77b4", "openvino": "#9467bd", "onnxruntime-web": "#ff7f0e"}
MARKERS = dict(zip(PRECISIONS, ("circle", "square", "triangle")))  # one shape per precision, in table order
GLYPHS = dict(zip(PRECISIONS, ("&#9679;", "&#9632;", "&#9650;")))
#: The columns of a ledger row shown in tables: the HTML report's and the console's (bench/table.py).
COLUMNS = (
    "format",
    "precision",
    "backend",
    "size",
    "status",
    "KiB",
    "median ms",
    "p90 ms",
    "model ms",
    "img/s",
    "MP/s",
    "peak MB",
    "PSNR",
    "SSIM",
    "LMSE",
    "dSSIM",
)
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1280px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px} .muted{color:#666} .small{font-size:12px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:12.5px} th,td{padding:3px 7px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th{background:#f6f6f6;position:sticky;top:0} td.l,th.l{text-align:left} td.reason{text-align:left;white-space:normal;color:#a33;font-size:11.5px}
.passed{color:#17803d;font-weight:600} .failed,.error{color:#c62828;font-weight:600} .reference{color:#555;font-weight:600}
.could{color:#a36b00} .ok{color:#17803d}
.plots{display:flex;flex-wrap:wrap;gap:16px} .card{border:1px solid #e3e3e3;border-radius:6px;padding:8px 10px;background:#fff}
.ship{background:#f3f9f4;border:1px solid #cfe8d5;border-radius:6px;padding:8px 12px;margin:8px 0}
.thumbs td{text-align:center;vertical-align:top;font-size:11.5px} .thumbs th{white-space:normal;width:164px;font-size:11.5px;vertical-align:bottom} .thumbs img{display:block;margin:0 auto 2px;border:1px solid #ddd}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, fmt: str = "{:.4f}") -> str:
    return fmt.format(value) if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def _color(backend: str, seen: dict[str, str]) -> str:
    if backend not in seen:
        base = backend.split("/")[0]
        seen[backend] = FIXED.get(base) if FIXED.get(base) not in seen.values() else PALETTE[len(seen) % len(PALETTE)]
    return seen[backend]


def _marker(kind: str, x: float, y: float, color: str, hollow: bool, title: str) -> str:
    fill, stroke = ("#fff", "#c62828") if hollow else (color, "#222")
    t = f"<title>{_esc(title)}</title>"
    if kind == "square":
        return f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" fill="{fill}" stroke="{stroke}">{t}</rect>'
    if kind == "triangle":
        pts = f"{x:.1f},{y - 6.5:.1f} {x - 6:.1f},{y + 4.5:.1f} {x + 6:.1f},{y + 4.5:.1f}"
        return f'<polygon points="{pts}" fill="{fill}" stroke="{stroke}">{t}</polygon>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5.5" fill="{fill}" stroke="{stroke}">{t}</circle>'


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    step = 10 ** math.floor(math.log10(span / n)) if span > 0 else 1.0
    for mult in (1, 2, 2.5, 5, 10):
        if span / (step * mult) <= n:
            step *= mult
            break
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def scatter_svg(
    points: list[dict[str, Any]],
    lines: list[tuple[str, float, str]],
    colors: dict[str, str],
    title: str,
    width: int = 560,
    height: int = 380,
) -> str:
    """Latency (x, ms) vs SSIM (y): numbered markers; `lines` = (label, ssim, colour) dashed."""
    left, right, top, bottom = 64, 16, 28, 64
    xs = [p["latency_ms"] for p in points]
    ys = [p["ssim"] for p in points] + [v for _, v, _ in lines]
    x_lo, x_hi = 0.0, max(xs) * 1.12
    y_lo, y_hi = min(ys), max(ys)
    pad = max((y_hi - y_lo) * 0.15, 2e-4)
    y_lo, y_hi = y_lo - pad, y_hi + pad
    pw, ph = width - left - right, height - top - bottom

    def sx(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * pw

    def sy(v: float) -> float:
        return top + (1 - (v - y_lo) / (y_hi - y_lo)) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'font-family="system-ui,sans-serif" font-size="11">',
        f'<text x="{left}" y="16" font-size="13" font-weight="600">{_esc(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fcfcfc" stroke="#bbb"/>',
    ]
    for v in _ticks(x_lo, x_hi):
        out.append(
            f'<line x1="{sx(v):.1f}" y1="{top}" x2="{sx(v):.1f}" y2="{top + ph}" stroke="#eee"/>'
            f'<text x="{sx(v):.1f}" y="{top + ph + 14}" text-anchor="middle">{v:g}</text>'
        )
    for v in _ticks(y_lo, y_hi):
        out.append(
            f'<line x1="{left}" y1="{sy(v):.1f}" x2="{left + pw}" y2="{sy(v):.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:.4f}</text>'
        )
    out.append(
        f'<text x="{left + pw / 2}" y="{top + ph + 30}" text-anchor="middle">median latency, end to end (ms): left is faster, '
        f"up is closer to the ground truth</text>"
    )
    out.append(f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle">SSIM (mean over pairs)</text>')
    key_x = left
    for label, value, color in lines:
        out.append(
            f'<line x1="{left}" y1="{sy(value):.1f}" x2="{left + pw}" y2="{sy(value):.1f}" stroke="{color}" '
            f'stroke-dasharray="6 4"><title>{_esc(label)} {value:.4f}</title></line>'
        )
        text = f"{label} {value:.4f}"
        out.append(
            f'<line x1="{key_x}" y1="{height - 12}" x2="{key_x + 22}" y2="{height - 12}" stroke="{color}" '
            f'stroke-dasharray="6 4"/><text x="{key_x + 26}" y="{height - 8}" fill="{color}">{_esc(text)}</text>'
        )
        key_x += 40 + 6 * len(text)
    placed: list[tuple[float, float, float, float]] = [(sx(p["latency_ms"]) - 6, sy(p["ssim"]) - 6, 12, 12) for p in points]
    for p in points:
        x, y = sx(p["latency_ms"]), sy(p["ssim"])
        hollow = p["status"] in ("failed", "error")
        tip = f"#{p['n']} {p['format']} {p['precision']} on {p['backend']}: {p['latency_ms']:.1f} ms, SSIM {p['ssim']:.4f} ({p['status']})"
        out.append(_marker(MARKERS.get(p["precision"], "circle"), x, y, colors[p["backend"]], hollow, tip))
    for p in points:  # numbers where they collide least with markers and other numbers
        x, y = sx(p["latency_ms"]), sy(p["ssim"])
        w = 6.5 * len(str(p["n"]))
        options = [
            (x + 7, y - 16),
            (x + 7, y + 4),
            (x - 7 - w, y - 16),
            (x - 7 - w, y + 4),
            (x - w / 2, y - 22),
            (x - w / 2, y + 9),
            (x + 12, y - 28),
            (x + 12, y + 14),
        ]
        best = min(options, key=lambda o: (sum(_overlap((o[0], o[1], w, 12), b) for b in placed), options.index(o)))
        placed.append((best[0], best[1], w, 12))
        out.append(f'<text x="{best[0]:.1f}" y="{best[1] + 10:.1f}" font-size="10.5" fill="#333">{p["n"]}</text>')
    out.append("</svg>")
    return "".join(out)


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Area shared by two (x, y, w, h) boxes."""
    dx = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return dx * dy if dx > 0 and dy > 0 else 0.0


def bars_svg(rows: list[dict[str, Any]], colors: dict[str, str], title: str, width: int = 560) -> str:
    """Latency only (devices without quality numbers): one bar per row."""
    rows = [r for r in rows if isinstance(r.get("latency_ms"), (int, float))]
    bar, gap, left, top = 18, 6, 230, 28
    height = top + len(rows) * (bar + gap) + 30
    hi = max([r["latency_ms"] for r in rows] + [1.0]) * 1.1
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="system-ui,sans-serif" '
        f'font-size="11"><text x="8" y="16" font-size="13" font-weight="600">{_esc(title)}</text>'
    ]
    for i, r in enumerate(rows):
        y = top + i * (bar + gap)
        w = (width - left - 60) * r["latency_ms"] / hi
        label = f"{r['format']} {r['precision']} {r['size']}px {r.get('threads', '') and str(r.get('threads')) + ' thr'}"
        out.append(
            f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{_esc(label.strip())}</text>'
            f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar}" fill="{colors[r["backend"]]}"/>'
            f'<text x="{left + w + 4:.1f}" y="{y + 13}">{r["latency_ms"]:.1f} ms</text>'
        )
    out.append("</svg>")
    return "".join(out)


def jpeg_data_uri(pixels: np.ndarray, quality: int = 85) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _status_cell(status: str) -> str:
    cls = {"could not run": "could"}.get(status, status)
    return f'<td class="l {cls}">{_esc(status)}</td>'


def _rows_table(rows: list[dict[str, Any]], numbers: dict[int, int]) -> str:
    head = ["#", *COLUMNS, "max|d|", "xfp32"]
    out = [
        "<table><tr>"
        + "".join(f'<th class="{"l" if h in ("format", "precision", "backend", "status") else ""}">{_esc(h)}</th>' for h in head)
        + "</tr>"
    ]
    shown: set[tuple[Any, ...]] = set()
    for r in rows:
        kib = r.get("size_bytes")
        why = r.get("reason") or ""
        out.append(
            "<tr>"
            + f"<td>{numbers.get(id(r), '')}</td>"
            + f'<td class="l">{_esc(r.get("format"))}</td><td class="l">{_esc(r.get("precision"))}</td>'
            + f'<td class="l">{_esc(r.get("backend"))}</td><td>{_esc(r.get("size"))}</td>'
            + _status_cell(str(r.get("status")))
            + f"<td>{_num(kib / 1024 if isinstance(kib, (int, float)) else None, '{:.0f}')}</td>"
            + "".join(
                f"<td>{_num(r.get(k), f)}</td>"
                for k, f in (
                    ("latency_ms", "{:.1f}"),
                    ("p90_ms", "{:.1f}"),
                    ("model_latency_ms", "{:.1f}"),
                    ("img_per_s", "{:.1f}"),
                    ("mp_per_s", "{:.2f}"),
                    ("peak_rss_delta_mb", "{:.0f}"),
                    ("psnr", "{:.2f}"),
                    ("ssim", "{:.4f}"),
                    ("lmse", "{:.4f}"),
                    ("ssim_drop", "{:+.5f}"),
                    ("max_abs_diff", "{:.1e}"),
                    ("speedup_vs_fp32", "{:.2f}x"),
                )
            )
            + "</tr>"
        )
        target = (r.get("artifact"), r.get("backend"), why)
        if why and target not in shown:
            shown.add(target)
            out.append(f'<tr><td></td><td class="reason" colspan="{len(head) - 1}">{_esc(r.get("status"))}: {_esc(why)}</td></tr>')
    out.append("</table>")
    return "".join(out)


def _device_section(device: str, rows: list[dict[str, Any]], summary: dict[str, Any], colors: dict[str, str]) -> str:
    out = [f"<h2>{_esc(device)}</h2>"]
    first = rows[0]
    machine = first.get("machine") or {}
    tools = first.get("tools") or {}
    if machine or tools:
        out.append(
            '<p class="muted small">'
            + _esc(", ".join(f"{k} {v}" for k, v in machine.items()))
            + "<br>tools: "
            + _esc(", ".join(f"{k} {v}" for k, v in tools.items()))
            + "</p>"
        )
    info = summary.get("devices", {}).get(device, {})
    ship = info.get("ship") or {}
    best = info.get("int8_vs_fp32_best")
    if ship or best:
        out.append('<div class="ship"><b>What to ship here.</b><br>')
        for size, s in ship.items():
            drop = (
                (s["ref_ssim"] - s["ssim"])
                if isinstance(s.get("ssim"), (int, float)) and isinstance(s.get("ref_ssim"), (int, float))
                else None
            )
            out.append(
                f"{_esc(size)} px: <b>{_esc(s.get('artifact') or s.get('format'))}</b> on {_esc(s['backend'])} "
                f"({_esc(s['precision'])}): {_num(s.get('latency_ms'), '{:.1f}')} ms, SSIM {_num(s.get('ssim'))}"
                + (f" (dSSIM {drop:+.5f} vs PyTorch fp32)" if drop is not None else "")
                + "<br>"
            )
        if best:
            out.append(
                f"INT8 vs fp32 on the best backend ({_esc(best['backend'])}, {_esc(best['format'])}, {best['size']} px): "
                f"<b>{best['speedup']:.2f}x</b> ({best['fp32_ms']:.1f} ms -> {best['ms']:.1f} ms)"
            )
        out.append("</div>")
    numbers: dict[int, int] = {}
    plots = []
    for size in sorted({r["size"] for r in rows}):
        at = [r for r in rows if r["size"] == size]
        pts = [r for r in at if isinstance(r.get("latency_ms"), (int, float)) and isinstance(r.get("ssim"), (int, float))]
        for r in pts:
            numbers[id(r)] = len(numbers) + 1
        if pts:
            lines = []
            ref = next((r.get("ref_ssim") for r in at if isinstance(r.get("ref_ssim"), (int, float))), None)
            ident = next((r.get("identity_ssim") for r in at if isinstance(r.get("identity_ssim"), (int, float))), None)
            if ref is not None:
                lines.append(("PyTorch fp32", ref, "#444"))
            if ident is not None:
                lines.append(("identity (input as output)", ident, "#b26b00"))
            points = [{**r, "n": numbers[id(r)]} for r in pts]
            plots.append('<div class="card">' + scatter_svg(points, lines, colors, f"{size} px: latency vs SSIM") + "</div>")
        elif any(isinstance(r.get("latency_ms"), (int, float)) for r in at):
            plots.append('<div class="card">' + bars_svg(at, colors, f"{size} px: latency (no quality measured here)") + "</div>")
    if plots:
        legend = " ".join(
            f'<span style="color:{c}">&#9632;</span> {_esc(b)}' for b, c in colors.items() if any(r["backend"] == b for r in rows)
        )
        shapes = " ".join(f"{GLYPHS[p]} {p}" for p in PRECISIONS)
        out.append(f'<p class="small">{legend} &nbsp; {shapes} &nbsp; hollow red: failed</p>')
        out.append('<div class="plots">' + "".join(plots) + "</div>")
    out.append(_rows_table(rows, numbers))
    return "".join(out)


def _thumbs_section(result: Any, rows: list[dict[str, Any]]) -> str:
    """Input | truth | reference | the pick of each precision | |int8 - fp32| x20 per pair."""
    if result is None or not result.inputs:
        return ""
    by_key = {m.key: m for m in result.measured if m.quality is not None and m.quality.thumbs}
    ref = next((m for m in result.measured if m.status == "reference" and m.key in by_key), None)
    picks: list[Any] = []
    for precision in PRECISIONS:
        cands = [
            r
            for r in rows
            if r.get("precision") == precision
            and r.get("status") == "passed"
            and isinstance(r.get("latency_ms"), (int, float))
            and r.get("source") == "dereflect bench"
        ]
        if not cands:
            continue
        size = max(r["size"] for r in cands)
        best = min((r for r in cands if r["size"] == size), key=lambda r: r["latency_ms"])
        m = next((m for m in by_key.values() if m.label.startswith(f"{best['format']} {precision}") and m.backend == best["backend"]), None)
        if m is not None:
            picks.append(m)
    int8 = next((m for m in picks if m.precision == "int8"), None)
    base = ref or next((m for m in picks if m.precision == "fp32"), None)
    head = ["pair", "input (photo through glass)", "ground truth"] + ([f"{base.label}"] if base is not None else [])
    head += [f"{m.label}" for m in picks if m is not base]
    if int8 is not None and base is not None:
        head.append("|int8 - fp32| x20")
    out = [
        '<h2>Before / after</h2><p class="muted small">First pairs of the scoring set, full-resolution outputs shown '
        "as thumbnails; SSIM against the ground truth under each (per image). Columns after the reference: the "
        'fastest passing target of each precision.</p><table class="thumbs"><tr>' + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>"
    ]
    for name, (photo, truth) in result.inputs.items():
        ident = next((r for r in result.identity.per_image if r["name"] == name), {})
        cells = [
            f'<td class="l">{_esc(name)}</td>',
            f'<td><img src="{jpeg_data_uri(photo)}" alt="input {_esc(name)}" width="160"><br>SSIM {_num(ident.get("ssim"))}</td>',
            f'<td><img src="{jpeg_data_uri(truth)}" alt="truth {_esc(name)}" width="160"></td>',
        ]
        for m in ([base] if base is not None else []) + [m for m in picks if m is not base]:
            score = next((r for r in m.quality.per_image if r["name"] == name), {})
            cells.append(
                f'<td><img src="{jpeg_data_uri(m.quality.thumbs[name])}" alt="{_esc(m.label)}" width="160"><br>'
                f"SSIM {_num(score.get('ssim'))}</td>"
            )
        if int8 is not None and base is not None:
            diff = np.abs(int8.quality.thumbs[name].astype(np.int16) - base.quality.thumbs[name].astype(np.int16))
            cells.append(f'<td><img src="{jpeg_data_uri(np.clip(diff * 20, 0, 255))}" alt="difference" width="160"></td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def render_report(document: dict[str, Any], result: Any = None, title: str = "dereflect bench") -> str:
    """The whole page as a string: `document` is the ledger (rows + summary), `result` the
    BenchResult of this run (for thumbnails; None when only merging ledgers)."""
    rows = document.get("rows", [])
    summary = document.get("summary", {})
    colors: dict[str, str] = {}
    for r in rows:
        _color(r["backend"], colors)
    parts = [
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head><body>',
        f"<h1>{_esc(title)}</h1>",
    ]
    meta = []
    if document.get("artifacts"):
        meta.append(f"artifacts: {_esc(document['artifacts'])}")
    if document.get("pairs"):
        meta.append(f"quality on: {_esc(document['pairs'])}")
    if document.get("reference"):
        meta.append(f"reference: {_esc(document['reference'])}")
    if document.get("created"):
        meta.append(f"created {_esc(document['created'])}")
    gate = summary.get("gate", {})
    meta.append(f"gate: {gate.get('passed', 0)} row(s) passed, {gate.get('failed', 0)} failed")
    parts.append('<p class="muted">' + "<br>".join(meta) + "</p>")
    parts.append(
        '<p class="small">Latency: median (and p90) of timed runs after warm-up, end to end (<code>Session.run</code> '
        "on a uint8 photo: conversion, padding, copies) and model only (the backend's <code>infer</code> on a "
        "prepared NCHW array). Quality: mean over the pairs at full resolution; dSSIM = PyTorch fp32 SSIM minus "
        "the target's; verdicts use the export stage's budgets (fp32 max|diff| &le; 1e-4, fp16 dSSIM &le; 0.002, "
        "int8 dSSIM &le; 0.01 unless overridden). xfp32 = fp32 latency / this latency on the same backend.</p>"
    )
    for device in dict.fromkeys(r["device"] for r in rows):
        parts.append(_device_section(device, [r for r in rows if r["device"] == device], summary, colors))
    parts.append(_thumbs_section(result, rows))
    parts.append("</body></html>\n")
    return "".join(parts)
