"""The export run: checkpoint -> every requested format -> parity gate -> manifests.

One `Exporter` per command. It loads the student once, builds the validation reference (PyTorch
fp32 outputs and scores) once, the calibration set once (INT8 only), and the intermediate ONNX
graphs once per precision, so `--format all` pays for each only once; then it walks the format
table in order. A format that fails to build is logged and the run goes on (the exit status
says so at the end); a built artifact always gets its manifest, failed parity included.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dereflect.errors import DereflectError, UsageError, os_reason
from dereflect.export import calib as calib_mod
from dereflect.export import parity as parity_mod
from dereflect.export.formats import PRECISIONS, ExportFormat, format_status, resolve_formats
from dereflect.export.manifest import build_manifest, io_spec, sha256_file, write_manifest

#: Formats a burst model (frames in, GridSample inside) is exported to: the table's rows whose converter
#: and runtime take its 5-D input and grid sampling here (Core ML: tools/burst_coreml.py, docs/DESIGN.md).
BURST_FORMATS = ("onnx", "ort", "openvino")
#: Node-name prefix of the photo-colour blend (models/mobile_student.py PhotoBlend): kept in float by every INT8 build.
PHOTO_BLEND = "photo_blend/"


@dataclass
class ExportOptions:
    precision: str = "fp32"
    calib: Path | None = None
    calib_count: int = calib_mod.DEFAULT_CALIB_COUNT
    size: int = calib_mod.DEFAULT_SIZE
    pairs: Path | None = None
    val_count: int = calib_mod.DEFAULT_VAL_COUNT
    int8_exclude: tuple[str, ...] = ()
    int8_recover: bool = True  # an INT8 build over its SSIM budget is rebuilt (layers kept in float, NNCF accuracy control)
    max_abs_diff: float | None = None
    max_ssim_drop: float | None = None
    max_lmse_rise: float | None = None
    opset: int = 20
    coreml_shapes: str = "range"
    fixed_shapes: tuple[tuple[int, int], ...] = ()  # `--fixed-shape HxW`: one (1,3,H,W) artifact per shape per format
    palettize: int | None = None
    trt_shapes: tuple[str, str, str] = ("1x3x64x64", "1x3x512x512", "1x3x2048x2048")
    name: str | None = None
    seed: int = 0


@dataclass
class ExportResult:
    """One row of the console table (and of export-report.json)."""

    format: str
    precision: str
    status: str  # passed | failed | not run | error | skipped
    artifact: Path | None = None
    manifest: Path | None = None
    build_s: float = 0.0
    parity_s: float = 0.0
    size_bytes: int = 0
    parity: dict[str, Any] | None = None
    message: str = ""
    layers: list[dict[str, Any]] = field(default_factory=list)
    shape: str = ""  # "512x512" for a `--fixed-shape` artifact ("enumerated" for such a Core ML package)

    @property
    def ok(self) -> bool:
        return self.status in ("passed", "not run", "skipped")

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "precision": self.precision,
            "shape": self.shape or "dynamic",
            "status": self.status,
            "artifact": self.artifact.name if self.artifact else None,
            "manifest": self.manifest.name if self.manifest else None,
            "build_s": round(self.build_s, 3),
            "parity_s": round(self.parity_s, 3),
            "size_bytes": self.size_bytes,
            "parity": self.parity,
            "message": self.message,
            "layers": self.layers,
        }


def check_options(formats: list[ExportFormat], opts: ExportOptions) -> None:
    """Combinations that make no sense are refused before any work (UsageError, exit 2)."""
    names = {f.name for f in formats}
    if opts.precision != "int8":
        if opts.calib is not None:
            raise UsageError(None, f"--calib is only used by --precision int8 (got {opts.precision})")
        if opts.int8_exclude:
            raise UsageError(None, f"--int8-exclude is only used by --precision int8 (got {opts.precision})")
    if opts.palettize is not None:
        if "coreml" not in names:
            raise UsageError(None, "--palettize applies to Core ML only: add --format coreml (or all)")
        if opts.precision == "fp32":
            raise UsageError(None, "--palettize needs --precision fp16 or int8 (Core ML compresses fp16 weights)")
        if opts.palettize not in (1, 2, 3, 4, 6, 8):
            raise UsageError(None, f"--palettize takes 1, 2, 3, 4, 6 or 8 bits, got {opts.palettize}")
    if opts.coreml_shapes not in ("range", "enumerated"):
        raise UsageError(None, f"--coreml-shapes must be range or enumerated, got '{opts.coreml_shapes}'")
    if opts.size < 16 or opts.size % 8:
        raise UsageError(None, f"--size must be a multiple of 8 and at least 16, got {opts.size}")
    if opts.val_count < 1:
        raise UsageError(None, f"--val-count must be at least 1, got {opts.val_count}")
    if "tensorrt" in names:
        from dereflect.export.tensorrt import parse_shape

        for text in opts.trt_shapes:
            parse_shape(text)


class Exporter:
    """Runs one `dereflect export`; `log` receives one line per step."""

    def __init__(
        self,
        checkpoint: str | Path,
        out: str | Path,
        opts: ExportOptions,
        log: Callable[[str], None] = print,
        model=None,
        base_onnx: str | Path | None = None,
    ) -> None:
        """`model`: the student already loaded from `checkpoint`; `base_onnx`: an fp32 ONNX this
        stage already exported from it (skips the ~5 s export when building several precisions)."""
        from dereflect.models import load_deployable
        from dereflect.models.mobile_student import export_graph

        self.checkpoint = Path(checkpoint)
        self.out = Path(out)
        self.opts = opts
        self.log = log
        self.model = model if model is not None else load_deployable(self.checkpoint)
        #: What every format exports: the student, or, for one with a global colour path, its two-input
        #: form (models/mobile_student.py PhotoColourGraph: a photo's tiles share one colour estimate).
        self.graph = export_graph(self.model)
        #: The exported graph takes the photo-colour input (and is gated on both of its paths).
        self.with_colour = self.graph is not self.model
        #: The model's input contract: None = one image (N,3,H,W); T = a burst model's (N,T,3,H,W) (models/burst.py).
        self.frames: int | None = getattr(self.model, "input_frames", None)
        #: "translation": the runtime registers the frames before the graph (models/burst_student.py).
        self.frame_alignment = "translation" if getattr(self.model, "registered_input", False) else None
        info = getattr(self.model, "checkpoint_info", {}) or {}
        self.model_name = getattr(self.model, "model_name", info.get("model", "student"))
        self.stem = opts.name or self.model_name
        self.source = {
            "checkpoint": str(self.checkpoint),
            "sha256": sha256_file(self.checkpoint) if self.checkpoint.is_file() else None,
            "model": self.model_name,
            "config": info.get("config") or _config(self.model),
            **{k: info[k] for k in ("step", "git_commit", "data") if k in info},
        }
        self.budget = parity_mod.budget_for(opts.precision, opts.max_abs_diff, opts.max_ssim_drop, opts.max_lmse_rise)
        self._work = tempfile.TemporaryDirectory(prefix="dereflect-export-")
        self.work = Path(self._work.name)
        self._onnx: dict[str, Path] = {}
        if base_onnx is not None:
            self._onnx["fp32"] = Path(shutil.copyfile(base_onnx, self.work / f"{self.stem}-fp32.onnx"))
        self._calib: calib_mod.ImageSet | None = None
        self._refs: dict[tuple[int, int] | None, parity_mod.Reference] = {}
        self._int8_nodes: list[str] | None = None
        self._int8_settings = None  # quantize.Int8Settings of the ONNX INT8 graph, once built
        self._mobile: dict[str, dict[str, Any]] = {}
        #: The fixed (H, W) being built (`--fixed-shape`), None for dynamic H/W; `tag` goes into file names.
        self.shape: tuple[int, int] | None = None
        self.tag = ""

    def close(self) -> None:
        """Remove the work folder (intermediate ONNX graphs); `run` does this when it ends."""
        self._work.cleanup()

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- shared inputs, built once
    @property
    def reference(self) -> parity_mod.Reference:
        """PyTorch fp32 on the validation pairs, at `--size` or, for a fixed-shape artifact, at its
        H x W (the gate measures the conversion at the one shape the artifact takes; padding and
        tiling are the runtime's, tested there). A graph with the photo-colour input is measured on
        both of its paths (`with_photo_feeds`)."""
        if self.shape not in self._refs:
            if self.shape is None:
                data = calib_mod.load_pairs(self.opts.pairs, self.opts.val_count, self.opts.size, self.opts.seed + 1, frames=self.frames)
            else:
                h, w = self.shape
                data = _crop_set(calib_mod.load_pairs(self.opts.pairs, self.opts.val_count, max(h, w), self.opts.seed + 1), h, w)
            self._refs[self.shape] = parity_mod.make_reference(self.graph, self.with_photo_feeds(self._aligned(data)))
            self.log(f"validation: {data.source}")
        return self._refs[self.shape]

    def with_photo_feeds(self, data: calib_mod.ImageSet) -> calib_mod.ImageSet:
        """`data` with photo-colour feeds for `self.graph` (half its own estimate, half another image's:
        models/mobile_student.py photo_feeds); unchanged for a graph without that input."""
        if self.graph is self.model or data.colour is not None:
            return data
        import torch

        from dereflect.models.mobile_student import photo_feeds

        return dataclasses.replace(data, colour=photo_feeds(self.model, torch.from_numpy(data.images)).numpy())

    @property
    def calibration(self) -> calib_mod.ImageSet:
        if self._calib is None:
            self._calib = self.with_photo_feeds(
                self._aligned(
                    calib_mod.load_calibration(self.opts.calib, self.opts.calib_count, self.opts.size, self.opts.seed, frames=self.frames)
                )
            )
            self.log(f"calibration: {self._calib.source}")
        return self._calib

    def _aligned(self, data: calib_mod.ImageSet) -> calib_mod.ImageSet:
        """Sequences as the runtime feeds this model: registered to their reference frame when the
        model asks for it (`frame_alignment` "translation"), unchanged otherwise."""
        if self.frame_alignment != "translation" or data.images.ndim != 5:
            return data
        from dereflect.burst.pipeline import register_frames

        ref = self.frames // 2
        images = np.stack([register_frames(seq.transpose(0, 2, 3, 1), ref).transpose(0, 3, 1, 2) for seq in data.images])
        return dataclasses.replace(data, images=np.ascontiguousarray(images, dtype=np.float32), source=f"{data.source}, registered")

    def calib_record(self) -> dict[str, Any]:
        c = self.calibration
        return {"source": c.source, "images": len(c), "size": self.opts.size, "names": c.names[:64]}

    def onnx_path(self, precision: str) -> Path:
        """The ONNX graph of `precision` in the work folder; while a fixed shape is being built,
        that graph with its input fixed to (1,3,H,W) (same weights, calibration and node names)."""
        if self.shape is None:
            return self._dynamic_onnx(precision)
        from dereflect.export.onnx import fix_shape

        h, w = self.shape
        key = f"{precision}-{h}x{w}"
        if key not in self._onnx:
            self._onnx[key] = fix_shape(self._dynamic_onnx(precision), self.work / f"{self.stem}-{key}.onnx", self.shape)
        return self._onnx[key]

    def _dynamic_onnx(self, precision: str) -> Path:
        """The dynamic-shape graph of `precision` (fp32 exported once, the others from it)."""
        if precision in self._onnx:
            return self._onnx[precision]
        from dereflect.export import quantize
        from dereflect.export.onnx import export_onnx

        path = self.work / f"{self.stem}-{precision}.onnx"
        if precision == "fp32":
            export_onnx(self.graph, path, opset=self.opts.opset)
        elif precision == "fp16":
            quantize.to_fp16(self._dynamic_onnx("fp32"), path)
        elif precision == "int8":
            self._int8_settings = self._onnx_int8(self._dynamic_onnx("fp32"), path)
        elif precision == "int8-s8sym":  # TensorRT's explicit-quantization graph (the layers recovery kept float stay float)
            kept = self._int8_settings.excluded if self._int8_settings is not None else self.int8_nodes()
            calib = self.calibration
            quantize.quantize_int8(self._dynamic_onnx("fp32"), path, calib.images, kept, symmetric=True, colours=calib.colour)
        self._onnx[precision] = path
        return path

    # ---------------------------------------------------------------- INT8 recovery
    @property
    def dynamic_reference(self) -> parity_mod.Reference:
        """The reference at --size (dynamic H/W), whatever shape is being built: INT8 graphs are
        built (and recovered) once, dynamic, and fixed afterwards."""
        saved, self.shape = self.shape, None
        try:
            return self.reference
        finally:
            self.shape = saved

    def _over_ssim_budget(self, numbers: dict[str, float]) -> bool:
        """Recovery's trigger: the first INT8 build misses the SSIM budget (what recovery can mend)."""
        limit = self.budget.max_ssim_drop
        return self.opts.int8_recover and limit is not None and numbers.get("ssim_drop", 0.0) > limit

    @property
    def recovery_target(self) -> float:
        from dereflect.export.quantize import RECOVERY_MARGIN

        return float(self.budget.max_ssim_drop or 0.0) * (1.0 - RECOVERY_MARGIN)

    def _recovered_line(self, what: str, first: float, final: float, kept: list[str], method: str = "") -> None:
        limit = float(self.budget.max_ssim_drop or 0.0)
        verdict = "recovered to" if final <= limit else "recovery reached only"
        extra = f", {method} calibration" if method else ""
        self.log(
            f"{what} int8: SSIM drop {first:.4f} > {limit:g} on the first attempt; {verdict} {final:.4f} "
            f"with {', '.join(kept) or 'no layer'} in float{extra} (--no-int8-recover turns this off)"
        )

    def _onnx_int8(self, fp32: Path, path: Path):
        """Static QDQ INT8; if it misses the SSIM budget, `quantize.recover_int8` (unless --no-int8-recover)."""
        from dereflect.export import quantize

        calib = self.calibration
        settings = quantize.quantize_int8(fp32, path, calib.images, self.int8_nodes(), colours=calib.colour)
        if not self.opts.int8_recover or self.budget.max_ssim_drop is None:
            return settings
        ref = self.dynamic_reference
        first = parity_mod.measure(_ort_runner(path), ref)
        if not self._over_ssim_budget(first):
            return settings
        import onnx

        names = [n.name for n in onnx.load(str(fp32), load_external_data=False).graph.node]
        settings = quantize.recover_int8(
            fp32,
            path,
            calib.images,
            lambda p: parity_mod.measure(_ort_runner(p), ref).get("ssim_drop", float("inf")),
            first["ssim_drop"],
            self.recovery_target,
            names,
            ref.data.images[:4],
            exclude=self.int8_nodes(),
            log=self.log,
            colours=calib.colour,
        )
        rec = settings.recovery or {}
        self._recovered_line("onnx (ONNX Runtime)", first["ssim_drop"], float(rec["ssim_drop"]), list(rec["float_layers"]), settings.method)
        return settings

    def int8_settings(self) -> dict[str, Any]:
        """The ONNX INT8 graph's quantization record (manifest), built if need be."""
        from dereflect.export import quantize

        self._dynamic_onnx("int8")
        return (self._int8_settings or quantize.Int8Settings(excluded=tuple(self.int8_nodes()))).as_dict()

    @property
    def art_stem(self) -> str:
        """File stem of the artifact being built: `student-nano`, or `student-nano-512x512` for a fixed shape."""
        return f"{self.stem}-{self.tag}" if self.tag else self.stem

    def mobile_usability(self, precision: str) -> dict[str, Any]:
        """ORT's mobile checker on the fixed-shape ONNX of `precision` (once; the .ort is built from it)."""
        from dereflect.export import mobile_check

        src = self.onnx_path(precision)
        if src.name not in self._mobile:
            self._mobile[src.name] = mobile_check.check(src)
            self.log(f"ORT mobile checker, {self.art_stem} {precision}: {mobile_check.summary(self._mobile[src.name])}")
        return self._mobile[src.name]

    def _shapes_for(self, fmt: ExportFormat) -> list[tuple[tuple[int, int] | None, str]]:
        """(shape, file-name tag) per artifact of `fmt`: one dynamic one, or one per `--fixed-shape`
        (Core ML with `--coreml-shapes enumerated`: one package enumerating them all)."""
        shapes = self.opts.fixed_shapes
        if not shapes:
            return [(None, "")]
        if fmt.name == "coreml" and self.opts.coreml_shapes == "enumerated":
            return [(shapes[0], "enumerated")]
        return [(hw, f"{hw[0]}x{hw[1]}") for hw in shapes]

    def int8_nodes(self) -> list[str]:
        """`--int8-exclude` resolved against the exported graph's node names."""
        if self._int8_nodes is None:
            import onnx

            from dereflect.export.quantize import resolve_exclude

            names = [n.name for n in onnx.load(str(self._dynamic_onnx("fp32"))).graph.node]
            kept = [n for n in names if n.startswith(PHOTO_BLEND)]  # always float (models/mobile_student.py PhotoBlend)
            self._int8_nodes = list(dict.fromkeys([*resolve_exclude(self.opts.int8_exclude, names), *kept]))
        return self._int8_nodes

    # ---------------------------------------------------------------- the run
    def run(self, formats: list[ExportFormat]) -> list[ExportResult]:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.close()
            raise DereflectError(self.out, f"cannot create the output folder ({os_reason(exc)})") from None
        results: list[ExportResult] = []
        if self.frames is not None:  # a burst model: (N,T,3,H,W) graphs on the formats that take them
            if self.opts.fixed_shapes:
                self.close()
                raise UsageError(
                    None, f"--fixed-shape takes single-image models; {self.model_name} takes {self.frames} frames (dynamic H/W)"
                )
            for fmt in [f for f in formats if f.name not in BURST_FORMATS]:
                why = f"{self.model_name} takes {self.frames} frames; its export covers {', '.join(BURST_FORMATS)} (docs/DESIGN.md, burst mode)"
                results.append(ExportResult(fmt.name, self.opts.precision, "skipped", message=why))
                self.log(f"{fmt.name}: skipped ({why})")
            formats = [f for f in formats if f.name in BURST_FORMATS]
        try:
            if any(f.via_onnx for f in formats) and self.opts.precision == "int8":
                _ = self.calibration  # bad calibration images: one error up front, not one per format
                self.int8_nodes()  # a bad --int8-exclude is a usage error: say it before building anything
            from dereflect.export.onnx import check_fixed_shape

            for hw in self.opts.fixed_shapes:  # a shape off the network's multiple: a usage error before any work
                check_fixed_shape(hw, self.size_multiple, self.model_name)
            started = time.perf_counter()
            for shape in self.opts.fixed_shapes or (None,):  # built up front, so per-format times are the formats' own
                self.shape = shape
                _ = self.reference
            self.log(f"reference outputs (PyTorch fp32) in {time.perf_counter() - started:.1f} s")
            for fmt in formats:
                builder = getattr(self, f"_build_{fmt.name}")
                for shape, tag in self._shapes_for(fmt):
                    self.shape, self.tag = shape, tag
                    results.extend(self._build_one(builder, fmt))
        finally:
            self.shape, self.tag = None, ""
            self.close()
        return results

    def _build_one(self, builder: Callable[[ExportFormat], list[ExportResult]], fmt: ExportFormat) -> list[ExportResult]:
        """One artifact (and its companions): built, gated, logged; a failure is its result row."""
        started = time.perf_counter()
        try:
            new = builder(fmt)
        except UsageError:
            raise
        except DereflectError as exc:
            new = [ExportResult(fmt.name, self.opts.precision, "error", message=str(exc))]
        except Exception as exc:  # noqa: BLE001 - one broken converter must not hide the other formats
            new = [ExportResult(fmt.name, self.opts.precision, "error", message=f"{type(exc).__name__}: {exc}")]
        if new and new[0].build_s == 0.0:
            new[0].build_s = time.perf_counter() - started
        if self.tag:
            for r in new:
                r.shape = self.tag
        for r in new:
            self.log(_line(r))
        return new

    def _finish(
        self,
        fmt_name: str,
        runtime: str,
        artifact: Path,
        build_s: float,
        run: Callable[[], parity_mod.Runner] | None,
        not_run_reason: str = "",
        io: dict[str, Any] | None = None,
        **extra: Any,
    ) -> ExportResult:
        """Parity (or the reason it cannot run here), then the manifest; one result row."""
        started = time.perf_counter()
        if run is not None:
            parity = parity_mod.check(run(), self.reference, self.budget, runtime)
        else:
            parity = parity_mod.not_run(not_run_reason, self.budget)
        parity_s = time.perf_counter() - started
        layers: list[dict[str, Any]] = []
        report = extra.pop("_layers", None)
        if parity["status"] == "failed" and self.opts.precision == "int8":
            if report is not None:
                try:
                    layers = report()
                except Exception as exc:  # noqa: BLE001 - a diagnosis must never hide the verdict
                    self.log(f"{fmt_name}: per-layer report failed ({type(exc).__name__}: {exc})")
            parity["worst_layers"] = layers
            parity["fixes"] = self._int8_fixes(layers)
        io = io or io_spec(
            batch=1 if self.shape else "batch",
            multiple_of=self.size_multiple,
            fixed_hw=self.shape,
            frames=self.frames,
            frame_alignment=self.frame_alignment,
            photo_colour=self.with_colour,
        )
        data = build_manifest(
            fmt=fmt_name,
            precision=self.opts.precision,
            runtime=runtime,
            artifact=artifact,
            source=self.source,
            parity=parity,
            io=io,
            **extra,
        )
        manifest = write_manifest(artifact, data)
        return ExportResult(
            fmt_name,
            self.opts.precision,
            parity["status"],
            artifact,
            manifest,
            build_s,
            parity_s,
            data["artifact_bytes"],
            parity,
            layers=layers,
        )

    def _int8_fixes(self, layers: list[dict[str, Any]]) -> list[str]:
        fixes = []
        worst = [str(r["layer"]) for r in layers[:2]]
        if worst:
            already = ",".join(self.opts.int8_exclude)
            fixes.append(f"keep the layers that add the most error in float: --int8-exclude {','.join(filter(None, [already, *worst]))}")
        fixes.append(f"calibrate on more, representative photos: --calib DIR --calib-count {max(2 * self.opts.calib_count, 32)}")
        if not self.opts.int8_recover:
            fixes.append("or let export recover it (keeps the worst layers in float): leave out --no-int8-recover")
        fixes.append("or ship --precision fp16 for this target")
        return fixes

    def _quant_extra(self) -> dict[str, Any]:
        return {"calibration": self.calib_record()} if self.opts.precision == "int8" else {}

    def _place(self, src: Path, dst: Path) -> Path:
        """Copy a built file into --out atomically: a full disk leaves the previous artifact (or
        nothing), never a truncated one that a later run would load."""
        from dereflect.files import atomic_output

        if dst.is_dir():
            shutil.rmtree(dst)
        try:
            with atomic_output(dst) as tmp:
                shutil.copyfile(src, tmp)
        except OSError as exc:
            raise DereflectError(dst, f"could not write the artifact ({os_reason(exc)})") from None
        return dst

    # ---------------------------------------------------------------- one builder per table row
    def _build_onnx(self, fmt: ExportFormat) -> list[ExportResult]:
        from dereflect.export import quantize
        from dereflect.export.onnx import graph_summary

        p = self.opts.precision
        started = time.perf_counter()
        artifact = self._place(self.onnx_path(p), self.out / fmt.artifact_name(self.art_stem, p))
        build_s = time.perf_counter() - started
        extra: dict[str, Any] = {"graph": graph_summary(artifact), **self._quant_extra()}
        if self.shape is not None:
            extra["mobile_usability"] = self.mobile_usability(p)
        if p == "int8":
            extra["quantization"] = self.int8_settings()
            extra["_layers"] = lambda: quantize.layer_report(self.onnx_path("fp32"), artifact, self.reference.data.images[:4])
        if p == "fp16":
            extra["quantization"] = {"tool": "onnxconverter-common float16", "keep_io_types": True}
        return [self._finish("onnx", "onnxruntime", artifact, build_s, lambda: _ort_runner(artifact), **extra)]

    def _build_ort(self, fmt: ExportFormat) -> list[ExportResult]:
        from dereflect.export import quantize

        p = self.opts.precision
        started = time.perf_counter()
        src = self.onnx_path(p)
        artifact = self.out / fmt.artifact_name(self.art_stem, p)
        # Fixed-shape artifacts are for NNAPI / Core ML: "Fixed" optimisations would bake CPU-only
        # contrib ops (com.microsoft:FusedConv, QLinearConv) into the graph, which those EPs refuse.
        style = "Runtime" if p == "fp16" or self.shape is not None else "Fixed"
        _, config = quantize.to_ort_format(src, artifact, target_platform="arm", style=style)
        web = self._place(src, self.out / f"{self.art_stem}-{p}.web.onnx")
        build_s = time.perf_counter() - started
        extra = self._quant_extra()
        if p == "int8":
            extra["quantization"] = self.int8_settings()
        checked: dict[str, Any] = {}
        if self.shape is not None:
            from dereflect.export.mobile_check import ort_graph

            checked["mobile_usability"] = self.mobile_usability(p) | {"ort_graph": ort_graph(artifact)}
        layers = (
            (lambda: quantize.layer_report(self.onnx_path("fp32"), src, self.reference.data.images[:4])) if p == "int8" else (lambda: [])
        )
        mobile = self._finish(
            "ort",
            "onnxruntime-mobile",
            artifact,
            build_s,
            lambda: _ort_runner(artifact),
            ort_format={
                "optimization_style": style,
                "target_platform": "arm",
                "required_operators": config.name if config.exists() else None,
                "session_options": {"session.enable_saved_runtime_optimizations": "1"} if style == "Runtime" else {},
            },
            web_model=web.name,
            _layers=layers,
            **checked,
            **extra,
        )
        web_result = self._finish(
            "onnx",
            "onnxruntime-web",
            web,
            0.0,
            lambda: _ort_runner(web),
            target="web",
            note="same graph as the ONNX artifact; parity measured with onnxruntime (CPU)",
            mobile_model=artifact.name,
            _layers=layers,
            **extra,
        )
        web_result.format = "ort (web)"
        return [mobile, web_result]

    def _build_openvino(self, fmt: ExportFormat) -> list[ExportResult]:
        from dereflect.export.openvino import export_openvino, openvino_layer_report, openvino_runner

        p = self.opts.precision
        started = time.perf_counter()
        folder = self.out / fmt.artifact_name(self.stem, p)
        if folder.exists():
            shutil.rmtree(folder)
        calib = self.calibration if p == "int8" else None
        info = export_openvino(
            self.onnx_path("fp32"),
            folder,
            p,
            calib.images if calib else None,
            self.int8_nodes() if calib else (),
            colours=calib.colour if calib else None,
        )
        if p == "int8" and self.opts.int8_recover and self.budget.max_ssim_drop is not None:
            info = self._openvino_recover(folder, info)
        build_s = time.perf_counter() - started
        layers = lambda: openvino_layer_report(self.onnx_path("fp32"), folder, self.reference.data.images[:4])  # noqa: E731
        return [
            self._finish(
                "openvino",
                "openvino",
                folder,
                build_s,
                lambda: openvino_runner(folder, precision_hint="f32"),
                openvino=info,
                _layers=layers,
                **self._quant_extra(),
            )
        ]

    def _openvino_recover(self, folder: Path, info: dict[str, Any]) -> dict[str, Any]:
        """An NNCF INT8 IR over the SSIM budget: rebuilt with NNCF's accuracy-aware quantization,
        the parity gate's images as its validation set, and the budget less the margin as its max drop."""
        from dereflect.export.openvino import AccuracyControl, export_openvino, openvino_runner

        ref = self.dynamic_reference
        first = parity_mod.measure(openvino_runner(folder, precision_hint="f32"), ref)
        if not self._over_ssim_budget(first) or ref.data.truth is None:
            return info
        accuracy = AccuracyControl(ref.data.images, ref.data.truth, parity_mod.ssim_score, self.recovery_target, colours=ref.data.colour)
        trial = self.work / folder.name  # same IR file names; it replaces the first build only if it does better
        if trial.exists():
            shutil.rmtree(trial)
        calib = self.calibration
        tried = export_openvino(
            self.onnx_path("fp32"), trial, "int8", calib.images, self.int8_nodes(), accuracy=accuracy, colours=calib.colour
        )
        final = parity_mod.measure(openvino_runner(trial, precision_hint="f32"), ref)
        control = tried["quantization"]["accuracy_control"]
        control["first_attempt"] = {"tool": "nncf.quantize", "ssim_drop": round(first["ssim_drop"], 5)}
        control["ssim_drop"] = round(final["ssim_drop"], 5)
        if final["ssim_drop"] >= first["ssim_drop"]:
            self.log(f"openvino (NNCF) int8: accuracy control did not lower the SSIM drop ({final['ssim_drop']:.4f}); first build kept")
            info["quantization"]["accuracy_control"] = control | {"kept": False}
            return info
        shutil.rmtree(folder)
        shutil.move(str(trial), folder)
        self._recovered_line("openvino (NNCF)", first["ssim_drop"], final["ssim_drop"], list(control["reverted_to_float"]))
        return tried

    @property
    def size_multiple(self) -> int:
        """H and W multiple the network needs (8 for student-nano, 16 for the MobileNetV2 students): the manifest tells the runtime."""
        return int(getattr(self.model, "size_multiple", 8))

    def _build_coreml(self, fmt: ExportFormat) -> list[ExportResult]:
        from dereflect.export.coreml import coreml_runner, export_coreml, validate_coreml

        p = self.opts.precision
        started = time.perf_counter()
        path = self.out / fmt.artifact_name(self.art_stem, p)
        if path.exists():
            shutil.rmtree(path)
        mode, sizes = self.opts.coreml_shapes, None
        if self.shape is not None:  # --fixed-shape: one fixed package per shape, or one enumerating them all
            mode, sizes = ("enumerated", self.opts.fixed_shapes) if self.tag == "enumerated" else ("fixed", (self.shape,))
        info = export_coreml(self.graph, path, p, shapes=mode, palettize=self.opts.palettize, **({"enumerated": sizes} if sizes else {}))
        info["validation"] = validate_coreml(path, p, fixed_hw=self.shape if mode == "fixed" else None)
        build_s = time.perf_counter() - started
        status = format_status("coreml")
        io = io_spec(
            batch=1, multiple_of=self.size_multiple, fixed_hw=self.shape if mode == "fixed" else None, photo_colour=self.with_colour
        )
        if info["shapes"]["mode"] == "range":
            io["constraints"]["max_side"] = info["shapes"]["max_side"]
        else:
            io["constraints"]["sizes_hw"] = info["shapes"]["sizes_hw"]
        return [
            self._finish(
                "coreml",
                "coreml",
                path,
                build_s,
                (lambda: coreml_runner(path)) if status.can_run else None,
                not_run_reason="needs macOS" if not status.can_run else "",
                io=io,
                coreml=info,
            )
        ]

    def _build_tensorrt(self, fmt: ExportFormat) -> list[ExportResult]:
        from dereflect.export.tensorrt import build_engine, lint_onnx, tensorrt_runner

        p = self.opts.precision
        started = time.perf_counter()
        plan = self.tensorrt_plan()
        lint_onnx(plan.onnx)
        engine = build_engine(plan, self.out / fmt.artifact_name(self.stem, p))
        build_s = time.perf_counter() - started
        return [
            self._finish(
                "tensorrt",
                "tensorrt",
                engine,
                build_s,
                lambda: tensorrt_runner(engine),
                tensorrt=plan.as_dict() | {"onnx": Path(plan.onnx).name},
                **self._quant_extra(),
            )
        ]

    def tensorrt_plan(self):
        """Everything before TensorRT's builder: the ONNX to parse (s8 symmetric QDQ for int8), the
        profile and the flags. Runs without TensorRT (tests call it directly)."""
        from dereflect.export.tensorrt import make_plan, parse_shape

        p = self.opts.precision
        src = self.onnx_path("int8-s8sym" if p == "int8" else "fp32")
        shapes = [parse_shape(s) for s in self.opts.trt_shapes]
        cache = self.out / "tensorrt.timing.cache"
        return make_plan(src, p, *shapes, timing_cache=cache)

    def _build_pte(self, fmt: ExportFormat) -> list[ExportResult]:
        """ExecuTorch .pte (XNNPACK delegate) at one fixed shape (see export/pte.py for why)."""
        from dereflect.export.pte import export_pte, pte_runner

        p, hw = self.opts.precision, self.mobile_shape
        started = time.perf_counter()
        artifact = self.out / fmt.artifact_name(self.art_stem, p)
        info = export_pte(self.graph, artifact, p, hw, self.calibration_at(hw) if p == "int8" else None)
        build_s = time.perf_counter() - started
        extra = {"executorch": info, "quantization": info.pop("quantization"), **self._quant_extra()}
        run = lambda: pte_runner(artifact)  # noqa: E731
        return [self._finish("pte", "executorch", artifact, build_s, run, io=self.fixed_io(hw), **extra)]

    def _build_tflite(self, fmt: ExportFormat) -> list[ExportResult]:
        """LiteRT .tflite at one fixed shape (litert-torch cannot convert the student with dynamic H/W)."""
        from dereflect.export.tflite import export_tflite, tflite_runner

        p, hw = self.opts.precision, self.mobile_shape
        started = time.perf_counter()
        artifact = self.out / fmt.artifact_name(self.art_stem, p)
        info = export_tflite(self.graph, artifact, p, hw)
        build_s = time.perf_counter() - started
        extra = {"litert": info, "quantization": info.pop("quantization")}  # int8 is dynamic range: no calibration set
        run = lambda: tflite_runner(artifact)  # noqa: E731
        return [self._finish("tflite", "litert", artifact, build_s, run, io=self.fixed_io(hw), **extra)]

    @property
    def mobile_shape(self) -> tuple[int, int]:
        """The one (H, W) of an ExecuTorch/LiteRT artifact: the `--fixed-shape` being built, else
        --size x --size, the shape the parity gate's images have."""
        return self.shape or (self.opts.size, self.opts.size)

    def fixed_io(self, hw: tuple[int, int]) -> dict[str, Any]:
        return io_spec(batch=1, multiple_of=self.size_multiple, fixed_hw=hw, photo_colour=self.with_colour)

    def calibration_at(self, hw: tuple[int, int]) -> calib_mod.ImageSet:
        """The int8 calibration set (the same photos as every int8 export, with their photo-colour
        feeds when the model has that input) at H x W: as loaded at --size, or loaded at max(H, W)
        and centre-cropped for another fixed shape."""
        if tuple(self.calibration.images.shape[2:]) == tuple(hw):
            return self.calibration
        return self.with_photo_feeds(
            _crop_set(calib_mod.load_calibration(self.opts.calib, self.opts.calib_count, max(hw), self.opts.seed), *hw)
        )


def _ort_runner(path: Path) -> parity_mod.Runner:
    from dereflect.export.onnx import OUTPUT_NAME, graph_feeds
    from dereflect.export.quantize import session

    sess = session(path)
    names = [i.name for i in sess.get_inputs()]
    return lambda batch, colour=None: sess.run([OUTPUT_NAME], graph_feeds(names, batch, colour))[0]


def _crop_set(data: calib_mod.ImageSet, h: int, w: int) -> calib_mod.ImageSet:
    """Centre crop of square images (and their ground truth) to h x w (a fixed shape's parity set)."""
    top, left = (data.images.shape[2] - h) // 2, (data.images.shape[3] - w) // 2

    def crop(a):
        return None if a is None else np.ascontiguousarray(a[:, :, top : top + h, left : left + w])

    return calib_mod.ImageSet(crop(data.images), crop(data.truth), data.names, f"{data.source}, centre {h}x{w}")


def _config(model) -> dict[str, Any]:
    import dataclasses

    cfg = getattr(model, "config", None)
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {}


def _line(r: ExportResult) -> str:
    if r.status == "error":
        return f"{r.format}{' ' + r.shape if r.shape else ''} {r.precision}: FAILED to build ({r.message})"
    size = f"{r.size_bytes / 1024:.0f} KiB"
    return (
        f"{r.format} {r.precision}: {r.artifact.name if r.artifact else '-'} ({size}) built in {r.build_s:.1f} s, "
        f"parity in {r.parity_s:.1f} s -> {parity_mod.summary(r.parity) if r.parity else r.status}"
    )


def export_all(
    checkpoint: Path,
    out: Path,
    precisions: tuple[str, ...] = PRECISIONS,
    formats: str = "all",
    log: Callable[[str], None] = print,
    size: int = 256,
    val_count: int = 8,
    calib_count: int = 16,
):
    """Export `checkpoint` to `formats` at each precision into `out`; the ExportResults (a failed
    parity gate or build is in its result, not raised: the benchmark reports it)."""
    from dereflect.models import load_checkpoint

    model = load_checkpoint(checkpoint, expect="student")
    results = []
    with tempfile.TemporaryDirectory(prefix="dereflect-bench-export-") as tmp:
        base: Path | None = None
        for precision in precisions:
            build, skipped = resolve_formats(formats, precision)
            for fmt, reason in skipped:
                log(f"skip {fmt.name} {precision}: {reason}")
            opts = ExportOptions(precision=precision, size=size, val_count=val_count, calib_count=calib_count)
            exporter = Exporter(checkpoint, out, opts, log=log, model=model, base_onnx=base)
            if base is None and any(f.via_onnx for f in build):
                base = Path(shutil.copyfile(exporter.onnx_path("fp32"), Path(tmp) / "base-fp32.onnx"))
            results += exporter.run(build)
    return results
