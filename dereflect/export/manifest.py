"""The manifest: a JSON file beside every exported artifact, the one thing the runtime and the
benchmark read about it (docs/DESIGN.md: a stage reads the previous stage's files, never its internals).

It says what the artifact is (format, precision, IO names/shapes/range, the H/W constraint),
where it came from (checkpoint sha256, model name + config, tool versions), how it was made
(quantization settings) and how close it came to PyTorch at export (the parity gate's verdict
and numbers). `artifact_sha256` lets a reader refuse a file that changed after export; for a
folder (.mlpackage, OpenVINO IR) it is a hash over the sorted relative paths and file hashes,
so the same files always give the same hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dereflect.errors import DereflectError, first_line, os_reason

SCHEMA = "dereflect-export/1"
MANIFEST_SUFFIX = ".json"
PARITY_STATUSES = ("passed", "failed", "not run")
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema": str,
    "format": str,
    "precision": str,
    "runtime": str,
    "artifact": str,
    "artifact_sha256": str,
    "inputs": list,
    "outputs": list,
    "constraints": dict,
    "value_range": list,
    "source": dict,
    "tools": dict,
    "parity": dict,
}
#: A manifest is a few KB; anything far bigger is not one (and is not read into memory).
MAX_MANIFEST_BYTES = 16 << 20
#: Largest `multiple_of` accepted (the student needs 8; a huge one would pad photos to giant canvases).
MAX_SIDE_CONSTRAINT = 1024
TOOL_PACKAGES = (
    "dereflect",
    "torch",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxslim",
    "onnxconverter-common",
    "openvino",
    "nncf",
    "coremltools",
    "tensorrt",
    "polygraphy",
)


def manifest_path(artifact: str | os.PathLike[str]) -> Path:
    """`x.onnx` -> `x.onnx.json`; `x_openvino/` -> `x_openvino.json` (beside, never inside)."""
    artifact = Path(artifact)
    return artifact.parent / (artifact.name + MANIFEST_SUFFIX)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_artifact(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, or of a folder as `relpath\\0filehash\\n` lines in sorted order."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise DereflectError(path, "artifact is missing")
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise DereflectError(path, "artifact folder is empty")
    for file in files:
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def artifact_size(path: str | os.PathLike[str]) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tool_versions(packages: tuple[str, ...] = TOOL_PACKAGES) -> dict[str, str]:
    """Installed versions of the tools that can touch an artifact (absent ones left out)."""
    from importlib import metadata  # here, not at the top: the runtime reads manifests and never needs it (~30 ms)

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def io_spec(
    batch: int | str = "batch",
    multiple_of: int = 8,
    fixed_hw: tuple[int, int] | None = None,
    frames: int | None = None,
    frame_alignment: str | None = None,
    photo_colour: bool = False,
) -> dict[str, Any]:
    """The graph contract of docs/DESIGN.md: `input` (N,3,H,W) float32 [0,1] -> `transmission` same shape.

    photo_colour: a student with a global colour path (models/mobile_student.py PhotoColourGraph) also
    takes `photo_colour` (N,13,1,1) and returns `colour` (N,12): the runtime feeds a photo's
    estimate to all its tiles (runtime/backends/base.py photo_context).

    fixed_hw: a fixed-shape artifact (`--fixed-shape`): the input is exactly (1,3,H,W), recorded
    as `constraints.fixed_hw`; the runtime pads smaller images and tiles larger ones to it.
    """
    shape: list[int | str] = [batch, 3, "height", "width"] if fixed_hw is None else [1, 3, *fixed_hw]
    tensor = {"shape": shape, "dtype": "float32", "layout": "NCHW", "range": [0.0, 1.0], "color": "RGB"}
    dynamic = {str(i): n for i, n in enumerate(shape) if isinstance(n, str)}
    # frames: a burst model (dereflect/models/burst.py) takes T frames per sample, (N,T,3,H,W), the
    # reference in the middle, and returns the reference's transmission (N,3,H,W).
    in_tensor = tensor if frames is None else {**tensor, "shape": [shape[0], frames, *shape[1:]], "layout": "NTCHW"}
    in_dynamic = {str(i): n for i, n in enumerate(in_tensor["shape"]) if isinstance(n, str)}
    constraints: dict[str, Any] = {
        "multiple_of": multiple_of,
        "min_side": multiple_of,
        "dynamic_axes": {"input": in_dynamic, "transmission": dynamic},
        "note": f"H and W must be multiples of {multiple_of} (the network's strides): pad, run, crop",
    }
    if frames is not None:
        constraints.update(frames=frames, reference_frame=frames // 2)
    if frame_alignment is not None:  # "translation": frames moved onto the reference before the graph (burst-mnv2)
        constraints["frame_alignment"] = frame_alignment
    if fixed_hw is not None:
        h, w = fixed_hw
        constraints.update(
            fixed_hw=[h, w],
            note=f"fixed input 1x3x{h}x{w} (batch 1): smaller images are padded up to it, larger ones cut into {h}x{w} tiles",
        )
    inputs, outputs = [{"name": "input", **in_tensor}], [{"name": "transmission", **tensor}]
    if photo_colour:
        n = shape[0]
        inputs.append(
            {
                "name": "photo_colour",
                "shape": [n, 13, 1, 1],
                "dtype": "float32",
                "meaning": "the photo's colour transform (3x3 matrix minus identity, row-major, then 3 offsets) and its weight: "
                "1 uses it, 0 this input's own estimate",
            }
        )
        outputs.append({"name": "colour", "shape": [n, 12], "dtype": "float32", "meaning": "this input's own colour transform"})
        constraints["photo_colour"] = (
            "run once with weight 0 on the photo downscaled to 512 px (long side), then feed its colour to every tile"
        )
    return {"inputs": inputs, "outputs": outputs, "constraints": constraints, "value_range": [0.0, 1.0]}


def build_manifest(
    *,
    fmt: str,
    precision: str,
    runtime: str,
    artifact: Path,
    source: dict[str, Any],
    parity: dict[str, Any],
    io: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Everything a reader needs; `extra` keys (quantization, files, notes...) are kept as given."""
    return {
        "schema": SCHEMA,
        "format": fmt,
        "precision": precision,
        "runtime": runtime,
        "artifact": artifact.name,
        "artifact_kind": "directory" if artifact.is_dir() else "file",
        "artifact_sha256": sha256_artifact(artifact),
        "artifact_bytes": artifact_size(artifact),
        **(io or io_spec()),
        "source": source,
        "tools": tool_versions(),
        "parity": parity,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def write_manifest(artifact: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    validate_manifest(data, manifest_path(artifact))
    path = manifest_path(artifact)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def validate_manifest(data: Any, where: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Check the fields a reader relies on; one DereflectError naming the first problem."""
    if not isinstance(data, dict):
        raise DereflectError(where, "manifest is not a JSON object")
    if data.get("schema") != SCHEMA:
        raise DereflectError(where, f"not a dereflect export manifest (schema {data.get('schema')!r}, expected {SCHEMA!r})")
    for key, kind in REQUIRED.items():
        if key not in data:
            raise DereflectError(where, f"manifest has no '{key}'")
        if not isinstance(data[key], kind):
            raise DereflectError(where, f"manifest field '{key}' has the wrong type ({type(data[key]).__name__})")
    for side in ("inputs", "outputs"):
        for tensor in data[side]:
            if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str) or not isinstance(tensor.get("shape"), list):
                raise DereflectError(where, f"manifest '{side}' entries need a name and a shape")
    if not _plain_name(data["artifact"]):
        raise DereflectError(where, f"manifest 'artifact' must be a file name beside the manifest, got {data['artifact']!r}")
    _check_constraints(data["constraints"], where)
    status = data["parity"].get("status")
    if not isinstance(status, str) or status not in PARITY_STATUSES:
        raise DereflectError(where, f"manifest parity status {status!r} is not one of {', '.join(PARITY_STATUSES)}")
    sha = data["artifact_sha256"]
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise DereflectError(where, "manifest artifact_sha256 is not a sha256 hex digest")
    _check_optional(data, where)
    return data


def _plain_name(name: str) -> bool:
    """A file name with no folder part: what `artifact` (and `openvino.xml`) must be, so a
    manifest can only ever point at a file beside it, never `../..` or an absolute path."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_constraints(constraints: dict[str, Any], where: str | os.PathLike[str] | None) -> None:
    """The H/W constraints the runtime plans tiles with: small positive integers only (a huge
    multiple would make the runtime pad every photo to a giant canvas)."""
    if not _is_int(constraints.get("multiple_of"), 1, MAX_SIDE_CONSTRAINT):
        raise DereflectError(where, f"manifest constraints need an integer 'multiple_of' in 1..{MAX_SIDE_CONSTRAINT}")
    for key in ("min_side", "max_side"):
        if constraints.get(key) is not None and not _is_int(constraints[key], 1, 1 << 20):
            raise DereflectError(where, f"manifest constraint '{key}' must be a positive integer")
    sizes = constraints.get("sizes_hw")
    if sizes is not None and not (
        isinstance(sizes, list) and all(isinstance(hw, list) and len(hw) == 2 and all(_is_int(v, 1, 1 << 20) for v in hw) for hw in sizes)
    ):
        raise DereflectError(where, "manifest constraint 'sizes_hw' must be a list of [height, width] integer pairs")
    fixed = constraints.get("fixed_hw")
    if fixed is not None:
        if not (isinstance(fixed, list) and len(fixed) == 2 and all(_is_int(v, 1, 1 << 20) for v in fixed)):
            raise DereflectError(where, "manifest constraint 'fixed_hw' must be a [height, width] pair of positive integers")
        if fixed[0] % constraints["multiple_of"] or fixed[1] % constraints["multiple_of"]:
            raise DereflectError(
                where, f"manifest constraint 'fixed_hw' {fixed} is not a multiple of 'multiple_of' {constraints['multiple_of']}"
            )


def _check_optional(data: dict[str, Any], where: str | os.PathLike[str] | None) -> None:
    """Optional sections a backend reads, when present, must have the shape it expects."""
    ort_format = data.get("ort_format")
    if ort_format is not None and not (isinstance(ort_format, dict) and isinstance(ort_format.get("session_options", {}), dict)):
        raise DereflectError(where, "manifest 'ort_format' must be an object with a 'session_options' object")
    openvino = data.get("openvino")
    if openvino is not None:
        xml = openvino.get("xml") if isinstance(openvino, dict) else None
        if not isinstance(openvino, dict) or (xml is not None and not (isinstance(xml, str) and _plain_name(xml))):
            raise DereflectError(where, "manifest 'openvino' must be an object whose 'xml' is a file name")
    for key in ("target", "artifact_kind"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise DereflectError(where, f"manifest field '{key}' has the wrong type ({type(data[key]).__name__})")


def _load_json(path: Path) -> Any:
    """A manifest file's JSON, or one DereflectError: too big, not UTF-8, not JSON, nested
    deeper than the parser goes, or numbers Python will not convert."""
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise DereflectError(path, f"manifest is {size:,} bytes; a real one is a few KB (limit {MAX_MANIFEST_BYTES:,})")
        text = path.read_text(encoding="utf-8")
        return json.loads(text)
    except UnicodeDecodeError as exc:
        raise DereflectError(path, f"corrupt manifest: not UTF-8 text ({exc.reason})") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; so is a 5000-digit number
        raise DereflectError(path, f"corrupt manifest: not valid JSON ({first_line(exc)})") from None
    except OSError as exc:
        raise DereflectError(path, f"cannot read the manifest ({os_reason(exc)})") from None


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a manifest file (not the artifact: see `load_manifest_for`)."""
    path = Path(path)
    if not path.is_file():
        raise DereflectError(path, "no such manifest")
    return validate_manifest(_load_json(path), path)


def verify_artifact(artifact: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """Refuse an artifact whose bytes are not the ones the manifest describes."""
    artifact = Path(artifact)
    if manifest.get("artifact") != artifact.name:
        raise DereflectError(artifact, f"manifest describes '{manifest.get('artifact')}', not this artifact")
    actual = sha256_artifact(artifact)
    if actual != manifest["artifact_sha256"]:
        raise DereflectError(
            artifact,
            f"sha256 mismatch: manifest says {manifest['artifact_sha256'][:12]}..., "
            f"file is {actual[:12]}... (changed or corrupted after export)",
        )


def load_manifest_for(artifact: str | os.PathLike[str], verify: bool = True) -> dict[str, Any]:
    """The runtime's entry point: the manifest beside `artifact`, checked against its bytes."""
    artifact = Path(artifact)
    if not artifact.exists():
        raise DereflectError(artifact, "no such artifact")
    data = read_manifest(manifest_path(artifact))
    if verify:
        verify_artifact(artifact, data)
    return data


def find_artifacts(folder: str | os.PathLike[str]) -> list[tuple[Path, dict[str, Any]]]:
    """Every (artifact, manifest) pair an export wrote into `folder` (for `dereflect bench`).
    Manifests whose artifact is gone are skipped; a corrupt manifest raises."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DereflectError(folder, "not a folder")
    found = []
    for path in sorted(folder.glob(f"*{MANIFEST_SUFFIX}")):
        if not path.is_file():
            continue
        data = _load_json(path)
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            continue  # some other JSON (e.g. a summary): not ours to judge
        validate_manifest(data, path)
        artifact = folder / data["artifact"]
        if artifact.exists():
            found.append((artifact, data))
    return found
