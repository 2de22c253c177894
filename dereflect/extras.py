"""Which pip extra brings what: the one line a user gets when a path needs something this install lacks.

`pip install dereflect` is the slim runtime (numpy, pillow, onnxruntime, typer, rich): it runs
`dereflect remove` and `runtime.load("default")` on the shipped artifacts. Everything else is an
extra (pyproject.toml): torch (checkpoints, --backend torch), export (dereflect export / bench),
train (dereflect data / train), openvino, coreml, tensorrt, mobile (ExecuTorch, LiteRT), demo (the
demo server), video, all.
"""

from __future__ import annotations

#: Top-level Python module -> the extra that installs it (only optional dependencies are listed).
MODULE_EXTRAS: dict[str, str] = {
    "torch": "torch",
    "torchvision": "torch",
    "safetensors": "torch",
    "onnx": "export",
    "onnxscript": "export",
    "onnx_ir": "export",
    "onnxslim": "export",
    "onnxconverter_common": "export",
    "skimage": "export",
    "scipy": "train",
    "yaml": "train",
    "tensorboard": "train",
    "h5py": "train",
    "openvino": "openvino",
    "nncf": "openvino",
    "coremltools": "coreml",
    "tensorrt": "tensorrt",
    "polygraphy": "tensorrt",
    "executorch": "mobile",
    "litert_torch": "mobile",
    "ai_edge_litert": "mobile",
    "ai_edge_quantizer": "mobile",
    "starlette": "demo",
    "uvicorn": "demo",
    "qrcode": "demo",
    "cryptography": "demo",
    "psutil": "demo",
    "av": "video",
}
#: `dereflect <command>` -> the extra that brings everything the command needs.
COMMAND_EXTRAS: dict[str, str] = {"train": "train", "data": "train", "export": "export", "bench": "export", "eval": "export"}
DEMO_EXTRAS: dict[str, str] = {"serve": "demo", "run": "all"}


def extra_for(module: str, argv: list[str]) -> str | None:
    """The extra to install for a missing `module` while running `argv`; None when it is not an optional dependency."""
    top = module.split(".")[0]
    if top not in MODULE_EXTRAS:
        return None
    command = next((a for a in argv if not a.startswith("-")), "")
    if command == "demo":
        sub = next((a for a in argv[argv.index("demo") + 1 :] if not a.startswith("-")), "")
        return DEMO_EXTRAS.get(sub, MODULE_EXTRAS[top])
    return COMMAND_EXTRAS.get(command, MODULE_EXTRAS[top])


def missing_message(module: str, extra: str) -> str:
    """One line: what is missing and the pip command that brings it."""
    return f"this needs the Python module '{module.split('.')[0]}', which this install lacks: pip install 'dereflect[{extra}]'"
