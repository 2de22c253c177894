// The inference worker: owns the onnxruntime-web session and does all the pixel work around it
// (preview resize, tiles, blending), so the page's main thread only decodes, draws and stays
// responsive, even through a 12-megapixel full-resolution run.
//
// Protocol (main.js `InferenceWorker`): the page posts {id, op, ...args}; the worker answers
// {id, ok: true, result} or {id, ok: false, error}, and for long jobs {id, progress: {done, total}}
// first. Pixels travel as {width, height, data: Uint8ClampedArray} with their ArrayBuffers in the
// transfer list, both ways: the page hands the photo over and gets it back, never copied.
//
// ops:
//   init    {backend, threads, build}           -> {backend, threads, model}
//   preview {source, longSide}                  -> {source, input, output, outputFloat, latencyMs, totalMs}
//   full    {source, tile, overlap}             -> {source, output, ms, modelMs, tiles, plan, photoColour}   (+ progress)
//   bench   {size, runs, warmup}                -> [ms per run]
//   burstLoad   {}                              -> {model}            (the burst model's session, once)
//   burstFrame  {source, index, longSide}       -> {width, height}    (resized and kept; the frame is dropped)
//   burst       {count}                         -> {frames, reference, output, outputFloat, latencyMs, totalMs}

import { createEngine } from './engine.js';
import {
  cropToTensor, fitLongSide, planTiles, registerShift, resizeBilinear, roundUp, runTiled, tensorToImage, translateImage,
} from './imageops.js';

let engine = null;
let multiple = 8; // the network's H/W multiple (build.json's multiple_of for the loaded model)
const PHOTO_SIDE = 512; // long side of the copy a tiled photo's colour is estimated on (runtime's PHOTO_SIDE)
let build = null; // build.json
let burstEngine = null; // the burst model's session (loaded on the first burst)
let burstFrames = []; // a burst being collected: frames resized to the preview size

const buffersOf = (...images) => images.map((img) => img.data.buffer);

const ops = {
  async init({ backend, threads, build: b }) {
    build = b;
    engine = await createEngine({ backend, threads, build });
    multiple = engine.model.multiple_of || 8;
    return [{ backend: engine.backend, threads: engine.threads, model: engine.model }, []];
  },

  /** Resize (long side `longSide`, Pillow-exact bilinear), pad to the multiple, network, crop. */
  async preview({ source, longSide }) {
    const t0 = performance.now();
    const size = fitLongSide(source.width, source.height, longSide);
    const input = resizeBilinear(source, size.width, size.height);
    const tw = roundUp(input.width, multiple), th = roundUp(input.height, multiple);
    const tensor = cropToTensor(input, 0, 0, input.width, input.height, tw, th);
    const t1 = performance.now();
    const out = await engine.run(tensor, tw, th);
    const latencyMs = performance.now() - t1;
    const output = tensorToImage(out, tw, th, input.width, input.height);
    const outputFloat = cropPlanar(out, tw, th, input.width, input.height);
    const totalMs = performance.now() - t0;
    const result = { source, input, output, outputFloat, latencyMs, totalMs };
    return [result, [...buffersOf(source, input, output), outputFloat.buffer]];
  },

  /** The whole photo in overlapping tiles (imageops.runTiled), reporting each finished tile. A model
   * with a global colour path gets one colour estimate for the whole photo, fed to every tile (the
   * runtime's photo_context), so the tiles do not each correct colour their own way. */
  async full({ source, tile, overlap }, progress) {
    const plan = planTiles(source.height, source.width, { multiple, tile, overlap });
    const total = plan.ys.length * plan.xs.length;
    progress(0, total);
    const t0 = performance.now();
    let modelMs = 0;
    const timed = async (job) => {
      const t = performance.now();
      const out = await job;
      modelMs += performance.now() - t;
      return out;
    };
    const infer = (tensor, tw, th) => timed(engine.run(tensor, tw, th));
    const photoColour = engine.hasPhotoColour && total > 1 ? Array.from(await timed(estimatePhotoColour(source))) : null;
    engine.setPhotoColour(photoColour);
    let output;
    try {
      output = await runTiled(source, plan, infer, progress);
    } finally {
      engine.setPhotoColour(null); // previews and benchmarks run one piece: weight 0
    }
    const ms = performance.now() - t0;
    return [{ source, output, ms, modelMs, tiles: total, plan, photoColour }, buffersOf(source, output)];
  },

  /** Model latency (ms per run) at size x size after `warmup` runs: what the bench ledger records. */
  async bench({ size, runs, warmup }) {
    const s = roundUp(size, multiple);
    const t = new Float32Array(3 * s * s);
    for (let i = 0; i < t.length; i++) t[i] = ((i * 2654435761) >>> 0) / 4294967296; // fixed pseudo-random pixels
    for (let i = 0; i < warmup; i++) await engine.run(t, s, s);
    const times = [];
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      await engine.run(t, s, s);
      times.push(performance.now() - t0);
    }
    return [times, []];
  },
};

Object.assign(ops, {
  async burstLoad() {
    if (!build.models.burst) throw new Error('this build has no burst model');
    burstEngine ??= await engine.loadModel(build.models.burst);
    return [{ model: burstEngine.model }, []];
  },

  /** One frame of a burst: resized like a preview (the full-size frame is dropped here). */
  async burstFrame({ source, index, longSide }) {
    const size = fitLongSide(source.width, source.height, longSide);
    if (index === 0) burstFrames = []; // a new burst
    burstFrames[index] = resizeBilinear(source, size.width, size.height);
    return [size, []];
  },

  /** The burst model on the collected frames (reference = the middle one): pad, run, crop. */
  async burst({ count }) {
    if (!burstEngine) throw new Error('the burst model is not loaded');
    const frames = Array.from({ length: count }, (_, i) => burstFrames[i]);
    burstFrames = [];
    if (frames.some((f) => !f)) throw new Error(`a burst needs ${count} frames`);
    const { width: w, height: h } = frames[0];
    if (frames.some((f) => f.width !== w || f.height !== h)) throw new Error('the burst frames differ in size');
    const t0 = performance.now();
    // A model that wants registered frames (burst-mnv2: frame_alignment "translation") gets each
    // frame moved onto the reference first, as `dereflect remove --burst` does (burst/pipeline.py).
    const ref = count >> 1;
    const registered = build.models.burst.frame_alignment === 'translation';
    const shifts = frames.map((f, i) => (registered && i !== ref ? registerShift(frames[ref], f) : { dx: 0, dy: 0 }));
    const fed = frames.map((f, i) => (shifts[i].dx || shifts[i].dy ? translateImage(f, shifts[i].dx, shifts[i].dy) : f));
    const m = burstEngine.model.multiple_of || multiple;
    const tw = roundUp(w, m), th = roundUp(h, m), plane = 3 * tw * th;
    const tensor = new Float32Array(count * plane);
    fed.forEach((f, i) => tensor.set(cropToTensor(f, 0, 0, w, h, tw, th), i * plane));
    const t1 = performance.now();
    const out = await burstEngine.runShaped(tensor, [1, count, 3, th, tw]);
    const latencyMs = performance.now() - t1;
    const output = tensorToImage(out, tw, th, w, h);
    const outputFloat = cropPlanar(out, tw, th, w, h);
    const result = { frames, reference: ref, registered, shifts, output, outputFloat, latencyMs, totalMs: performance.now() - t0 };
    return [result, [...buffersOf(...frames, output), outputFloat.buffer]];
  },
});

/** A photo's colour estimate, 12 floats: the model with weight 0 on the whole photo downscaled to long
 * side PHOTO_SIDE and padded to the multiple (runtime tiling.photo_copy: subsampled to at most twice
 * that first, then the antialiased bilinear resize, here Pillow's 8-bit one). */
function estimatePhotoColour(source) {
  const { width, height } = fitLongSide(source.width, source.height, PHOTO_SIDE);
  const long = Math.max(source.width, source.height);
  const step = long > PHOTO_SIDE ? Math.max(1, Math.trunc(1 / (PHOTO_SIDE / long)) >> 1) : 1;
  const small = resizeBilinear(step > 1 ? subsample(source, step) : source, width, height);
  const tw = roundUp(width, multiple), th = roundUp(height, multiple);
  return engine.estimateColour(cropToTensor(small, 0, 0, width, height, tw, th), tw, th);
}

/** Every `step`-th pixel of every `step`-th row (numpy's image[::step, ::step]). */
function subsample(img, step) {
  const w = Math.ceil(img.width / step), h = Math.ceil(img.height / step);
  const out = new Uint8ClampedArray(w * h * 4);
  for (let y = 0, o = 0; y < h; y++) {
    for (let x = 0, p = y * step * img.width * 4; x < w; x++, p += step * 4, o += 4) {
      out[o] = img.data[p]; out[o + 1] = img.data[p + 1]; out[o + 2] = img.data[p + 2]; out[o + 3] = 255;
    }
  }
  return { width: w, height: h, data: out };
}

/** The top-left h x w of a planar (3,th,tw) float tensor, still planar float. */
function cropPlanar(t, tw, th, w, h) {
  const out = new Float32Array(3 * w * h);
  for (let c = 0; c < 3; c++) for (let y = 0; y < h; y++) {
    out.set(t.subarray(c * tw * th + y * tw, c * tw * th + y * tw + w), c * w * h + y * w);
  }
  return out;
}

self.addEventListener('message', async ({ data: msg }) => {
  const { id, op } = msg;
  const progress = (done, total) => self.postMessage({ id, progress: { done, total } });
  try {
    if (!(op in ops)) throw new Error(`unknown worker op ${op}`);
    if (op !== 'init' && !engine) throw new Error('the model is not loaded');
    const [result, transfer] = await ops[op](msg, progress);
    self.postMessage({ id, ok: true, result }, transfer);
  } catch (err) {
    // a photo handed over comes back even when the job failed, so the page keeps it
    const source = msg.source?.data?.buffer?.byteLength ? msg.source : null;
    self.postMessage({ id, ok: false, error: String(err?.message || err), source }, source ? [source.data.buffer] : []);
  }
});
