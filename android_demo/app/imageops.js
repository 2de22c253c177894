// Pixel work between a photo and the network, with no DOM: resize, pad, tensors, tiles, blending.
//
// Each function mirrors the Python side on purpose, so the browser's output can be checked
// against onnxruntime's on the same frame:
//   resizeBilinear  == Pillow's Image.resize(size, Image.BILINEAR) on RGB uint8 (antialiased
//                      triangle filter, 22-bit fixed point, horizontal pass then vertical)
//   padding/tiling  == dereflect/runtime/tiling.py (reflect padding at the bottom/right to a
//                      multiple of 8, tile origins on multiples of 8, raised-cosine ramps)
// Images are {width, height, data: Uint8ClampedArray RGBA} (the shape of ImageData).

const PRECISION_BITS = 32 - 8 - 2;

/** Pillow's precompute_coeffs + normalize_coeffs_8bpc for the triangle (bilinear) filter. */
function coeffs(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = 1.0 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Float64Array(outSize * ksize);
  const ss = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    const pre = new Float64Array(xmax);
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      const w = t < 1.0 ? 1.0 - t : 0.0;
      pre[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0.0 ? pre[x] / ww : pre[x];
      // C's (int) cast truncates toward zero, after the +-0.5 Pillow adds for rounding
      kk[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * (1 << PRECISION_BITS)) : Math.trunc(0.5 + v * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(v) {
  const x = Math.floor(v / (1 << PRECISION_BITS));
  return x < 0 ? 0 : x > 255 ? 255 : x;
}

/** Downscale (or copy) an RGBA image to width x height exactly like Pillow's BILINEAR resize of RGB. */
export function resizeBilinear(img, width, height) {
  if (width === img.width && height === img.height) {
    return { width, height, data: new Uint8ClampedArray(img.data) };
  }
  let src = img;
  const half = 1 << (PRECISION_BITS - 1);
  if (width !== img.width) {
    const { ksize, bounds, kk } = coeffs(img.width, width);
    const out = new Uint8ClampedArray(width * img.height * 4);
    for (let y = 0; y < img.height; y++) {
      const row = y * img.width * 4;
      for (let xx = 0; xx < width; xx++) {
        const xmin = bounds[xx * 2], n = bounds[xx * 2 + 1], k = xx * ksize;
        let r = half, g = half, b = half;
        for (let x = 0; x < n; x++) {
          const w = kk[k + x], p = row + (xmin + x) * 4;
          r += src.data[p] * w; g += src.data[p + 1] * w; b += src.data[p + 2] * w;
        }
        const o = (y * width + xx) * 4;
        out[o] = clip8(r); out[o + 1] = clip8(g); out[o + 2] = clip8(b); out[o + 3] = 255;
      }
    }
    src = { width, height: img.height, data: out };
  }
  if (height !== src.height) {
    const { ksize, bounds, kk } = coeffs(src.height, height);
    const out = new Uint8ClampedArray(width * height * 4);
    for (let yy = 0; yy < height; yy++) {
      const ymin = bounds[yy * 2], n = bounds[yy * 2 + 1], k = yy * ksize;
      for (let x = 0; x < width; x++) {
        let r = half, g = half, b = half;
        for (let y = 0; y < n; y++) {
          const w = kk[k + y], p = ((ymin + y) * width + x) * 4;
          r += src.data[p] * w; g += src.data[p + 1] * w; b += src.data[p + 2] * w;
        }
        const o = (yy * width + x) * 4;
        out[o] = clip8(r); out[o + 1] = clip8(g); out[o + 2] = clip8(b); out[o + 3] = 255;
      }
    }
    src = { width, height, data: out };
  }
  return src;
}

/** Size with the long side at most `longSide` (never enlarged), rounded like the preview uses. */
export function fitLongSide(width, height, longSide) {
  const long = Math.max(width, height);
  if (long <= longSide) return { width, height };
  const s = longSide / long;
  return width >= height
    ? { width: longSide, height: Math.max(1, Math.round(height * s)) }
    : { width: Math.max(1, Math.round(width * s)), height: longSide };
}

export const roundUp = (n, m) => Math.ceil(n / m) * m;

/** numpy's np.pad(mode="reflect") index for 0 <= i < n + pad (pad < n). */
const reflectIndex = (i, n) => (i < n ? i : 2 * (n - 1) - i);
const edgeIndex = (i, n) => (i < n ? i : n - 1);

/**
 * A (1,3,th,tw) float32 planar tensor in [0,1] from the crop [x0, x0+cw) x [y0, y0+ch) of `img`,
 * padded at the bottom/right to th x tw: reflect, or edge-repeat when the crop is too small
 * (tiling._pad_to's rule).
 */
export function cropToTensor(img, x0, y0, cw, ch, tw, th) {
  const ph = th - ch, pw = tw - cw;
  const index = Math.min(ch, cw) > Math.max(ph, pw) ? reflectIndex : edgeIndex;
  const plane = th * tw;
  const out = new Float32Array(3 * plane);
  const inv = 1 / 255;
  for (let y = 0; y < th; y++) {
    const sy = y0 + index(y, ch);
    const rowBase = sy * img.width;
    for (let x = 0; x < tw; x++) {
      const p = (rowBase + x0 + index(x, cw)) * 4;
      const o = y * tw + x;
      out[o] = img.data[p] * inv;
      out[plane + o] = img.data[p + 1] * inv;
      out[2 * plane + o] = img.data[p + 2] * inv;
    }
  }
  return out;
}

/** The top-left h x w of a planar (3,th,tw) float tensor as RGBA uint8 (round half to even, like np.rint). */
export function tensorToImage(t, tw, th, width, height) {
  const out = new Uint8ClampedArray(width * height * 4);
  const plane = tw * th;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = y * tw + x, o = (y * width + x) * 4;
      out[o] = toByte(t[i]); out[o + 1] = toByte(t[plane + i]); out[o + 2] = toByte(t[2 * plane + i]);
      out[o + 3] = 255;
    }
  }
  return { width, height, data: out };
}

function toByte(v) {
  const x = (v < 0 ? 0 : v > 1 ? 1 : v) * 255;
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 === 1 ? r - 1 : r; // np.rint: ties to even
}

// ------------------------------------------------------------------ tiles (tiling.py, ported)

/** (tile length, origins) along one axis: tiling._axis (the fewest evenly spread tiles of at most
 * `limit` that share at least `overlap`, origins on multiples of `multiple`). */
function axis(canvas, limit, overlap, multiple) {
  if (limit >= canvas) return [canvas, [0]];
  let count = Math.max(2, Math.ceil((canvas - overlap) / (limit - overlap)));
  while (count < Math.floor(canvas / multiple)) {
    let length = roundUp(Math.ceil((canvas + (count - 1) * overlap) / count), multiple);
    while (length <= Math.min(limit, canvas)) {
      const span = canvas - length;
      const origins = [];
      for (let i = 0; i < count - 1; i++) origins.push(Math.floor(Math.floor((i * span) / (count - 1)) / multiple) * multiple);
      origins.push(span);
      let ok = true;
      for (let i = 1; i < origins.length; i++) if (origins[i] - origins[i - 1] > length - overlap) ok = false;
      if (ok) return [length, origins];
      length += multiple; // rounding origins to the multiple ate into an overlap: a bit longer
    }
    count += 1;
  }
  const all = [];
  for (let o = 0; o < canvas; o += multiple) all.push(o);
  return [multiple, all]; // tiles of one block: only for degenerate limits
}

/** The tile grid for height x width with tiles of at most `tile` px: tiling.plan_tiles(tile=..., overlap=...). */
export function planTiles(height, width, { multiple = 8, tile = null, overlap = 128 } = {}) {
  const canvasH = roundUp(height, multiple), canvasW = roundUp(width, multiple);
  if (tile === null) return { height, width, tileH: canvasH, tileW: canvasW, ys: [0], xs: [0], overlap: 0 };
  const side = Math.max(multiple, tile - (tile % multiple));
  let th = Math.min(side, canvasH), tw = Math.min(side, canvasW);
  let ov = overlap > 0 ? roundUp(overlap, multiple) : 0;
  ov = Math.min(ov, Math.floor(Math.floor(Math.min(th, tw) / 2) / multiple) * multiple);
  let ys, xs;
  [th, ys] = axis(canvasH, th, ov, multiple);
  [tw, xs] = axis(canvasW, tw, ov, multiple);
  return { height, width, tileH: th, tileW: tw, ys, xs, overlap: ys.length * xs.length > 1 ? ov : 0 };
}

/** tiling.ramp: 0 on the outer quarter, raised cosine over the middle half, 1 on the inner quarter. */
export function ramp(length) {
  const margin = Math.floor(length / 4), core = length - 2 * margin;
  const r = new Float32Array(length);
  for (let d = 0; d < core; d++) r[margin + d] = 0.5 - 0.5 * Math.cos((Math.PI * (d + 0.5)) / core);
  for (let i = margin + core; i < length; i++) r[i] = 1;
  return r;
}

function weights1d(size, start, canvas, overlap) {
  const w = new Float32Array(size).fill(1);
  if (overlap) {
    const r = ramp(overlap);
    if (start > 0) for (let i = 0; i < overlap; i++) w[i] = r[i];
    if (start + size < canvas) for (let i = 0; i < overlap; i++) w[size - overlap + i] = r[overlap - 1 - i];
  }
  return w;
}

/**
 * Run `infer(tensor, tw, th) -> Promise<Float32Array>` over `img` tile by tile (tiling.run_tiled):
 * tiles padded on the fly, blended into a float band one tile high, finished rows written out,
 * so memory stays at one band + one tile even for a 12-megapixel photo.
 */
export async function runTiled(img, plan, infer, onTile = () => {}) {
  const { width: w, height: h, tileH: th, tileW: tw, ys, xs, overlap } = plan;
  const out = new Uint8ClampedArray(w * h * 4);
  const canvasH = Math.max(...ys) + th, canvasW = Math.max(...xs) + tw;
  let band = new Float32Array(th * w * 3), bandW = new Float32Array(th * w);
  const wxs = xs.map((x) => weights1d(tw, x, canvasW, overlap));
  let done = 0;
  for (let k = 0; k < ys.length; k++) {
    const y = ys[k];
    const wy = weights1d(th, y, canvasH, overlap);
    const rows = Math.min(th, h - y);
    for (let j = 0; j < xs.length; j++) {
      const x = xs[j], wx = wxs[j];
      const cols = Math.min(tw, w - x);
      const result = await infer(cropToTensor(img, x, y, cols, rows, tw, th), tw, th);
      const plane = tw * th;
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) {
          const weight = wy[r] * wx[c];
          const i = r * tw + c, b = r * w + x + c;
          band[b * 3] += result[i] * weight;
          band[b * 3 + 1] += result[plane + i] * weight;
          band[b * 3 + 2] += result[2 * plane + i] * weight;
          bandW[b] += weight;
        }
      }
      done += 1;
      onTile(done, ys.length * xs.length);
    }
    const finished = k + 1 < ys.length ? ys[k + 1] - y : rows;
    for (let r = 0; r < finished; r++) {
      for (let c = 0; c < w; c++) {
        const b = r * w + c, o = ((y + r) * w + c) * 4;
        const s = bandW[b];
        out[o] = toByte(band[b * 3] / s); out[o + 1] = toByte(band[b * 3 + 1] / s); out[o + 2] = toByte(band[b * 3 + 2] / s);
        out[o + 3] = 255;
      }
    }
    if (k + 1 < ys.length) {
      band.copyWithin(0, finished * w * 3); band.fill(0, (th - finished) * w * 3);
      bandW.copyWithin(0, finished * w); bandW.fill(0, (th - finished) * w);
    }
  }
  return { width: w, height: h, data: out };
}

// ------------------------------------------------------------------ burst registration
// A burst model with frame_alignment "translation" (burst-mnv2) wants every frame moved onto the
// reference by a global translation, as dereflect/burst/pipeline.py does with phase correlation.
// Here: an exhaustive integer search (mean |difference| of grey values over the overlap) on a
// quarter-size grey copy, refined +-2 px at half and at full size; the Python test checks it agrees with phase
// correlation to a pixel and feeds onnxruntime the frames moved by the shifts found here.

/** Grey (Pillow's "L": 299/587/114 per mille) of an RGBA image, downscaled by an integer box. */
function greyBox(img, factor) {
  const w = Math.floor(img.width / factor), h = Math.floor(img.height / factor);
  const out = new Float32Array(w * h);
  const norm = 1 / (factor * factor * 1000);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let s = 0;
      for (let j = 0; j < factor; j++) {
        let p = ((y * factor + j) * img.width + x * factor) * 4;
        for (let i = 0; i < factor; i++, p += 4) s += img.data[p] * 299 + img.data[p + 1] * 587 + img.data[p + 2] * 114;
      }
      out[y * w + x] = s * norm;
    }
  }
  return { width: w, height: h, data: out };
}

/** Mean |ref(p) - other(p + d)| over the overlap (Infinity when it is under a quarter of the frame). */
function alignCost(ref, other, dx, dy) {
  const x0 = Math.max(0, -dx), x1 = Math.min(ref.width, ref.width - dx);
  const y0 = Math.max(0, -dy), y1 = Math.min(ref.height, ref.height - dy);
  if ((x1 - x0) * (y1 - y0) < (ref.width * ref.height) / 4) return Infinity;
  let s = 0;
  for (let y = y0; y < y1; y++) {
    const a = y * ref.width, b = (y + dy) * other.width + dx;
    for (let x = x0; x < x1; x++) s += Math.abs(ref.data[a + x] - other.data[b + x]);
  }
  return s / ((x1 - x0) * (y1 - y0));
}

function bestShift(ref, other, cx, cy, radius) {
  let best = { dx: cx, dy: cy, cost: Infinity };
  for (let dy = cy - radius; dy <= cy + radius; dy++) {
    for (let dx = cx - radius; dx <= cx + radius; dx++) {
      const cost = alignCost(ref, other, dx, dy);
      if (cost < best.cost) best = { dx, dy, cost };
    }
  }
  return best;
}

/** The integer shift (dx, dy) of `other`'s content from `ref`'s: other(p + d) ~ ref(p). */
export function registerShift(ref, other, maxShiftFraction = 0.12) {
  const coarse = [greyBox(ref, 4), greyBox(other, 4)];
  const radius = Math.ceil(maxShiftFraction * Math.max(coarse[0].width, coarse[0].height));
  let d = bestShift(coarse[0], coarse[1], 0, 0, radius);
  for (const factor of [2, 1]) { // refine +-2 px at each finer level (a quarter-size search costs ~1/16)
    const level = [greyBox(ref, factor), greyBox(other, factor)];
    d = bestShift(level[0], level[1], 2 * d.dx, 2 * d.dy, 2);
  }
  return { dx: d.dx, dy: d.dy };
}

/** out(p) = img(p + (dx, dy)), edges replicated: pipeline._translate, which moves content back by d. */
export function translateImage(img, dx, dy) {
  const { width: w, height: h } = img;
  const out = new Uint8ClampedArray(img.data.length);
  for (let y = 0; y < h; y++) {
    const sy = Math.min(h - 1, Math.max(0, y + dy));
    for (let x = 0; x < w; x++) {
      const sx = Math.min(w - 1, Math.max(0, x + dx));
      const p = (sy * w + sx) * 4, o = (y * w + x) * 4;
      out[o] = img.data[p]; out[o + 1] = img.data[p + 1]; out[o + 2] = img.data[p + 2]; out[o + 3] = 255;
    }
  }
  return { width: w, height: h, data: out };
}
