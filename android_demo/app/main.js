// The phone app: camera -> capture -> reflection removal on the device -> before/after -> save.
//
// Preview runs at a phone-friendly size (long side 512, Pillow-exact bilinear resize); "Full
// resolution" runs the whole photo in overlapping tiles with feathered blending. Both run in a
// Web Worker (worker.js) that owns the onnxruntime-web session: this thread only decodes, draws
// and shows progress, so the page stays responsive through a 12-megapixel run. Photos are handed
// to the worker and back as transferred ArrayBuffers (no copies). Nothing leaves the phone. For
// tests and benchmarks the page exposes window.__dereflect (see `api` below).
//
// URL options: ?backend=auto|wasm|webgpu  ?threads=N  ?size=512 (preview long side)  ?camera=user
//              ?tile=512 ?overlap=64 (full-resolution tiles)


const params = new URLSearchParams(location.search);
const PREVIEW_LONG_SIDE = clampInt(params.get('size'), 64, 2048, 512);
// Full resolution: tiles of up to 1024 px (a 12 MP photo: 20 tiles of 856x800, 1.14x the photo's pixels;
// 512 px tiles would be 63 tiles and 1.29x, ~25 % slower here); memory stays at one band + one tile.
const FULL_TILE = clampInt(params.get('tile'), 64, 2048, 1024);
const FULL_OVERLAP = clampInt(params.get('overlap'), 0, 256, 64);
// Burst: 5 frames over about a second while the person moves the phone sideways a little; the
// burst model (the teacher, frames only) recovers the middle frame from how the layers move.
const BURST_FRAMES = 5;
const BURST_SPAN_MS = 1000;
const MAX_SOURCE_PIXELS = 24e6; // bigger gallery photos are scaled down to this on decode

const $ = (id) => document.getElementById(id);
const ui = {
  stage: $('stage'), status: $('status'), metrics: $('metrics'), video: $('camera'), cameraNote: $('camera-note'),
  compare: $('compare'), before: $('before'), after: $('after'), divider: $('divider'), slider: $('slider'),
  progress: $('progress'), capture: $('capture'), file: $('file'), retake: $('retake'), full: $('full'), share: $('share'),
  burst: $('burst'), hint: $('hint'),
  rowCamera: document.querySelector('[data-for="camera"]'), rowResult: document.querySelector('[data-for="result"]'),
};

const state = {
  build: null, stream: null, busy: false,
  engine: null, // what the worker loaded: {backend, threads, model}
  source: null, // full-resolution RGBA of the captured frame / picked photo (lent to the worker while it runs)
  last: null, // the preview run: {source, input, output, outputFloat, latencyMs, totalMs, backend, threads}
  full: null, // the full-resolution run: {output, ms, modelMs, tiles, plan}
  burst: null, // the last burst: {frames, reference, output, outputFloat, latencyMs, totalMs, model}
  shareBlob: null, shareName: '',
};
let runs = 0; // finished preview runs (api.runs)
let burstRuns = 0; // finished bursts (api.burstRuns)

function clampInt(text, lo, hi, fallback) {
  const n = Number.parseInt(text ?? '', 10);
  return Number.isFinite(n) ? Math.min(hi, Math.max(lo, n)) : fallback;
}

function setStatus(text) { ui.status.textContent = text; }
function setMetrics(text) { ui.metrics.textContent = text; }

// ---------------------------------------------------------------- the inference worker
/** Calls into worker.js: one promise per job, progress callbacks, transferred pixel buffers. */
class InferenceWorker {
  constructor() {
    this.worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module', name: 'dereflect-inference' });
    this.jobs = new Map();
    this.nextId = 1;
    this.worker.addEventListener('message', ({ data }) => this.onMessage(data));
    this.worker.addEventListener('error', (event) => this.failAll(new Error(`inference worker: ${event.message || 'failed to start'}`)));
  }

  onMessage({ id, ok, result, error, progress, source }) {
    const job = this.jobs.get(id);
    if (!job) return;
    if (progress) { job.onProgress(progress.done, progress.total); return; }
    this.jobs.delete(id);
    if (ok) job.resolve(result);
    else job.reject(Object.assign(new Error(error), { source }));
  }

  failAll(err) {
    for (const job of this.jobs.values()) job.reject(err);
    this.jobs.clear();
  }

  /** Run `op` in the worker; `transfer`: buffers handed over (unusable here until they come back). */
  call(op, args = {}, { transfer = [], onProgress = () => {} } = {}) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.jobs.set(id, { resolve, reject, onProgress });
      this.worker.postMessage({ id, op, ...args }, transfer);
    });
  }
}

const worker = new InferenceWorker();

/** An RGBA image as a plain message payload (its buffer goes in the transfer list). */
const lend = (img) => ({ width: img.width, height: img.height, data: img.data });

/** Hand `source` to the worker for `op` and take it back with the result, also when the job fails. */
async function withSource(op, source, args, onProgress) {
  try {
    const r = await worker.call(op, { source: lend(source), ...args }, { transfer: [source.data.buffer], onProgress });
    state.source = r.source;
    return r;
  } catch (err) {
    if (err.source) state.source = err.source;
    throw err;
  }
}

// ---------------------------------------------------------------- start-up
let resolveReady, rejectReady;
const ready = new Promise((res, rej) => { resolveReady = res; rejectReady = rej; });
ready.catch(() => {}); // reported on screen and through api.error

async function start() {
  registerServiceWorker();
  startCamera();
  try {
    const res = await fetch('build.json', { cache: 'no-cache' });
    if (!res.ok) throw new Error(`build.json: HTTP ${res.status}`);
    state.build = await res.json();
    const t0 = performance.now();
    state.engine = await worker.call('init', {
      backend: params.get('backend') || 'auto', threads: clampInt(params.get('threads'), 1, 16, 0), build: state.build,
    });
    const e = state.engine;
    const loadMs = performance.now() - t0;
    setStatus(`${describeBackend(e)} · ${e.model.precision} · ready`);
    setMetrics(`model loaded in ${loadMs.toFixed(0)} ms`);
    ui.capture.disabled = !state.stream;
    ui.burst.hidden = !state.build.models.burst;
    ui.burst.disabled = !state.stream;
    cacheRuntimeFiles(e.backend);
    resolveReady(api.info());
  } catch (err) {
    api.error = String(err?.message || err);
    setStatus(`cannot run the model: ${api.error}`);
    rejectReady(err);
  }
}

function describeBackend(e) {
  return e.backend === 'wasm' ? `wasm · ${e.threads} thread${e.threads === 1 ? '' : 's'}` : e.backend;
}

function registerServiceWorker() {
  if (!('serviceWorker' in navigator) || !isSecureContext) return;
  navigator.serviceWorker.register('sw.js').catch((err) => console.warn('dereflect: no offline mode', err));
}

/** Put the onnxruntime files this backend loaded into the offline cache (the worker precaches the rest). */
async function cacheRuntimeFiles(backend) {
  if (!('caches' in globalThis) || !state.build?.ort) return;
  try {
    const cache = await caches.open(`dereflect-${state.build.build_id}`);
    const files = state.build.ort[backend === 'webgpu' ? 'webgpu' : 'wasm'] || [];
    const missing = [];
    for (const f of files) if (!(await cache.match(f))) missing.push(f);
    if (missing.length) await cache.addAll(missing);
  } catch (err) {
    console.warn('dereflect: could not cache the runtime for offline use', err);
  }
}

async function startCamera() {
  if (!navigator.mediaDevices?.getUserMedia) {
    showCameraNote(isSecureContext ? 'This browser has no camera access: pick a photo from the gallery.'
      : 'The camera needs a secure origin (https or localhost): pick a photo from the gallery.');
    return;
  }
  const facingMode = params.get('camera') === 'user' ? 'user' : 'environment';
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({
      audio: false,
      video: { facingMode: { ideal: facingMode }, width: { ideal: 3840 }, height: { ideal: 2160 } },
    });
    ui.video.srcObject = state.stream;
    await ui.video.play().catch(() => {});
    ui.capture.disabled = !state.engine;
    ui.burst.disabled = !state.engine;
  } catch (err) {
    showCameraNote(`No camera (${err.name || err}): pick a photo from the gallery.`);
  }
}

function showCameraNote(text) {
  ui.cameraNote.textContent = text;
  ui.cameraNote.hidden = false;
}

// ---------------------------------------------------------------- sources
async function waitForFrame(video) {
  if (video.readyState >= 2 && video.videoWidth) return;
  await new Promise((res) => video.addEventListener('loadeddata', res, { once: true }));
}

async function grabFrame() {
  const v = ui.video;
  await waitForFrame(v);
  const canvas = document.createElement('canvas');
  canvas.width = v.videoWidth;
  canvas.height = v.videoHeight;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(v, 0, 0);
  return ctx.getImageData(0, 0, canvas.width, canvas.height);
}

async function decodeFile(file) {
  const probe = await createImageBitmap(file, { imageOrientation: 'from-image' });
  let { width, height } = probe;
  let bitmap = probe;
  if (width * height > MAX_SOURCE_PIXELS) {
    const s = Math.sqrt(MAX_SOURCE_PIXELS / (width * height));
    width = Math.floor(width * s);
    height = Math.floor(height * s);
    bitmap = await createImageBitmap(file, { imageOrientation: 'from-image', resizeWidth: width, resizeHeight: height, resizeQuality: 'high' });
    probe.close();
  }
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  return ctx.getImageData(0, 0, width, height);
}

// ---------------------------------------------------------------- inference (in the worker)
/** The preview run on `source`: resize (long side 512), pad to the model's multiple, network, crop. */
async function processPreview(source) {
  await ready;
  const r = await withSource('preview', source, { longSide: PREVIEW_LONG_SIDE });
  state.last = { ...r, backend: state.engine.backend, threads: state.engine.threads };
  state.full = null;
  runs += 1;
  return state.last;
}

/** Full resolution on `source` in overlapping tiles; onTile(done, total) after each tile. */
async function processFull(source, { tile = FULL_TILE, overlap = FULL_OVERLAP, onTile = () => {} } = {}) {
  await ready;
  const t0 = performance.now();
  const r = await withSource('full', source, { tile, overlap }, onTile);
  return { ...r, wallMs: performance.now() - t0 };
}

// ---------------------------------------------------------------- views
function drawImage(canvas, img) {
  canvas.width = img.width;
  canvas.height = img.height;
  canvas.getContext('2d').putImageData(new ImageData(img.data, img.width, img.height), 0, 0);
}

function showResult(before, after) {
  drawImage(ui.before, before);
  drawImage(ui.after, after);
  ui.stage.dataset.mode = 'result';
  ui.compare.hidden = false;
  ui.rowCamera.hidden = true;
  ui.rowResult.hidden = false;
  setSlider(Number(ui.slider.value));
  prepareShare(ui.after);
}

function setSlider(percent) {
  ui.before.style.clipPath = `inset(0 ${100 - percent}% 0 0)`;
  ui.divider.style.left = `${percent}%`;
}

function showCamera() {
  ui.stage.dataset.mode = 'camera';
  ui.compare.hidden = true;
  ui.rowResult.hidden = true;
  ui.rowCamera.hidden = false;
  ui.full.disabled = false;
  setMetrics(state.engine ? `${describeBackend(state.engine)}` : '');
}

function prepareShare(canvas) {
  state.shareBlob = null;
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  state.shareName = `dereflect-${stamp}.jpg`;
  canvas.toBlob((blob) => { state.shareBlob = blob; }, 'image/jpeg', 0.92);
  const file = new File([new Uint8Array(1)], state.shareName, { type: 'image/jpeg' });
  ui.share.textContent = navigator.canShare?.({ files: [file] }) ? 'Share' : 'Save';
}

async function share() {
  const blob = state.shareBlob ?? await new Promise((res) => ui.after.toBlob(res, 'image/jpeg', 0.92));
  const file = new File([blob], state.shareName, { type: 'image/jpeg' });
  if (navigator.canShare?.({ files: [file] })) {
    try {
      await navigator.share({ files: [file], title: 'dereflect' });
      return;
    } catch (err) {
      if (err.name === 'AbortError') return; // the person closed the share sheet
    }
  }
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = state.shareName;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function runOn(getSource) {
  if (state.busy) return;
  state.busy = true;
  ui.capture.disabled = true;
  try {
    setMetrics('working…');
    const source = await getSource();
    state.source = source;
    const r = await processPreview(source);
    showResult(r.input, r.output);
    setMetrics(`${r.input.width}×${r.input.height} · ${state.engine.backend} · ` +
      `${r.latencyMs.toFixed(0)} ms (total ${r.totalMs.toFixed(0)} ms)`);
  } catch (err) {
    api.error = String(err?.message || err);
    setMetrics(`failed: ${api.error}`);
  } finally {
    state.busy = false;
    ui.capture.disabled = !(state.engine && state.stream);
  }
}

/** The progress bar (role=progressbar, aria-valuenow = tiles done) and the line under the photo. */
function showProgress(done, total) {
  ui.progress.max = total;
  ui.progress.value = done;
  ui.progress.setAttribute('aria-valuemax', String(total));
  ui.progress.setAttribute('aria-valuenow', String(done));
  ui.progress.setAttribute('aria-valuetext', `${done} of ${total} tiles`);
  setMetrics(`full resolution: tile ${done} / ${total}`);
}

const sleep = (ms) => new Promise((res) => setTimeout(res, Math.max(0, ms)));

/** Burst shutter: 5 frames over ~1 s (each handed to the worker, which keeps it at preview size),
 * then the burst model on them; the result is shown like a single capture (middle frame before). */
async function runBurst() {
  if (state.busy || !state.stream) return;
  state.busy = true;
  ui.capture.disabled = true;
  ui.burst.disabled = true;
  ui.hint.hidden = false;
  try {
    const loading = worker.call('burstLoad'); // the burst model loads while the frames come in
    const added = [];
    const t0 = performance.now();
    for (let i = 0; i < BURST_FRAMES; i++) {
      await sleep(t0 + (i * BURST_SPAN_MS) / (BURST_FRAMES - 1) - performance.now());
      const frame = await grabFrame();
      added.push(worker.call('burstFrame', { source: lend(frame), index: i, longSide: PREVIEW_LONG_SIDE }, { transfer: [frame.data.buffer] }));
      setMetrics(`burst: frame ${i + 1} / ${BURST_FRAMES}`);
    }
    ui.hint.hidden = true;
    showBusy();
    const { model } = await loading;
    await Promise.all(added);
    setMetrics('burst: removing reflections…');
    const r = await worker.call('burst', { count: BURST_FRAMES });
    state.burst = { ...r, model };
    state.source = null; // full-size burst frames are not kept: no Full resolution for a burst
    state.full = null;
    burstRuns += 1;
    showResult(r.frames[r.reference], r.output);
    ui.full.disabled = true;
    setMetrics(`burst of ${BURST_FRAMES} · ${r.output.width}×${r.output.height} · ${r.latencyMs.toFixed(0)} ms (total ${r.totalMs.toFixed(0)} ms)`);
  } catch (err) {
    api.error = String(err?.message || err);
    setMetrics(`burst failed: ${api.error}`);
  } finally {
    ui.progress.hidden = true;
    ui.hint.hidden = true;
    state.busy = false;
    ui.capture.disabled = !(state.engine && state.stream);
    ui.burst.disabled = ui.capture.disabled;
  }
}

/** The progress bar as "working, no estimate" (indeterminate: no value, no aria-valuenow). */
function showBusy() {
  ui.progress.removeAttribute('value');
  for (const a of ['aria-valuenow', 'aria-valuemax', 'aria-valuetext']) ui.progress.removeAttribute(a);
  ui.progress.hidden = false;
}

async function runFullResolution() {
  if (state.busy || !state.source) return;
  state.busy = true;
  ui.full.disabled = true;
  ui.retake.disabled = true;
  ui.share.disabled = true;
  showProgress(0, 1);
  ui.progress.hidden = false;
  try {
    const r = await processFull(state.source, { onTile: showProgress });
    state.full = r;
    showResult(state.source, r.output);
    setMetrics(`${state.source.width}×${state.source.height} · ${r.tiles} tiles · ${(r.wallMs / 1000).toFixed(1)} s`);
  } catch (err) {
    api.error = String(err?.message || err);
    setMetrics(`failed: ${api.error}`);
    ui.full.disabled = false;
  } finally {
    ui.progress.hidden = true;
    ui.retake.disabled = false;
    ui.share.disabled = false;
    state.busy = false;
  }
}

ui.capture.addEventListener('click', () => runOn(grabFrame));
ui.burst.addEventListener('click', runBurst);
ui.file.addEventListener('change', () => {
  const file = ui.file.files?.[0];
  ui.file.value = '';
  if (file) runOn(() => decodeFile(file));
});
ui.retake.addEventListener('click', showCamera);
ui.full.addEventListener('click', runFullResolution);
ui.share.addEventListener('click', share);
ui.slider.addEventListener('input', () => setSlider(Number(ui.slider.value)));

// ---------------------------------------------------------------- the test / benchmark surface
function toBase64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}
const fullSummary = (r) => ({
  ms: r.wallMs, workerMs: r.ms, modelMs: r.modelMs, tiles: r.tiles, width: r.output.width, height: r.output.height,
  plan: { ys: r.plan.ys, xs: r.plan.xs, tileH: r.plan.tileH, tileW: r.plan.tileW, overlap: r.plan.overlap },
});
const imagePayload = (img) => ({ width: img.width, height: img.height, rgba: toBase64(new Uint8Array(img.data.buffer, img.data.byteOffset, img.data.byteLength)) });

const api = {
  ready,
  error: null,
  info: () => ({
    backend: state.engine?.backend ?? null, threads: state.engine?.threads ?? null, model: state.engine?.model ?? null,
    crossOriginIsolated: globalThis.crossOriginIsolated === true, previewLongSide: PREVIEW_LONG_SIDE,
    camera: state.stream ? state.stream.getVideoTracks()[0]?.getSettings() : null,
  }),
  /** Count of preview runs so far (a test waits for it to grow after tapping capture). */
  get runs() { return runs; },
  /** Count of finished bursts (a test waits for it after tapping Burst). */
  get burstRuns() { return burstRuns; },
  /** The last burst: the model's input frames, the output (RGBA base64), the float output, timings. */
  lastBurst() {
    const b = state.burst;
    if (!b) return null;
    return {
      frames: b.frames.map(imagePayload), reference: b.reference, output: imagePayload(b.output),
      outputFloat: toBase64(new Uint8Array(b.outputFloat.buffer)), latencyMs: b.latencyMs, totalMs: b.totalMs, model: b.model,
      registered: b.registered, shifts: b.shifts,
    };
  },
  /** The last preview run: source frame, model input and output as RGBA base64, the float output, timings. */
  lastResult() {
    const l = state.last;
    if (!l) return null;
    return {
      source: imagePayload(l.source), input: imagePayload(l.input), output: imagePayload(l.output),
      outputFloat: toBase64(new Uint8Array(l.outputFloat.buffer)), latencyMs: l.latencyMs, totalMs: l.totalMs,
      backend: l.backend, threads: l.threads,
    };
  },
  /** Full resolution on the last source with a given tile size; the output as RGBA base64. */
  async runFull(tile = FULL_TILE, overlap = FULL_OVERLAP) {
    if (!state.source) throw new Error('nothing captured yet');
    const r = await processFull(state.source, { tile, overlap });
    return { ...imagePayload(r.output), ...fullSummary(r) };
  },
  /** The last full-resolution run shown on screen (the button's): timings, tiles and plan, no pixels. */
  lastFull: () => (state.full ? fullSummary(state.full) : null),
  /** Rows [y0, y0 + rows) of the last full-resolution output as RGBA base64 (a 12 MP result comes in slices). */
  fullRows(y0, rows) {
    const out = state.full?.output;
    if (!out) return null;
    const y1 = Math.min(out.height, y0 + rows);
    return { width: out.width, height: y1 - y0, rgba: toBase64(out.data.subarray(y0 * out.width * 4, y1 * out.width * 4)) };
  },
  /** Model latency (ms per run) at size x size after `warmup` runs: what the bench ledger records. */
  async bench(size, runsWanted = 10, warmup = 2) {
    await ready;
    return worker.call('bench', { size, runs: runsWanted, warmup });
  },
};
window.__dereflect = api;

start();
