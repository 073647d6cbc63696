// Weight storages compared in the same minutes: runs `gpt2-webgpu bench --json` once per dtype per
// round, the dtypes alternating (f32, f16, q8, q4, f32, ...), so that a noisy stretch of a shared
// machine falls on all of them alike; prints the median over rounds of decode ms/token per batch
// size, prefill ms and weight bytes of each.
//   node bench/dtype-ab.mjs [--model random:gpt2] [--rounds 3] [--batch 1,16] [--prompt-tokens 64]
//                           [--new-tokens 16] [--dtypes f32,f16,q8,q4] [--json]
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { bool, flags, int, parseOrExit, str } from './flags.mjs';

const USAGE =
  'usage: node bench/dtype-ab.mjs [--model M] [--rounds R] [--batch 1,16] [--prompt-tokens P] [--new-tokens N] [--dtypes f32,f16,q8,q4] [--json]';
// The other values go to `gpt2-webgpu bench`, which checks them.
const o = parseOrExit('bench/dtype-ab.mjs', USAGE, () => {
  const f = flags(process.argv.slice(2), {
    model: str('random:gpt2'),
    rounds: str('3'),
    batch: str('1,16'),
    'prompt-tokens': str('64'),
    'new-tokens': str('16'),
    dtypes: str('f32,f16,q8,q4'),
    json: bool,
  });
  return { ...f, rounds: int('--rounds', f.rounds, 1, 1000) };
});
const cli = fileURLToPath(new URL('../bin/gpt2-webgpu.js', import.meta.url));
const dtypes = o.dtypes.split(',');
const runs = Object.fromEntries(dtypes.map((d) => [d, []]));
for (let r = 0; r < o.rounds; r++) {
  for (const d of dtypes) {
    const args = [
      cli,
      'bench',
      '--model',
      o.model,
      '--dtype',
      d,
      '--batch',
      o.batch,
      '--prompt-tokens',
      o['prompt-tokens'],
    ];
    args.push('--new-tokens', o['new-tokens'], '--repeat', '1', '--no-profile', '--json');
    const rep = JSON.parse(
      execFileSync(process.execPath, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }),
    );
    runs[d].push(rep);
    if (!o.json)
      process.stderr.write(
        `round ${r + 1} ${d}: ${rep.results.map((x) => `batch ${x.batch} ${x.decode_ms_per_token?.toFixed(1)} ms/token, prefill ${x.prefill_ms?.toFixed(0)} ms`).join('; ')}\n`,
      );
  }
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const summary = dtypes.map((d) => {
  const reps = runs[d];
  const batches = reps[0].results.map((x) => x.batch);
  return {
    dtype: d,
    weight_bytes: reps[0].load.weight_bytes,
    rounds: reps.length,
    batches: batches.map((b) => {
      const rows = reps.map((rep) => rep.results.find((x) => x.batch === b));
      return {
        batch: b,
        decode_ms_per_token: median(rows.map((x) => x.decode_ms_per_token)),
        prefill_ms: median(rows.map((x) => x.prefill_ms)),
        all_decode: rows.map((x) => x.decode_ms_per_token),
      };
    }),
  };
});
if (o.json)
  console.log(
    JSON.stringify(
      { model: o.model, prompt_tokens: Number(o['prompt-tokens']), new_tokens: Number(o['new-tokens']), summary },
      null,
      1,
    ),
  );
else {
  console.log(
    `${o.model}, prompt ${o['prompt-tokens']}, ${o['new-tokens']} new tokens, medians of ${o.rounds} alternating rounds`,
  );
  for (const s of summary)
    for (const b of s.batches)
      console.log(
        `${s.dtype.padEnd(4)} ${(s.weight_bytes / 1e6).toFixed(0).padStart(5)} MB  batch ${String(b.batch).padStart(3)}  decode ${b.decode_ms_per_token.toFixed(2).padStart(8)} ms/token  prefill ${b.prefill_ms.toFixed(0).padStart(6)} ms`,
      );
}
