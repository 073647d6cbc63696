// The decode GEMVs alone, per weight storage: one transformer layer's four linear layers of
// gpt2 (c_attn 768 x 2304, attn c_proj 768 x 768, c_fc 768 x 3072, mlp c_proj 3072 x 768) at
// M = 1 row, bound as the engine binds them under the adapter's device profile (on CPU adapters:
// gemv_kn_cols over weights in column panels), random weights. Each timing is R repetitions of the
// four dispatches in one compute pass and one submit (the wall time of the submit, so that it works
// without timestamp queries); the storages alternate within each round, so that a slow stretch of a
// shared machine falls on all of them alike. Prints, per storage, ms per layer (median and fastest
// round, every round in brackets) and their ratios to the first storage (the fastest rounds are
// the ones a busy vCPU did not slow down). For kernel changes: run it
// on both commits, alternately, and compare the ratios (the f16 kernel is the yardstick).
// --rows M times M rows of x instead (a batch-M decode step: gemm_kn_sg from 8 rows on lavapipe).
//   node bench/gemv.mjs [--dtypes f16,q8,q4] [--rows 1] [--rounds 8] [--reps 100] [--json]
import { nodeContext } from '../dist/src/node.js';
import { Owned, encodeDispatches } from '../dist/src/gpu/common.js';
import { deviceProfile } from '../dist/src/kernels/profile.js';
import { MatmulKernel, WEIGHT_DTYPES } from '../dist/src/kernels/matmul.js';
import { bool, flags, int, parseOrExit, str, UsageError } from './flags.mjs';
import { packMatrix } from '../dist/src/kernels/matmul-pack.js';
import { scaleGroups, scaleStride } from '../dist/src/kernels/quant.js';

const USAGE = 'usage: node bench/gemv.mjs [--dtypes f16,q8,q4] [--rows 1] [--rounds 8] [--reps 100] [--json]';
const o = parseOrExit('bench/gemv.mjs', USAGE, () => {
  const f = flags(process.argv.slice(2), {
    dtypes: str('f16,q8,q4'),
    rows: str('1'),
    rounds: str('8'),
    reps: str('100'),
    json: bool,
  });
  const dtypes = f.dtypes.split(',');
  for (const d of dtypes)
    if (!WEIGHT_DTYPES.includes(d)) throw new UsageError(`--dtypes: ${d} is not one of ${WEIGHT_DTYPES.join(', ')}`);
  return {
    ...f,
    dtypes,
    rows: int('--rows', f.rows, 1, 1024),
    rounds: int('--rounds', f.rounds, 1, 1000),
    reps: int('--reps', f.reps, 1, 100000),
  };
});
const dtypes = o.dtypes;
const ROUNDS = o.rounds;
const REPS = o.reps;
const M = o.rows;
const SHAPES = [
  [768, 2304],
  [768, 768],
  [768, 3072],
  [3072, 768],
]; // [K, N]

const STORAGE = 0x80 | 0x8; // GPUBufferUsage STORAGE | COPY_DST

// Deterministic normals (Box-Muller over a 32-bit LCG): the weights' values do not matter, only
// that they are ordinary numbers (no denormals, which CPU adapters compute slowly).
function normals(n, seed, scale) {
  let s = seed >>> 0;
  const u = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) + 0.5) / 4294967296;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = scale * Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u());
  return out;
}

const ctx = await nodeContext();
const owned = new Owned(ctx);
const profile = deviceProfile(ctx);
const kernel = await MatmulKernel.create(ctx, profile.matmul, undefined, dtypes);
const panel = profile.matmul.panel;
const tensor = (data, shape, dtype) => ({
  buffer: owned.adopt(ctx.createBufferWithData('bench.gemv', data, STORAGE)),
  offset: 0,
  shape,
  dtype,
});

/** The weight W[K, N] as the engine stores it for `dtype` under this profile (plain or in panels). */
function weight(w, K, N, dtype) {
  const { data, scales } = packMatrix(w, K, N, dtype, panel || undefined);
  const t = tensor(data, [K, N], dtype);
  if (scales) t.scales = tensor(scales, [scaleGroups(dtype, K), scaleStride(N)], 'f32');
  if (panel) t.panel = panel;
  return t;
}

const layers = {};
for (const dtype of dtypes) {
  layers[dtype] = SHAPES.flatMap(([K, N], i) =>
    kernel.bind(owned, {
      x: tensor(normals(M * K, 7 + i, 1), [M, K], 'f32'),
      w: weight(normals(K * N, 100 + i, 0.02), K, N, dtype),
      layout: 'kn',
      out: tensor(new Float32Array(M * N), [M, N], 'f32'),
    }),
  );
}

async function time(list) {
  const enc = ctx.device.createCommandEncoder();
  const pass = enc.beginComputePass();
  for (let r = 0; r < REPS; r++) encodeDispatches(pass, list);
  pass.end();
  const t0 = performance.now();
  ctx.device.queue.submit([enc.finish()]);
  await ctx.device.queue.onSubmittedWorkDone();
  return (performance.now() - t0) / REPS;
}

for (const dtype of dtypes) await time(layers[dtype]); // warm-up: pipelines and caches
const runs = Object.fromEntries(dtypes.map((d) => [d, []]));
for (let r = 0; r < ROUNDS; r++) for (const dtype of dtypes) runs[dtype].push(await time(layers[dtype]));
ctx.throwIfErrors();
owned.destroy();

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const base = median(runs[dtypes[0]]);
const fastestBase = Math.min(...runs[dtypes[0]]);
const summary = dtypes.map((dtype) => ({
  dtype,
  ms_per_layer: median(runs[dtype]),
  ratio: median(runs[dtype]) / base,
  fastest_ms: Math.min(...runs[dtype]),
  fastest_ratio: Math.min(...runs[dtype]) / fastestBase,
  rounds: runs[dtype],
}));
if (o.json) {
  console.log(JSON.stringify({ adapter: ctx.adapter.description, profile: profile.name, rows: M, summary }));
} else {
  console.log(
    `profile ${profile.name}; one gpt2 layer's 4 decode GEMVs (M ${M}), ${REPS} per submit, ${ROUNDS} rounds`,
  );
  for (const s of summary)
    console.log(
      `${s.dtype.padEnd(4)} median ${s.ms_per_layer.toFixed(3)} ms/layer ${s.ratio.toFixed(3)}x ${dtypes[0]}, fastest ${s.fastest_ms.toFixed(3)} ${s.fastest_ratio.toFixed(3)}x (rounds ${s.rounds.map((v) => v.toFixed(3)).join(', ')})`,
    );
}
process.exit(0);
