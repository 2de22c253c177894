"""What `--model` names, and which backend runs it.

A model is a student checkpoint (`.safetensors`), an exported artifact (`.onnx`, `.ort`, an
OpenVINO IR folder or its `.xml`, an `.mlpackage`, a TensorRT `.engine`), a folder an export
wrote (several artifacts, each with its manifest), or a shipped student by name: "default"
(DEFAULT_NAME) or "student-mnv2-hq". Artifacts are read through their manifest (export stage's
contract): it names the format, precision, IO names and H/W multiple, and its sha256 must match the bytes.

A shipped student is its checkpoint (dereflect/weights/<name>.safetensors) plus, when
tools/ship_artifacts.py built them, its exported artifacts (dereflect/weights/<name>-artifacts/:
each with its manifest). By name, the fastest verified artifact that runs here is used
(`shipped_choice`): OpenVINO before ONNX Runtime, INT8 before fp32 before fp16; an artifact whose
parity gate failed, or that was built from other weights than the shipped checkpoint, is never
picked; the checkpoint on PyTorch is the last resort. `--backend torch` runs the checkpoint;
`--precision` and `--backend` narrow the artifacts. Why ship artifacts rather than build them on
first use: the slim install (no torch) cannot export, and a first run that exports for half a
minute is not "fast by default".

Which file is which format, and which backends run it, is read from the format table
(dereflect/export/formats.py): `auto` takes a row's first backend (TensorRT for engines, Core ML
for .mlpackage, OpenVINO for IR, ONNX Runtime for .onnx/.ort, PyTorch for checkpoints). In an
export folder it ranks every artifact this machine can run by backend speed (the backend
registry's order: TensorRT, Core ML, OpenVINO, ONNX Runtime, PyTorch), then by precision, skipping
those whose parity gate failed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from dereflect.errors import DereflectError, UsageError
from dereflect.export.formats import CHECKPOINT, PRECISIONS, format_for_path, runnable_by
from dereflect.runtime.backends import backend_problem, get_backend, speed_rank

#: The shipped student (package data: found the same way in a checkout and in site-packages).
WEIGHTS_DIR = Path(str(resources.files("dereflect") / "weights"))
DEFAULT_NAME = "student-nano"
#: dereflect/weights/<name><ARTIFACTS_SUFFIX>/: the shipped student's exported artifacts (tools/ship_artifacts.py).
ARTIFACTS_SUFFIX = "-artifacts"
#: Precision order for a shipped student's artifacts, fastest first on CPUs (INT8 kernels; fp16
#: only pays on GPUs and NPUs). An export folder ranks the other way (most exact first, PRECISIONS).
FAST_PRECISIONS: tuple[str, ...] = ("int8", "fp32", "fp16")


@dataclass
class ModelRef:
    """A resolved model: what it is, where, and its manifest (None for checkpoints)."""

    kind: str
    path: Path
    manifest: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    #: Tile overlap this model needs (a shipped student's ship.json, measured by tools/ship_artifacts.py); None: the runtime's default.
    tile_overlap: int | None = None

    @property
    def label(self) -> str:
        if self.manifest is None:
            return f"{self.path.name} (checkpoint)"
        parity = (self.manifest.get("parity") or {}).get("status", "?")
        return f"{self.path.name} ({self.manifest.get('format')} {self.manifest.get('precision')}, parity {parity})"

    @property
    def precision(self) -> str:
        return str((self.manifest or {}).get("precision", "fp32"))

    @property
    def model_name(self) -> str:
        """The network's name ("student-nano"): the manifest's source, else the checkpoint's sidecar, else the file stem."""
        if self.manifest is not None:
            return str((self.manifest.get("source") or {}).get("model") or self.path.stem)
        return str(checkpoint_info(self.path).get("model") or self.path.stem)

    def summary(self, backend: str) -> str:
        """'openvino int8 (student-nano, parity passed)': what `dereflect remove` prints first."""
        if self.manifest is None:
            return f"{backend} fp32 ({self.model_name} checkpoint)"
        parity = (self.manifest.get("parity") or {}).get("status", "?")
        return f"{backend} {self.precision} ({self.model_name}, parity {parity})"


def shipped_checkpoint(name: str) -> Path | None:
    """A student shipped in dereflect/weights by its model name ("student-mnv2-hq"), or None."""
    path = WEIGHTS_DIR / f"{name}.safetensors"
    return path if name.startswith("student-") and "/" not in name and path.is_file() else None


def shipped_names() -> list[str]:
    return sorted(p.stem for p in WEIGHTS_DIR.glob("student-*.safetensors"))


def shipped_artifacts(name: str) -> Path | None:
    """dereflect/weights/<name>-artifacts/ (the student's exported artifacts), or None when not shipped."""
    folder = WEIGHTS_DIR / f"{name}{ARTIFACTS_SUFFIX}"
    return folder if "/" not in name and folder.is_dir() else None


def default_checkpoint() -> Path:
    """The shipped student, or one DereflectError saying it is not in this checkout."""
    path = WEIGHTS_DIR / f"{DEFAULT_NAME}.safetensors"
    if not path.is_file():
        raise DereflectError(
            path,
            "the default weights are not shipped in this checkout yet (the default student is "
            "still being trained); pass --model with a student checkpoint or an exported artifact",
        )
    return path


def _manifest(path: Path, verify: bool) -> dict[str, Any] | None:
    """The artifact's manifest, sha256-checked when `verify`; None when absent and not verifying."""
    from dereflect.export.manifest import load_manifest_for, manifest_path

    if not manifest_path(path).is_file():
        if verify:
            raise DereflectError(
                path,
                f"no manifest beside this artifact ({manifest_path(path).name}), so its bytes "
                "cannot be checked; re-export it, or pass verify=False (--no-verify) to run it anyway",
            )
        return None
    return load_manifest_for(path, verify=verify)


def _kind_from_path(path: Path) -> str | None:
    """The format table's row name for this file or folder ("checkpoint", "onnx", ...), or None."""
    fmt = format_for_path(path)
    return fmt.name if fmt is not None else None


def _kind_of(manifest: dict[str, Any], fallback: str) -> str:
    """The manifest's `format` when the table knows it (the manifest, not the file name, says what an artifact is)."""
    name = str(manifest.get("format"))
    return name if runnable_by(name) else fallback


def resolve_artifact(path: Path, verify: bool = True) -> ModelRef:
    """One checkpoint or artifact path -> ModelRef (manifest read and, if asked, verified)."""
    if path.suffix.lower() == ".xml" and path.is_file():
        path = path.parent  # the IR's manifest describes its folder
    kind = _kind_from_path(path)
    if kind is None:
        raise DereflectError(
            path,
            "not a model: expected a .safetensors checkpoint, an exported artifact (.onnx, .ort, "
            "OpenVINO IR folder, .mlpackage, .engine) or a folder an export wrote",
        )
    if kind == "checkpoint":
        return ModelRef(kind, path)
    manifest = _manifest(path, verify)
    if manifest is not None:
        kind = _kind_of(manifest, kind)
    return ModelRef(kind, path, manifest)


def _folder_candidates(folder: Path) -> list[ModelRef]:
    from dereflect.export.manifest import find_artifacts

    refs = []
    for artifact, manifest in find_artifacts(folder):
        refs.append(ModelRef(_kind_of(manifest, "onnx"), artifact, manifest))
    refs += [ModelRef(CHECKPOINT.name, p) for p in sorted(folder.glob(f"*{CHECKPOINT.suffix}"))]
    return refs


def _rank(ref: ModelRef, backend: str, order: tuple[str, ...] = PRECISIONS) -> tuple[int, ...]:
    m = ref.manifest or {}
    prec = m.get("precision", "fp32")
    web = m.get("target") == "web" or ref.path.name.endswith(".web.onnx")
    return (
        speed_rank(backend),
        int(bool((m.get("constraints") or {}).get("fixed_hw"))),  # fixed-shape artifacts are for phone NPUs: dynamic H/W first here
        order.index(prec) if prec in order else len(order),
        int(runnable_by(ref.kind)[:1] != (backend,)),  # the backend's own format first (OpenVINO: the IR before the .onnx)
        int(web),
        int(ref.kind == "ort"),  # .ort is tuned for phones: the plain .onnx first on a desktop
    )


def choose(
    folder: Path,
    backend: str,
    precision: str | None,
    verify: bool,
    *,
    refs: list[ModelRef] | None = None,
    order: tuple[str, ...] = PRECISIONS,
    skip: dict[str, str] | None = None,
) -> tuple[ModelRef, str]:
    """The best (artifact, backend) in an export folder for `backend` ('auto' or a name).

    refs: the candidates (default: every artifact and checkpoint in `folder`); order: precision
    preference; skip: artifact name -> why it is not a candidate (said when nothing runs).
    """
    refs = _folder_candidates(folder) if refs is None else refs
    if not refs:
        skipped = "; ".join(f"{name}: {why}" for name, why in (skip or {}).items())
        raise DereflectError(folder, f"no model in this folder ({skipped or 'no artifact manifests, no .safetensors checkpoint'})")
    if precision is not None and not any(ref.precision == precision for ref in refs):
        have = ", ".join(p for p in PRECISIONS if any(ref.precision == p for ref in refs))
        raise DereflectError(
            folder, f"no {precision} artifact here (there are: {have}); export one with dereflect export --precision {precision}"
        )
    options, why_not = [], [f"{name}: {why}" for name, why in (skip or {}).items()]
    for ref in refs:
        if precision is not None and ref.precision != precision:
            continue
        status = ((ref.manifest or {}).get("parity") or {}).get("status")
        if status == "failed":
            why_not.append(f"{ref.path.name}: failed its parity gate")
            continue
        if ref.path.name in (skip or {}):
            continue
        for name in runnable_by(ref.kind) if backend == "auto" else [backend]:
            if name not in runnable_by(ref.kind):
                continue
            problem = backend_problem(name)
            if problem is None:
                options.append((_rank(ref, name, order), ref, name))
                break
            why_not.append(f"{ref.path.name}: {problem}")
    if not options:
        wanted = "" if backend == "auto" else f" with --backend {backend}"
        detail = "; ".join(dict.fromkeys(why_not)) or "no artifact of a kind this backend runs"
        raise DereflectError(folder, f"nothing here runs on this machine{wanted} ({detail})")
    options.sort(key=lambda o: o[0])
    _, ref, name = options[0]
    if verify and ref.manifest is not None:  # only the one that will run is hashed; a mismatch is refused, not skipped
        from dereflect.export.manifest import verify_artifact

        verify_artifact(ref.path, ref.manifest)
    ref.notes.append(f"picked from {len(refs)} model(s) in {folder}")
    return ref, name


def resolve(model: str | Path, backend: str = "auto", precision: str | None = None, verify: bool = True) -> tuple[ModelRef, str]:
    """`--model` and `--backend` -> (what to load, which backend). Errors say what is wrong and how to fix it."""
    if backend != "auto":
        get_backend(backend)  # an unknown name is a usage error before any file is looked at
    if precision is not None and precision not in PRECISIONS:
        raise UsageError(None, f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    if str(model) == "default":
        return shipped_choice(default_checkpoint().stem, backend, precision, verify)
    if shipped_checkpoint(str(model)) is not None:
        return shipped_choice(str(model), backend, precision, verify)
    path = Path(model).expanduser()
    if not path.exists():
        raise DereflectError(path, f"no such model file or folder (shipped students by name: default, {', '.join(shipped_names())})")
    if path.is_dir() and _kind_from_path(path) is None:
        problem = backend_problem(backend) if backend != "auto" else None
        if problem is not None:
            raise DereflectError(path, problem)
        return choose(path, backend, precision, verify)
    kind = _kind_from_path(path.parent if path.suffix.lower() == ".xml" and path.is_file() else path)
    if kind is None:
        resolve_artifact(path, verify)  # raises: says what a model path should be
    runners = runnable_by(kind)
    name = runners[0] if backend == "auto" else backend
    if name not in runners:
        hint = {
            "checkpoint": f"export it first (dereflect export {path} --format onnx --out DIR) or use --backend torch",
            "onnx": "use --backend onnxruntime or openvino",
        }.get(kind, f"use --backend {runners[0]}")
        raise UsageError(None, f"{path}: the {name} backend cannot run a {kind} model; {hint}")
    problem = backend_problem(name)  # before the manifest: "Core ML needs macOS" says more than a hash
    if problem is not None:
        raise DereflectError(path, problem)
    ref = resolve_artifact(path, verify)
    if name not in runnable_by(ref.kind):
        raise DereflectError(path, f"its manifest says format '{ref.kind}', which the {name} backend does not run")
    return ref, name


def _shipped_candidates(folder: Path, checkpoint: Path) -> tuple[list[ModelRef], dict[str, str]]:
    """The shipped artifacts, and those left out because they were built from other weights than the checkpoint beside them."""
    from dereflect.export.manifest import find_artifacts, sha256_file

    weights = sha256_file(checkpoint) if checkpoint.is_file() else None
    refs, skip = [], {}
    for artifact, manifest in find_artifacts(folder):
        source = (manifest.get("source") or {}).get("sha256")
        if weights is not None and source != weights:
            skip[artifact.name] = f"built from other weights than {checkpoint.name} (stale: re-run tools/ship_artifacts.py)"
            continue
        refs.append(ModelRef(_kind_of(manifest, "onnx"), artifact, manifest))
    return refs, skip


def shipped_choice(name: str, backend: str = "auto", precision: str | None = None, verify: bool = True) -> tuple[ModelRef, str]:
    """A shipped student by name -> (what to load, which backend): its fastest verified artifact that runs here.

    Candidates are dereflect/weights/<name>-artifacts/ (FAST_PRECISIONS order, failed parity and
    stale artifacts skipped); `backend` and `precision` narrow them. `--backend torch`, or no
    shipped artifact at all, runs the checkpoint; so does `auto` when no artifact runs here and
    torch does (said in the model's notes).
    """
    checkpoint = WEIGHTS_DIR / f"{name}.safetensors"
    folder = shipped_artifacts(name)
    if backend == "torch" or folder is None:
        if precision not in (None, "fp32"):
            why = "--backend torch runs" if folder is not None else "no exported artifacts are shipped for it, only"
            raise UsageError(None, f"{name}: {why} the fp32 checkpoint; drop --precision {precision} or use --backend auto")
        return resolve(checkpoint, backend, None, verify)
    problem = backend_problem(backend) if backend != "auto" else None
    if problem is not None:
        raise DereflectError(folder, problem)
    refs, skip = _shipped_candidates(folder, checkpoint)
    try:
        ref, chosen = choose(folder, backend, precision, False, refs=refs, order=FAST_PRECISIONS, skip=skip)
    except DereflectError as exc:
        if backend != "auto" or precision not in (None, "fp32") or backend_problem("torch") is not None or not checkpoint.is_file():
            raise
        ref, chosen = resolve(checkpoint, "torch", None, verify)
        ref.notes.append(f"no shipped artifact runs here ({exc.problem})")
        return ref, chosen
    if verify:  # after the choice: a changed artifact is refused, never swapped for a slower one
        from dereflect.export.manifest import verify_artifact

        verify_artifact(ref.path, ref.manifest)
    ref.notes[-1] = f"the fastest verified of {len(refs)} shipped artifact(s)"
    ref.tile_overlap = shipped_tile_overlap(folder)
    return ref, chosen


def shipped_tile_overlap(folder: Path) -> int | None:
    """The tile overlap ship.json records for these artifacts (a positive int), else None."""
    try:
        value = json.loads((folder / "ship.json").read_text()).get("tile_overlap")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def checkpoint_info(path: Path) -> dict[str, Any]:
    """The checkpoint's JSON sidecar, for describe() (empty when absent or unreadable)."""
    sidecar = path.with_suffix(".json")
    try:
        return json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}
