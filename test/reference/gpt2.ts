/**
 * float64 CPU reference of the whole GPT-2 forward pass (HF GPT2LMHeadModel semantics), used to
 * check the GPU model on random configs. Straightforward loops; no caching, no batching.
 *
 *   x = wte[ids] + wpe[0..T)                                  [T, C]
 *   per layer: a = attn(ln_1(x)); x += a; m = mlp(ln_2(x)); x += m
 *     attn: qkv = h @ c_attn.weight + b [T, 3C] -> q | k | v, heads of D = C / n_head,
 *           causal softmax(q k^T / sqrt(D)) v, then @ c_proj.weight + b
 *     mlp:  gelu_tanh(h @ c_fc.weight + b) @ c_proj.weight + b
 *   logits = ln_f(x) @ wte^T                                  [T, V]
 */
import type { GPT2Config } from '../../src/engine/config.js';
import { parameterShapes } from '../../src/engine/config.js';
import type { Checkpoint } from '../../src/engine/checkpoint.js';
import { layerNorm64 } from './layernorm.js';

/** Tensors by HF name without the `transformer.` prefix. */
export type TensorsLike = Map<string, ArrayLike<number>> | Record<string, ArrayLike<number>>;

/** Reads every tensor of a checkpoint into memory (only for small models). */
export async function loadTensors(ckpt: Checkpoint): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const name of parameterShapes(ckpt.config).keys()) out.set(name, await ckpt.read(name));
  return out;
}

/** y[T, N] = x[T, K] @ w[K, N] + b[N] (Conv1D layout). */
function linear(
  x: Float64Array,
  w: ArrayLike<number>,
  b: ArrayLike<number>,
  T: number,
  K: number,
  N: number,
): Float64Array {
  const y = new Float64Array(T * N);
  for (let t = 0; t < T; t++) {
    const row = y.subarray(t * N, (t + 1) * N);
    for (let n = 0; n < N; n++) row[n] = b[n]!;
    for (let k = 0; k < K; k++) {
      const xv = x[t * K + k]!;
      const wo = k * N;
      for (let n = 0; n < N; n++) row[n] += xv * w[wo + n]!;
    }
  }
  return y;
}

/** GELU, tanh form (gelu_new == gelu_pytorch_tanh). */
export function gelu64(x: number): number {
  return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
}

/**
 * Logits at every position, [T, V] row-major, for token ids at positions 0..T-1.
 * `w` holds tensors by HF name (without `transformer.`), f32 or f64 values. `kvRound`: what the
 * cache does to each K and V value (f16 caches: roundF16).
 */
export function forward64(
  w: TensorsLike,
  cfg: GPT2Config,
  ids: readonly number[],
  opts: { kvRound?: (x: number) => number } = {},
): Float64Array {
  const get = (n: string): ArrayLike<number> => {
    const v = w instanceof Map ? w.get(n) : w[n];
    if (!v) throw new Error(`forward64: missing tensor ${n}`);
    return v;
  };
  const { n_embd: C, n_head: H, vocab_size: V, layer_norm_epsilon: eps } = cfg;
  const T = ids.length;
  const D = C / H;
  if (T > cfg.n_positions) throw new Error(`forward64: ${T} tokens > n_positions ${cfg.n_positions}`);
  const wte = get('wte.weight');
  const wpe = get('wpe.weight');
  const x = new Float64Array(T * C);
  for (let t = 0; t < T; t++) {
    const id = ids[t]!;
    if (!(id >= 0 && id < V)) throw new Error(`forward64: id ${id} outside [0, ${V})`);
    for (let c = 0; c < C; c++) x[t * C + c] = wte[id * C + c]! + wpe[t * C + c]!;
  }
  const scale = 1 / Math.sqrt(D);
  for (let l = 0; l < cfg.n_layer; l++) {
    const p = `h.${l}.`;
    // attention block
    const h1 = layerNorm64(x, get(p + 'ln_1.weight'), get(p + 'ln_1.bias'), T, C, eps);
    const qkv = linear(h1, get(p + 'attn.c_attn.weight'), get(p + 'attn.c_attn.bias'), T, C, 3 * C); // [T, 3C]
    // A KV cache that stores K and V rounded (f16): attention reads them as stored.
    const kvRound = opts.kvRound;
    if (kvRound)
      for (let t = 0; t < T; t++) for (let c = C; c < 3 * C; c++) qkv[t * 3 * C + c] = kvRound(qkv[t * 3 * C + c]!);
    const att = new Float64Array(T * C);
    const s = new Float64Array(T);
    for (let hd = 0; hd < H; hd++) {
      for (let i = 0; i < T; i++) {
        let mx = -Infinity;
        for (let j = 0; j <= i; j++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += qkv[i * 3 * C + hd * D + d]! * qkv[j * 3 * C + C + hd * D + d]!;
          s[j] = dot * scale;
          if (s[j]! > mx) mx = s[j]!;
        }
        let sum = 0;
        for (let j = 0; j <= i; j++) sum += s[j] = Math.exp(s[j]! - mx);
        for (let j = 0; j <= i; j++) {
          const pj = s[j]! / sum;
          for (let d = 0; d < D; d++) att[i * C + hd * D + d] += pj * qkv[j * 3 * C + 2 * C + hd * D + d]!;
        }
      }
    }
    const proj = linear(att, get(p + 'attn.c_proj.weight'), get(p + 'attn.c_proj.bias'), T, C, C);
    for (let i = 0; i < T * C; i++) x[i] += proj[i]!;
    // MLP block
    const h2 = layerNorm64(x, get(p + 'ln_2.weight'), get(p + 'ln_2.bias'), T, C, eps);
    const f = linear(h2, get(p + 'mlp.c_fc.weight'), get(p + 'mlp.c_fc.bias'), T, C, 4 * C);
    for (let i = 0; i < f.length; i++) f[i] = gelu64(f[i]!);
    const m = linear(f, get(p + 'mlp.c_proj.weight'), get(p + 'mlp.c_proj.bias'), T, 4 * C, C);
    for (let i = 0; i < T * C; i++) x[i] += m[i]!;
  }
  const hf = layerNorm64(x, get('ln_f.weight'), get('ln_f.bias'), T, C, eps);
  // tied LM head: logits[t, v] = hf[t] . wte[v]
  const logits = new Float64Array(T * V);
  for (let v = 0; v < V; v++) {
    const o = v * C;
    for (let t = 0; t < T; t++) {
      let dot = 0;
      for (let c = 0; c < C; c++) dot += hf[t * C + c]! * wte[o + c]!;
      logits[t * V + v] = dot;
    }
  }
  return logits;
}
