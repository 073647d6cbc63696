/**
 * Random GPT-2 checkpoints of any size, for tests and benchmarks without downloads.
 *
 * Nothing is stored: each row of each tensor is generated on demand from (seed, tensor name, row
 * index), so the same seed always gives the same model, any row range can be read on its own (the
 * chunked wte upload reads slices), and gpt2-xl (1.56 B parameters) never sits in memory at once.
 *
 * Values: matrices (wte, wpe, Conv1D weights) ~ N(0, 0.02) like HF's initializer; biases ~ N(0, 0.02);
 * layer-norm gains 1 + N(0, 0.1) and shifts N(0, 0.02). The normal draws come from one 32-bit hash
 * output each, mapped through a 4096-segment piecewise-linear inverse normal CDF (tails truncated at
 * about +-3.7 sigma): several times faster than Box-Muller and plenty for test weights.
 */
import { InvalidOptionError, OutOfMemoryError, WeightsFormatError } from '../errors.js';
import type { Checkpoint } from './checkpoint.js';
import { GPT2Config, isKnownModel, KNOWN_MODELS, parameterCount, parameterShapes, parseConfig } from './config.js';

/**
 * The largest random model, in f32 bytes of its parameters: 16 GiB, 2.6 times gpt2-xl (6.2 GB).
 * Its tensors are generated on demand, so only the upload would need the memory.
 */
export const MAX_RANDOM_MODEL_BYTES = 16 * 2 ** 30;

const SEGMENTS = 4096;
let quantiles: Float64Array | undefined;

/** Acklam's rational approximation of the inverse standard normal CDF (|rel err| < 1.2e-9). */
function invNorm(p: number): number {
  const a = [
    -3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1,
    2.506628277459239,
  ];
  const b = [
    -5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1,
  ];
  const c = [
    -7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968,
    2.938163982698783,
  ];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const lo = 0.02425;
  if (p < lo) {
    const q = Math.sqrt(-2 * Math.log(p));
    return (
      (((((c[0]! * q + c[1]!) * q + c[2]!) * q + c[3]!) * q + c[4]!) * q + c[5]!) /
      ((((d[0]! * q + d[1]!) * q + d[2]!) * q + d[3]!) * q + 1)
    );
  }
  if (p > 1 - lo) return -invNorm(1 - p);
  const q = p - 0.5;
  const r = q * q;
  return (
    ((((((a[0]! * r + a[1]!) * r + a[2]!) * r + a[3]!) * r + a[4]!) * r + a[5]!) * q) /
    (((((b[0]! * r + b[1]!) * r + b[2]!) * r + b[3]!) * r + b[4]!) * r + 1)
  );
}

/** Quantiles at SEGMENTS + 1 equally spaced probabilities in [1e-4, 1 - 1e-4]. */
function table(): Float64Array {
  if (!quantiles) {
    quantiles = new Float64Array(SEGMENTS + 1);
    const eps = 1e-4;
    for (let i = 0; i <= SEGMENTS; i++) quantiles[i] = invNorm(eps + ((1 - 2 * eps) * i) / SEGMENTS);
  }
  return quantiles;
}

/** 32-bit FNV-1a of a string. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** murmur3's 32-bit finaliser: a good avalanche from one integer. */
function mix(h: number): number {
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * Fills out[o .. o + n) with mean + std * N(0, 1) draws, deterministic in `state` (a mulberry32
 * stream seeded from seed, tensor and row).
 */
function fillNormal(out: Float32Array, o: number, n: number, state: number, mean: number, std: number): void {
  const q = table();
  let s = state >>> 0;
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), s | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const u = (t ^ (t >>> 14)) >>> 0;
    const k = u >>> 20; // segment 0..4095
    const f = (u & 0xfffff) * (1 / 1048576); // position inside it
    const a = q[k]!;
    out[o + i] = mean + std * (a + f * (q[k + 1]! - a));
  }
}

/** Mean and spread of a tensor's values, from its name. */
function law(name: string): { mean: number; std: number } {
  if (/ln_(1|2|f)\.weight$/.test(name)) return { mean: 1, std: 0.1 };
  return { mean: 0, std: 0.02 };
}

function resolveConfig(spec: string | GPT2Config): { config: GPT2Config; label: string } {
  if (typeof spec === 'string') {
    if (!isKnownModel(spec)) {
      throw new InvalidOptionError(
        `unknown model "${spec}" for a random checkpoint; known: ${Object.keys(KNOWN_MODELS).join(', ')} (or pass a config)`,
      );
    }
    return { config: { ...KNOWN_MODELS[spec] }, label: spec };
  }
  // Re-validate a config object the caller built.
  return {
    config: parseConfig(spec, 'random checkpoint config'),
    label: `${spec.n_layer}L-${spec.n_embd}C-${spec.n_head}H-V${spec.vocab_size}`,
  };
}

/**
 * A random GPT-2 checkpoint: 'gpt2' | 'gpt2-medium' | 'gpt2-large' | 'gpt2-xl' | 'distilgpt2' or a
 * config. Same (spec, seed) -> same weights, bit for bit.
 */
export function randomCheckpoint(spec: string | GPT2Config, seed = 0): Checkpoint {
  const { config, label } = resolveConfig(spec);
  const source = `random:${label}${seed ? `#${seed}` : ''}`;
  // The total first (the config's fields are bounded, so this is exact and quick), then the tensors.
  const params = parameterCount(config);
  if (params * 4 > MAX_RANDOM_MODEL_BYTES) {
    throw new OutOfMemoryError(
      `${source}: ${params} parameters are ${params * 4} bytes in f32, more than the ${MAX_RANDOM_MODEL_BYTES} bytes a random model may have (gpt2-xl: ${parameterCount(KNOWN_MODELS['gpt2-xl']) * 4}); use a smaller config`,
    );
  }
  const shapes = parameterShapes(config);
  const get = (name: string): number[] => {
    const s = shapes.get(name);
    if (!s) throw new WeightsFormatError(`${source}: no tensor "${name}"`);
    return s;
  };
  const rows = (name: string, start: number, count: number): Float32Array => {
    const shape = get(name);
    const nRows = shape.length > 1 ? shape[0]! : 1;
    const rowLen = shape.length > 1 ? shape.slice(1).reduce((a, b) => a * b, 1) : shape[0]!;
    if (
      !Number.isSafeInteger(start) ||
      !Number.isSafeInteger(count) ||
      start < 0 ||
      count < 0 ||
      start + count > nRows
    ) {
      throw new WeightsFormatError(
        `${source}: tensor "${name}" [${shape.join(', ')}]: rows [${start}, ${start + count}) out of range`,
      );
    }
    const out = new Float32Array(count * rowLen);
    const { mean, std } = law(name);
    const base = mix(fnv1a(name) ^ mix(seed >>> 0) ^ Math.floor(seed / 2 ** 32));
    for (let r = 0; r < count; r++)
      fillNormal(out, r * rowLen, rowLen, mix(base + Math.imul(start + r, 0x9e3779b9)), mean, std);
    return out;
  };
  return {
    config,
    source,
    has: (name) => shapes.has(name),
    shape: (name) => get(name).slice(),
    read: async (name) => {
      const shape = get(name);
      return rows(name, 0, shape.length > 1 ? shape[0]! : 1);
    },
    readRows: async (name, start, count) => {
      const shape = get(name);
      // 1-D tensors are one row of all their elements; readRows on them slices elements.
      if (shape.length === 1) {
        if (
          !Number.isSafeInteger(start) ||
          !Number.isSafeInteger(count) ||
          start < 0 ||
          count < 0 ||
          start + count > shape[0]!
        ) {
          throw new WeightsFormatError(
            `${source}: tensor "${name}" [${shape[0]}]: rows [${start}, ${start + count}) out of range`,
          );
        }
        return rows(name, 0, 1).slice(start, start + count);
      }
      return rows(name, start, count);
    },
  };
}
