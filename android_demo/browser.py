"""Drive the demo in headless Chromium as a phone would: shared by the browser tests and bench.py.

Chromium comes from the system (Debian's `chromium`; Playwright cannot download browsers here),
driven by the Playwright Python package. The flags are the ones found to work as root in a
container (see TOOLCHAIN.md): no sandbox, no GPU, no background networking, a fresh profile,
and a fake camera that plays a .y4m file, so a test knows exactly which frame the app captured.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from dereflect.demo.server import APP_ROOT, DemoServer

#: A mid-size Android phone (Pixel 7: 412 x 915 CSS px at 2.625 device pixels per px).
PHONE = {"viewport": {"width": 412, "height": 915}, "device_scale_factor": 2.625, "is_mobile": True, "has_touch": True}
PHONE_UA = "Mozilla/5.0 (Linux; Android 14; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Mobile Safari/537.36"
BASE_FLAGS = [
    "--no-sandbox",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]
NO_GPU_FLAGS = ["--disable-gpu"]
#: WebGPU without a GPU: Chromium's SwiftShader (Vulkan on the CPU). Slow (seconds per shader
#: compile) and without shader-f16, but it runs the app's WebGPU path for real.
SWIFTSHADER_WEBGPU_FLAGS = [
    "--enable-unsafe-webgpu",
    "--use-webgpu-adapter=swiftshader",
    "--enable-features=Vulkan",
    "--use-angle=swiftshader",
]


def find_chromium() -> str | None:
    """$DEREFLECT_CHROMIUM, else Debian's chromium (also under its other names); None if absent."""
    env = os.environ.get("DEREFLECT_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for candidate in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        path = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        if path and Path(path).is_file():
            return path
    return None


def chromium_version(exe: str | None = None) -> str:
    """'Chromium 156.0.8078.108' (what `chromium --version` says), or 'unknown'."""
    import subprocess

    exe = exe or find_chromium()
    if exe is None:
        return "unknown"
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    words = out.split()
    return " ".join(words[:2]) if len(words) >= 2 else "unknown"


def write_y4m(path: str | os.PathLike[str], rgb: np.ndarray, frames: int = 2) -> Path:
    """A YUV4MPEG2 file (4:2:0, BT.601 limited range, as Chromium's capture path assumes) showing
    the HxWx3 uint8 `rgb` for `frames` frames; Chromium's fake camera loops it. H and W must be even."""
    return write_y4m_sequence(path, [rgb], hold=frames)


def write_y4m_sequence(path: str | os.PathLike[str], sequence: list[np.ndarray], hold: int = 1, fps: int = 30) -> Path:
    """A YUV4MPEG2 file playing the HxWx3 uint8 frames of `sequence` in order, each for `hold`
    video frames at `fps` (a moving scene for the burst shutter); the fake camera loops it."""
    if not sequence:
        raise ValueError("no frames")
    planes_per_frame = [_yuv420(rgb) for rgb in sequence]
    h, w = np.asarray(sequence[0]).shape[:2]
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for planes in planes_per_frame:
            for _ in range(hold):
                fh.write(b"FRAME\n")
                for plane in planes:
                    fh.write(plane.tobytes())
    return path


def _yuv420(rgb: np.ndarray) -> list[np.ndarray]:
    """Y, U, V planes (BT.601 limited range, centred 2x2 chroma) of an even-sized HxWx3 uint8 frame."""
    rgb = np.asarray(rgb)
    h, w = rgb.shape[:2]
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or h % 2 or w % 2:
        raise ValueError(f"need an even-sized HxWx3 uint8 frame, got {rgb.shape} {rgb.dtype}")
    f = rgb.astype(np.float64)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    sub = lambda c: c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))  # noqa: E731 - centred 2x2 chroma
    return [np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in (y, sub(u), sub(v))]


@contextmanager
def serving(root: Path = APP_ROOT) -> Iterator[DemoServer]:
    """The demo server on a free loopback port, in a thread, for the duration of the block."""
    server = DemoServer(root, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def chromium(
    video: Path | None = None, extra_flags: list[str] | None = None, webgpu: bool = False, playwright: Any = None
) -> Iterator[Any]:
    """A headless Chromium (a Playwright persistent context on a fresh profile, phone-sized) with
    a fake camera playing `video` when given; `webgpu`: SwiftShader WebGPU instead of no GPU.
    `playwright`: a running sync Playwright to use (one per thread may run); else one is started."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium, or set DEREFLECT_CHROMIUM)")
    flags = BASE_FLAGS + (SWIFTSHADER_WEBGPU_FLAGS if webgpu else NO_GPU_FLAGS) + (extra_flags or [])
    if video is not None:
        flags.append(f"--use-file-for-fake-video-capture={video}")
    with ExitStack() as stack:
        if playwright is None:
            from playwright.sync_api import sync_playwright

            playwright = stack.enter_context(sync_playwright())
        profile = stack.enter_context(tempfile.TemporaryDirectory(prefix="dereflect-chromium-"))
        # a persistent context is how Playwright takes a fresh --user-data-dir
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=exe, headless=True, args=flags, user_agent=PHONE_UA, permissions=["camera"], **PHONE
        )
        try:
            yield context
        finally:
            context.close()


def open_app(context: Any, url: str, timeout_ms: int = 60_000) -> Any:
    """A page on the app, after the model is loaded (window.__dereflect.ready resolved)."""
    page = context.pages[0] if context.pages else context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_function("() => window.__dereflect !== undefined", timeout=timeout_ms)
    try:
        page.evaluate("() => window.__dereflect.ready")
    except Exception as exc:  # noqa: BLE001 - say what the page said
        raise RuntimeError(f"the app did not start: {page.evaluate('window.__dereflect.error')} {errors}") from exc
    page.page_errors = errors  # type: ignore[attr-defined]
    return page


def page_ledger_row(
    times: list[float], info: dict[str, Any], *, size: int, device: str, browser: str, source: str, **extra: Any
) -> dict[str, Any]:
    """A bench-ledger row for latencies the app measured in the page (`window.__dereflect.bench`),
    described by the app's own `info()` (backend, model, threads, isolation)."""
    from dereflect.bench.ledger import ledger_row

    return ledger_row(
        times,
        size=size,
        device=device,
        backend=f"onnxruntime-web/{info['backend']}",
        precision=info["model"]["precision"],
        threads=info["threads"],
        cross_origin_isolated=info["crossOriginIsolated"],
        model=info["model"]["file"],
        browser=browser,
        source=source,
        **extra,
    )
