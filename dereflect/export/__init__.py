"""Export: one format table drives conversion, quantization and parity checks.

`dereflect export CKPT --format onnx|ort|openvino|coreml|tensorrt|pte|tflite|all --precision fp32|fp16|int8 --out DIR`
writes, per format, `DIR/<model>-<precision><suffix>` and its manifest `<artifact>.json`:

  onnx      student-nano-int8.onnx           ONNX Runtime (fp16: float32 IO; int8: QDQ u8/s8)
  ort       student-nano-int8.ort            onnxruntime-mobile (+ .required_operators.config)
            student-nano-int8.web.onnx       onnxruntime-web (same graph as the .onnx)
  openvino  student-nano-int8_openvino/      IR xml + bin (int8: NNCF)
  coreml    student-nano-int8.mlpackage/     ML program, float32 IO, flexible H/W (parity on macOS only)
  tensorrt  student-nano-int8.engine         needs tensorrt + a CUDA GPU (skipped elsewhere, with the reason)
  pte       student-nano-int8.pte            ExecuTorch, XNNPACK delegate, fixed 1x3xHxW (native apps)
  tflite    student-nano-int8.tflite         LiteRT, NHWC IO, fixed shape; int8 = dynamic range (native apps)

Modules: formats (the table), onnx, quantize, openvino, coreml, tensorrt, pte, tflite (one per converter),
calib (calibration / validation images), parity (the gate), manifest (read/validate/verify, for
the runtime and the benchmark), pipeline (the run), cli (the command).
Readers of artifacts need only `manifest.load_manifest_for(artifact)` and the IO contract in it.
"""

from dereflect.export.formats import FORMATS, FORMATS_BY_NAME, PRECISIONS, ExportFormat, format_status
from dereflect.export.manifest import find_artifacts, load_manifest_for, manifest_path, read_manifest, validate_manifest

__all__ = [
    "FORMATS",
    "FORMATS_BY_NAME",
    "PRECISIONS",
    "ExportFormat",
    "format_status",
    "find_artifacts",
    "load_manifest_for",
    "manifest_path",
    "read_manifest",
    "validate_manifest",
]
