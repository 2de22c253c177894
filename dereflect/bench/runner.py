"""The benchmark loop: every artifact of an export folder x every backend that runs it here.

For each target: load it (the manifest's sha256 checked), score it on the pairs at full
resolution beside the PyTorch fp32 reference (parity verdict with the export stage's budgets),
then time it at each size twice: end to end (`Session.run` on a uint8 photo: conversion,
padding, copies, rounding) and model only (the backend's `infer` on a prepared NCHW array), with
the peak RSS of the end-to-end runs. The reference itself gets rows too (status "reference"), so
the report shows what conversion bought. Targets this machine cannot run (Core ML off macOS,
TensorRT without CUDA) get a "could not run" row with the reason; an artifact whose bytes equal
one already measured on the same backend (the ORT web copy of the ONNX) is measured once.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from dereflect.bench import quality as q
from dereflect.bench.machine import PeakMeter, device_name, machine_info, rss_mb
from dereflect.bench.timing import time_call
from dereflect.errors import DereflectError, UsageError, first_line
from dereflect.export import parity as parity_mod
from dereflect.export.formats import PRECISIONS
from dereflect.runtime.tiling import network_input

Log = Callable[[str], None]


def parse_sizes(text: str) -> tuple[int, ...]:
    """ "256,512" -> (256, 512): the square sides to time (duplicates dropped, order kept)."""
    try:
        sizes = tuple(dict.fromkeys(int(s) for s in text.split(",") if s.strip()))
    except ValueError:
        raise UsageError(None, f"--sizes must be comma-separated integers (e.g. 256,512), got '{text}'") from None
    if not sizes:
        raise UsageError(None, "--sizes is empty")
    return sizes


@dataclass
class BenchOptions:
    sizes: tuple[int, ...] = (512, 1024)
    runs: int = 10
    warmup: int = 2
    time_cap_s: float = 10.0  # per target, size and mode (end-to-end / model-only)
    pairs: Path | None = None
    max_pairs: int | None = None
    min_ssim: float | None = None
    backends: tuple[str, ...] | None = None  # None: every backend that runs an artifact
    max_abs_diff: float | None = None  # budget overrides (defaults: dereflect.export.parity)
    max_ssim_drop: float | None = None
    max_lmse_rise: float | None = None
    thumbs: int = 6  # pairs shown as before/after thumbnails in the report
    synth_size: int = 256  # synthesised pairs when no --pairs

    def check(self) -> None:
        if not self.sizes or any(s < 8 for s in self.sizes):
            raise UsageError(None, f"--sizes must be square sides of at least 8 px, got {','.join(map(str, self.sizes))}")
        if self.runs < 1 or self.warmup < 0 or self.time_cap_s <= 0:
            raise UsageError(None, "--runs must be >= 1, --warmup >= 0 and --time-cap > 0")
        if self.min_ssim is not None and not 0.0 <= self.min_ssim <= 1.0:
            raise UsageError(None, f"--min-ssim must be in [0, 1], got {self.min_ssim}")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise UsageError(None, f"--max-pairs must be >= 1, got {self.max_pairs}")
        if self.backends is not None:
            from dereflect.runtime.backends import BACKENDS

            for b in self.backends:
                if b not in BACKENDS:
                    raise UsageError(None, f"unknown backend '{b}' in --backends; choose from {', '.join(BACKENDS)}")


@dataclass
class Target:
    """One artifact on one backend."""

    artifact: Path
    manifest: dict[str, Any]
    backend: str

    @property
    def precision(self) -> str:
        return str(self.manifest.get("precision", "fp32"))

    @property
    def format(self) -> str:
        fmt = str(self.manifest.get("format"))
        return f"{fmt} (web)" if self.manifest.get("target") == "web" else fmt

    @property
    def key(self) -> str:
        return f"{self.artifact.name}@{self.backend}"


@dataclass
class Measured:
    """What one target (or the reference) gave: rows per size, quality, status."""

    key: str
    label: str
    format: str
    precision: str
    backend: str
    status: str
    reason: str = ""
    quality: q.Quality | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class BenchResult:
    rows: list[dict[str, Any]]
    measured: list[Measured]
    identity: q.Quality
    reference: q.Reference | None
    pairs_source: str
    inputs: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (input, truth) thumbnails
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def failures(self) -> list[dict[str, Any]]:
        """Rows that fail the gate (one per target is enough to name it)."""
        seen, out = set(), []
        for r in self.rows:
            if r["status"] in ("failed", "error") and (r.get("artifact"), r["backend"]) not in seen:
                seen.add((r.get("artifact"), r["backend"]))
                out.append(r)
        return out


# ------------------------------------------------------------------ targets and the reference
def find_targets(folder: Path, backends: tuple[str, ...] | None, log: Log) -> tuple[list[Target], list[dict[str, str]]]:
    """Every (artifact, backend) pair, ordered fp32 -> int8 and by the format table; byte-identical
    artifacts on one backend kept once (the rest listed as skipped)."""
    from dereflect.export.formats import FORMATS, runnable_by
    from dereflect.export.manifest import find_artifacts

    found = find_artifacts(folder)
    if not found:
        raise DereflectError(
            folder,
            "no exported artifacts here (no manifests); export first "
            "(dereflect export CKPT --format all --out DIR) or give the checkpoint instead",
        )
    order = [f.name for f in FORMATS]
    targets, skipped, seen = [], [], {}
    for artifact, manifest in found:
        runners = runnable_by(str(manifest.get("format")))
        if not runners:
            skipped.append({"artifact": artifact.name, "reason": f"unknown format {manifest.get('format')!r}"})
            continue
        for backend in runners:
            if backends is not None and backend not in backends:
                continue
            twin = seen.get((manifest["artifact_sha256"], backend))
            if twin is not None:
                skipped.append({"artifact": artifact.name, "backend": backend, "reason": f"same bytes as {twin} (measured once)"})
                continue
            seen[(manifest["artifact_sha256"], backend)] = artifact.name
            targets.append(Target(artifact, manifest, backend))

    def rank(t: Target) -> tuple[int, int, int, str]:
        fmt = str(t.manifest.get("format"))
        return (
            PRECISIONS.index(t.precision) if t.precision in PRECISIONS else 9,
            order.index(fmt) if fmt in order else 99,
            int(t.manifest.get("target") == "web"),
            t.backend,
        )

    targets.sort(key=rank)
    for s in skipped:
        log(f"skip {s['artifact']}" + (f" on {s['backend']}" if "backend" in s else "") + f": {s['reason']}")
    return targets, skipped


def reference_checkpoint(manifest: dict[str, Any], folder: Path) -> Path | None:
    """The checkpoint the manifest's source names, wherever it is found (as given, beside the
    artifacts, under the current folder), and only if its sha256 matches the manifest's."""
    from dereflect.export.manifest import sha256_file

    source = manifest.get("source") or {}
    named = source.get("checkpoint")
    if not named:
        return None
    named = Path(named)
    for candidate in (named, folder / named.name, Path.cwd() / named):
        if candidate.is_file() and (not source.get("sha256") or sha256_file(candidate) == source["sha256"]):
            return candidate.resolve()
    return None


# ------------------------------------------------------------------ measuring
def test_photo(pairs: q.PairSet, size: int) -> np.ndarray:
    """The timing input: a real photo (the first pair's) fitted to size x size."""
    from dereflect.export.calib import fit_square

    return np.ascontiguousarray(fit_square(pairs.first_photo(), size))


def latency(session, photo: np.ndarray, opts: BenchOptions) -> dict[str, Any]:
    """End-to-end and model-only timings at one size, with the end-to-end runs' peak RSS."""
    size = photo.shape[0]
    with PeakMeter() as mem:
        e2e = time_call(lambda: session.run(photo), runs=opts.runs, warmup=opts.warmup, time_cap_s=opts.time_cap_s)
    plan = session.plan(photo.shape[0], photo.shape[1])
    x = network_input(photo[: plan.tile_h, : plan.tile_w], plan.tile_h, plan.tile_w)
    model = time_call(lambda: session.impl.infer(x), runs=opts.runs, warmup=opts.warmup, time_cap_s=opts.time_cap_s)
    per_s = 1000.0 / e2e.median_ms
    return {
        "latency_ms": e2e.median_ms,
        "p90_ms": e2e.p90_ms,
        "runs": len(e2e.runs_ms),
        "runs_ms": [round(v, 3) for v in e2e.runs_ms],
        "warmup": opts.warmup,
        "time_capped": e2e.capped,
        "model_latency_ms": model.median_ms,
        "model_p90_ms": model.p90_ms,
        "model_input": list(x.shape),
        "img_per_s": per_s,
        "mp_per_s": size * size / 1e6 * per_s,
        "tiles": plan.count,
        "peak_rss_mb": mem.peak_mb,
        "peak_rss_delta_mb": mem.delta_mb,
        "peak_rss_kind": mem.kind,
    }


class Bench:
    """One run of the benchmark over a folder (see `run_bench`)."""

    def __init__(self, folder: Path, opts: BenchOptions, log: Log) -> None:
        from dereflect.export.manifest import tool_versions

        self.folder, self.opts, self.log = Path(folder), opts, log
        self.machine = machine_info()
        self.device = device_name(self.machine)
        self.tools = tool_versions()
        self.tools.pop("platform", None)  # the machine says it
        self.measured_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.pairs: q.PairSet | None = None
        self.photos: dict[int, np.ndarray] = {}

    def base_row(self, m: Measured, size: int, **fields: Any) -> dict[str, Any]:
        assert self.pairs is not None
        ident = self.identity.mean
        ref = self.reference.quality.mean if self.reference is not None else {}
        qual = m.quality.mean if m.quality is not None else {}
        row = {
            "device": self.device,
            "backend": m.backend,
            "format": m.format,
            "precision": m.precision,
            "size": size,
            "status": m.status,
            "latency_ms": None,
            "p90_ms": None,
            "psnr": qual.get("psnr"),
            "ssim": qual.get("ssim"),
            "lmse": qual.get("lmse"),
            "ncc": qual.get("ncc"),
            "ref_psnr": ref.get("psnr"),
            "ref_ssim": ref.get("ssim"),
            "ref_lmse": ref.get("lmse"),
            "identity_psnr": ident["psnr"],
            "identity_ssim": ident["ssim"],
            "identity_lmse": ident["lmse"],
            "reference": self.reference.label if self.reference is not None else None,
            "pairs": self.pairs.source,
            "pair_count": len(self.pairs),
            "metric_impl": q.METRIC_IMPL,
        }
        if m.reason:
            row["reason"] = m.reason
        row.update(fields)
        row.update({"machine": self.machine, "tools": self.tools, "measured": self.measured_at, "source": "dereflect bench"})
        return row

    def measure(self, m: Measured, session, extra: dict[str, Any]) -> None:
        for size in self.opts.sizes:
            timing = latency(session, self.photos[size], self.opts)
            m.rows.append(self.base_row(m, size, **extra, **timing))

    def run_reference(self, checkpoint: Path) -> Measured:
        from dereflect.runtime import load

        session = load(checkpoint, backend="torch")
        label = f"PyTorch fp32 ({checkpoint.name})"
        store = q.ArrayStore()
        quality = q.score_model(session.run, self.pairs, keep=store, thumbs=self.opts.thumbs)
        self.reference = q.Reference(label, quality, store)
        m = Measured(f"{checkpoint.name}@torch", label, "pytorch", "fp32", session.impl.label, "reference", quality=quality)
        self.measure(
            m, session, {"artifact": checkpoint.name, "size_bytes": checkpoint.stat().st_size, "backend_detail": session.impl.detail}
        )
        return m

    def reference_for(self, session) -> q.Reference | None:
        """What a target's outputs are compared with: PyTorch on the whole image, or, for an artifact
        that takes one fixed tile size (ExecuTorch, LiteRT, `--fixed-shape`), PyTorch run through the
        very same tiles (padding, overlaps, blend). Why: the gate measures the conversion; what tiling
        does to a photo is the runtime's, the same for every backend (tests/test_runtime.py)."""
        fixed = getattr(session.impl, "fixed", None)
        if fixed is None or self.checkpoint is None or self.reference is None:
            return self.reference
        if fixed not in self.tiled_refs:
            from dereflect.runtime import load

            torch_session = load(self.checkpoint, backend="torch")
            torch_session.impl.fixed = tuple(fixed)
            store = q.ArrayStore()
            quality = q.score_model(torch_session.run, self.pairs, keep=store)
            label = f"{self.reference.label} on the same {fixed[0]}x{fixed[1]} tiles"
            self.tiled_refs[fixed] = q.Reference(label, quality, store)
        return self.tiled_refs[fixed]

    def run_target(self, t: Target, *, as_reference: bool = False) -> Measured:
        from dereflect.runtime import backend_problem, load

        budget = parity_mod.budget_for(
            t.precision if t.precision in PRECISIONS else "fp32", self.opts.max_abs_diff, self.opts.max_ssim_drop, self.opts.max_lmse_rise
        )
        extra = {
            "artifact": t.artifact.name,
            "artifact_sha256": t.manifest.get("artifact_sha256"),
            "size_bytes": t.manifest.get("artifact_bytes"),
            "runtime": t.backend,
            "budget": budget.as_dict(),
            "min_ssim": self.opts.min_ssim,
            "export_parity": (t.manifest.get("parity") or {}).get("status"),
        }
        m = Measured(t.key, f"{t.format} {t.precision} on {t.backend}", t.format, t.precision, t.backend, "passed")
        problem = backend_problem(t.backend)
        if problem is not None:
            m.status, m.reason = "could not run", problem
            m.rows = [self.base_row(m, s, **extra) for s in self.opts.sizes]
            return m
        session = None
        try:
            before = rss_mb()
            started = time.perf_counter()
            session = load(t.artifact, backend=t.backend, verify=True)
            extra.update(load_s=time.perf_counter() - started, load_rss_mb=rss_mb() - before, backend_detail=session.impl.detail)
            m.backend = session.impl.label
            keep = q.ArrayStore() if as_reference else None
            reference = None if as_reference else self.reference_for(session)
            if reference is not None and reference is not self.reference:
                extra["parity_reference"] = reference.label
            m.quality = q.score_model(session.run, self.pairs, reference=reference, keep=keep, thumbs=self.opts.thumbs)
            if as_reference:
                self.reference = q.Reference(f"{t.artifact.name} on {m.backend} (checkpoint not found)", m.quality, keep)
                mean = m.quality.mean  # held to itself: no drop by definition
                m.quality.numbers = {
                    "images": float(len(self.pairs)),
                    "max_abs_diff": 0.0,
                    "mean_abs_diff": 0.0,
                    "psnr_vs_reference": 100.0,
                    "ssim_reference": mean["ssim"],
                    "ssim_artifact": mean["ssim"],
                    "ssim_drop": 0.0,
                    "lmse_reference": mean["lmse"],
                    "lmse_artifact": mean["lmse"],
                    "lmse_rise": 0.0,
                }
            failures = q.verdict(m.quality, budget, self.opts.min_ssim)
            m.status = "failed" if failures else "passed"
            m.reason = "; ".join(failures)
            extra.update(
                {k: m.quality.numbers.get(k) for k in ("max_abs_diff", "mean_abs_diff", "psnr_vs_reference", "ssim_drop", "lmse_rise")}
            )
            extra["failures"] = failures
            self.measure(m, session, extra)
        except DereflectError as exc:
            m.status, m.reason = "error", str(exc)
        except Exception as exc:  # noqa: BLE001 - one broken backend must not hide the other targets
            m.status, m.reason = "error", f"{type(exc).__name__}: {first_line(exc) if str(exc).strip() else ''}"
        finally:
            del session
            gc.collect()
        if m.status == "error":
            m.quality = None
            m.rows = [self.base_row(m, s, **extra) for s in self.opts.sizes]
        return m

    def run(self) -> BenchResult:
        self.opts.check()
        targets, skipped = find_targets(self.folder, self.opts.backends, self.log)
        self.pairs = q.load_pair_set(
            self.opts.pairs, self.opts.max_pairs, synth_size=self.opts.synth_size, on_skip=lambda msg: self.log(f"warning: {msg}")
        )
        self.log(f"pairs: {self.pairs.source}; {len(targets)} target(s); sizes {', '.join(map(str, self.opts.sizes))} px")
        self.photos = {s: test_photo(self.pairs, s) for s in self.opts.sizes}
        self.identity = q.identity_quality(self.pairs)
        self.reference: q.Reference | None = None
        self.checkpoint: Path | None = None
        self.tiled_refs: dict[tuple[int, int], q.Reference] = {}
        measured: list[Measured] = []
        try:
            checkpoint = self.checkpoint = next((c for c in (reference_checkpoint(t.manifest, self.folder) for t in targets) if c), None)
            if checkpoint is not None:
                measured.append(self.run_reference(checkpoint))
                self.log(_line(measured[-1]))
            else:
                fp32 = next((t for t in targets if t.precision == "fp32" and not self._blocked(t)), None)
                if fp32 is not None:
                    self.log(f"no source checkpoint found: {fp32.artifact.name} on {fp32.backend} is the reference")
                    measured.append(self.run_target(fp32, as_reference=True))
                    self.log(_line(measured[-1]))
                    targets = [t for t in targets if t is not fp32]
            for t in targets:
                measured.append(self.run_target(t))
                self.log(_line(measured[-1]))
            inputs = {name: (q.thumbnail(b), q.thumbnail(tr)) for i, (name, b, tr) in enumerate(self.pairs) if i < self.opts.thumbs}
        finally:
            self.pairs.store.close()
            if self.reference is not None:
                self.reference.outputs.close()
            for ref in self.tiled_refs.values():
                ref.outputs.close()
        rows = [r for m in measured for r in m.rows]
        return BenchResult(rows, measured, self.identity, self.reference, self.pairs.source, inputs, skipped)

    @staticmethod
    def _blocked(t: Target) -> bool:
        from dereflect.runtime import backend_problem

        return backend_problem(t.backend) is not None


def _line(m: Measured) -> str:
    """One progress line per target."""
    parts = [f"{m.label}: {m.status}"]
    if m.quality is not None:
        parts.append(f"SSIM {m.quality.mean['ssim']:.4f} LMSE {m.quality.mean['lmse']:.4f}")
        if "ssim_drop" in m.quality.numbers:
            parts.append(f"dSSIM {m.quality.numbers['ssim_drop']:+.5f} max|d| {m.quality.numbers['max_abs_diff']:.2g}")
    parts += [f"{r['size']}px {r['latency_ms']:.1f} ms" for r in m.rows if r.get("latency_ms") is not None]
    if m.reason:
        parts.append(m.reason)
    return " | ".join(parts)


def run_bench(folder: str | Path, opts: BenchOptions | None = None, log: Log = print) -> BenchResult:
    """Benchmark every artifact in `folder` on every backend here; rows for the ledger."""
    return Bench(Path(folder), opts or BenchOptions(), log).run()


def bench_folder(
    folder: Path, opts: BenchOptions, merged: list[Path], json_out: Path | None, report: Path | None, log: Log = print
) -> tuple[BenchResult, dict[str, Any]]:
    """`run_bench` on `folder`, with the `merged` ledgers' rows merged in; writes the ledger
    (`json_out`) and the HTML report (`report`) when given. Returns (result, ledger document)."""
    from dereflect.bench.ledger import ledger_document, load_ledger, merge_rows, write_ledger

    merged_rows = [load_ledger(p) for p in merged]
    result = run_bench(folder, opts, log=log)
    rows = merge_rows(*merged_rows, result.rows)
    document = ledger_document(
        rows,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        artifacts=str(folder),
        pairs=result.pairs_source,
        reference=result.reference.label if result.reference else None,
        identity=result.identity.mean,
        skipped=result.skipped,
        merged=[str(p) for p in merged],
    )
    if json_out is not None:
        write_ledger(json_out, document)
    if report is not None:
        from dereflect.bench.report import render_report
        from dereflect.files import write_bytes_atomic

        write_bytes_atomic(report, render_report(document, result, title=f"dereflect bench: {folder}").encode())
    return result, document


def check_passed(result: BenchResult, folder: Path) -> None:
    """A DereflectError naming every target that failed its gate or errored (the CI gate's exit 1)."""
    bad = result.failures
    if bad:
        lines = [f"{r.get('artifact')} on {r['backend']}: {r['status']} ({r.get('reason', '')})" for r in bad]
        raise DereflectError(folder, f"{len(bad)} target(s) did not pass: " + " | ".join(lines))
