// The network on the phone: onnxruntime-web, WebGPU when the phone has a usable adapter, else
// WASM (SIMD always; threads when the page is cross-origin isolated, which the server's
// COOP/COEP headers make it). Each backend gets the model that suits it (build.json says which):
// INT8 QDQ for WASM (integer kernels), fp16 for WebGPU with shader-f16, else fp32 (GPUs have no
// int8 conv path in ORT). If the WebGPU session cannot be made, the WASM one is used instead.

const ORT_BUNDLES = {
  wasm: './ort/ort.wasm.min.mjs', // plain threaded SIMD build: the smallest download
  webgpu: './ort/ort.webgpu.min.mjs', // WebGPU EP + the same WASM EP as a fallback
};

async function webgpuAdapter() {
  if (!('gpu' in navigator)) return null;
  try {
    return await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' });
  } catch {
    return null;
  }
}

/** Threads the WASM backend may use: all cores up to 4 when SharedArrayBuffer is allowed, else 1. */
export function wasmThreads(requested) {
  if (!globalThis.crossOriginIsolated) return 1;
  const cores = navigator.hardwareConcurrency || 1;
  if (requested) return Math.max(1, Math.min(requested, cores));
  return Math.max(1, Math.min(4, cores));
}

async function fetchModel(url) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`cannot load the model ${url}: HTTP ${res.status}`);
  return new Uint8Array(await res.arrayBuffer());
}

/**
 * Load onnxruntime-web and the model. options: {backend: 'auto'|'wasm'|'webgpu', threads, build}
 * where build is the parsed build.json. Resolves to an engine {backend, threads, model, run}.
 */
export async function createEngine({ backend = 'auto', threads = 0, build }) {
  const adapter = backend === 'wasm' ? null : await webgpuAdapter();
  if (backend === 'webgpu' && !adapter) throw new Error('WebGPU was asked for but this browser has no adapter');
  const useGpu = !!adapter;
  const ort = await import(useGpu ? ORT_BUNDLES.webgpu : ORT_BUNDLES.wasm);
  ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href;
  ort.env.wasm.numThreads = wasmThreads(threads);
  ort.env.wasm.proxy = false;
  ort.env.logLevel = 'error';

  // fp16 needs the GPU's shader-f16 feature (most recent phone GPUs; not SwiftShader): else fp32
  const gpuModel = adapter?.features?.has('shader-f16') ? build.models.webgpu : (build.models.webgpu_fp32 ?? build.models.webgpu);
  const attempts = useGpu ? [['webgpu', gpuModel], ['wasm', build.models.wasm]] : [['wasm', build.models.wasm]];
  let lastError = null;
  for (const [ep, model] of attempts) {
    try {
      const bytes = await fetchModel(`./model/${model.file}`);
      const session = await ort.InferenceSession.create(bytes, {
        executionProviders: [ep],
        graphOptimizationLevel: 'all',
      });
      return makeEngine(ort, session, ep, model, { threads: ep === 'wasm' ? ort.env.wasm.numThreads : 0 });
    } catch (err) {
      lastError = err;
      console.warn(`dereflect: ${ep} backend failed, trying the next`, err);
    }
  }
  throw lastError;
}

/** The second input and output of a student with a global colour path (export's PhotoColourGraph,
 * runtime/backends/base.py): (N,13,1,1) the photo's colour transform (12) and its weight in,
 * (N,12) this input's own estimate out. */
const COLOUR_INPUT = 'photo_colour';
const COLOUR_OUTPUT = 'colour';

function makeEngine(ort, session, ep, model, { threads }) {
  const input = session.inputNames.find((n) => n !== COLOUR_INPUT);
  const output = session.outputNames.find((n) => n !== COLOUR_OUTPUT);
  const hasColour = session.inputNames.includes(COLOUR_INPUT);
  let photoColour = null; // the photo's 12 values while its tiles run (setPhotoColour), else null
  /** The COLOUR_INPUT of a batch of n: the photo's colour with weight 1 when set, else zeros
   * (weight 0: the input's own estimate, the student as trained). */
  const colourFeed = (n, colour) => {
    const feed = new Float32Array(13 * n);
    if (colour) for (let i = 0; i < n; i++) { feed.set(colour, 13 * i); feed[13 * i + 12] = 1; }
    return new ort.Tensor('float32', feed, [n, 13, 1, 1]);
  };
  let busy = Promise.resolve();
  /** float32 data of shape `dims` -> the output `name`'s Float32Array; calls are serialised, and
   * each takes the photo colour set when it was called. */
  const runShaped = (tensorData, dims, { name = output, colour = photoColour } = {}) => {
    const job = busy.then(async () => {
      const feeds = { [input]: new ort.Tensor('float32', tensorData, dims) };
      if (hasColour) feeds[COLOUR_INPUT] = colourFeed(dims[0], colour);
      const results = await session.run(feeds, [name]);
      const out = results[name];
      const data = out.location === 'gpu-buffer' ? await out.getData(true) : out.data;
      return new Float32Array(data);
    });
    busy = job.catch(() => {});
    return job;
  };
  return {
    backend: ep,
    threads,
    model,
    inputName: input,
    /** True when the model takes a photo's colour (a student with a global colour path). */
    hasPhotoColour: hasColour,
    /** (1,3,h,w) float32 planar -> same-shaped Float32Array. */
    run: (tensorData, width, height) => runShaped(tensorData, [1, 3, height, width]),
    runShaped,
    /** (1,3,h,w) -> this input's own colour estimate, 12 floats (run with weight 0). */
    estimateColour: (tensorData, width, height) => runShaped(tensorData, [1, 3, height, width], { name: COLOUR_OUTPUT, colour: null }),
    /** Feed these 12 values with weight 1 to every later run (a tiled photo's estimate); null: weight 0 again. */
    setPhotoColour(colour) {
      if (colour && !hasColour) throw new Error('this model takes no photo colour');
      photoColour = colour ? Float32Array.from(colour) : null;
    },
    /** Another model of this build (build.json's entry, e.g. the burst model) on the WASM backend
     * of the same onnxruntime-web: its own session, loaded when first needed. */
    async loadModel(other) {
      const bytes = await fetchModel(`./model/${other.file}`);
      const s = await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'], graphOptimizationLevel: 'all' });
      return makeEngine(ort, s, 'wasm', other, { threads: ort.env.wasm.numThreads });
    },
  };
}
