// Prints one table of the bench JSON files a device check wrote (scripts/device-check.sh), with
// the speed issue's GPU targets beside the figures they concern. Usage: node scripts/device-summary.js DIR
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2] ?? 'device-out';
if (!existsSync(dir)) {
  console.error(`no such directory: ${dir}`);
  process.exit(1);
}
// Targets of the speed issue (NVIDIA H100), by run name and batch.
const TARGETS = {
  'gpt2-f32:1': 'decode <= 1.0 ms/token',
  'gpt2-f32:64': '>= 20000 tokens/s',
  'gpt2-prefill-1024:1': 'prefill <= 10 ms',
  'gpt2-xl-f16:1': 'decode <= 6 ms/token',
  'gpt2-f32-split:1': 'decode <= 1.0 ms/token',
  'gpt2-f32-gemv64:64': '>= 20000 tokens/s',
  'gpt2-prefill-1024-t128:1': 'prefill <= 10 ms',
  'gpt2-prefill-1024-t64x128:1': 'prefill <= 10 ms',
  'gpt2-xl-f16-split:1': 'decode <= 6 ms/token',
  'gpt2-f32-depth1:1': 'decode <= 1.0 ms/token',
  'gpt2-f32-attn32:1': 'decode <= 1.0 ms/token',
  'gpt2-xl-q8:1': 'decode <= 6 ms/token (as f16)',
  'gpt2-xl-q4:1': 'decode <= 6 ms/token (as f16)',
};
// Why a run left no JSON, from its log: skipped (budget), timed out, or its last lines (Dawn's
// adapter warnings left out).
function whyNoResult(name) {
  const path = join(dir, `${name}.log`);
  if (!existsSync(path)) return 'no result and no log';
  const lines = readFileSync(path, 'utf8')
    .trim()
    .split('\n')
    .filter((l) => l && !/^Warning: /.test(l));
  const last = lines.at(-1) ?? '';
  if (/^skipped:/.test(last)) return last;
  const exit = /^exit (\d+)(?: \(limit (\d+) s\))?/.exec(last);
  if (exit && (exit[1] === '124' || exit[1] === '137'))
    return `timed out${exit[2] ? ` at its limit of ${exit[2]} s` : ''}`;
  return `failed: ${lines.slice(-3).join(' | ').slice(0, 200)}`;
}
const fmt = (v, d) => (typeof v === 'number' ? v.toFixed(d) : '-');
const info = existsSync(join(dir, 'info.json')) ? readFileSync(join(dir, 'info.json'), 'utf8') : '';
const adapter = /"description":\s*"([^"]*)"/.exec(info)?.[1] ?? /"vendor":\s*"([^"]*)"/.exec(info)?.[1] ?? '?';
console.log(`adapter: ${adapter}`);
console.log(
  'run                        batch  load ms  first/prefill ms  decode ms/tok (p90)   tokens/s  disp/step  target',
);
// Batch-1 decode ms/token of each run, for the quantized ratios at the end.
const decodeAt1 = new Map();
// Every run that left a JSON or a log (a skipped run leaves only its log).
const runs = new Set(
  readdirSync(dir)
    .filter((f) => /\.(json|log)$/.test(f))
    .map((f) => f.replace(/\.(json|log)$/, '')),
);
for (const name of [...runs].filter((n) => n !== 'info' && n !== 'tests').sort()) {
  let j;
  try {
    j = JSON.parse(readFileSync(join(dir, `${name}.json`), 'utf8'));
  } catch {
    console.log(`${name.padEnd(26)} ${whyNoResult(name)}`);
    continue;
  }
  // bench/chat-load.mjs: one closed-loop chat load, separate sessions against one group.
  if (j.separate && j.group) {
    const f = (x) =>
      `${fmt(x.tokens_per_s, 0)} tokens/s (${x.submits} submits, ${x.turns_sharing_steps} turns shared steps)`;
    console.log(
      `${name.padEnd(26)} chat load, ${j.users} users x ${j.turns} turns: separate ${f(j.separate)}, group ${f(j.group)}`,
    );
    continue;
  }
  for (const r of j.results) {
    if (r.error) {
      console.log(`${name.padEnd(26)} ${String(r.batch).padStart(5)}  failed: ${r.error.slice(0, 140)}`);
      continue;
    }
    if (r.batch === 1) decodeAt1.set(name, r.decode_ms_per_token);
    const first = `${fmt(r.first_token_ms, 2)}/${fmt(r.prefill_ms, 2)}`;
    const dec = `${fmt(r.decode_ms_per_token, 3)} (${fmt(r.decode_ms_per_token_p90, 3)})`;
    console.log(
      `${name.padEnd(26)} ${String(r.batch).padStart(5)}  ${fmt(r.load_ms, 0).padStart(7)}  ${first.padStart(16)}  ${dec.padStart(19)}  ${fmt(r.tokens_per_s, 0).padStart(8)}  ${fmt(r.dispatches_per_token, 0).padStart(9)}  ${TARGETS[`${name}:${r.batch}`] ?? ''}`,
    );
    // bench --sessions: the same B conversations as separate sessions and as one session group.
    if (r.sessions) {
      const x = r.sessions;
      console.log(
        `${''.padEnd(26)} ${''.padStart(5)}  sessions: separate ${fmt(x.separate_tokens_per_s, 0)} tokens/s (turn ${fmt(x.separate_turn_ms, 1)} ms), group ${fmt(x.group_tokens_per_s, 0)} tokens/s (turn ${fmt(x.group_turn_ms, 1)} ms, first token ${fmt(x.group_first_token_ms, 2)} ms, set-up ${fmt(x.group_setup_ms, 2)} ms)`,
      );
    }
  }
}
// Quantized decode against f16 at batch 1 (issue 26: q8 <= 0.6x f16, q4 faster still), where the
// runs left results.
const f16 = decodeAt1.get('gpt2-f16');
for (const [q, target] of [
  ['q8', '<= 0.6'],
  ['q4', 'below q8'],
]) {
  const t = decodeAt1.get(`gpt2-${q}`);
  if (typeof f16 === 'number' && typeof t === 'number')
    console.log(
      `${q} / f16 decode at batch 1: ${fmt(t / f16, 3)} (${fmt(t, 3)} / ${fmt(f16, 3)} ms/token; target ${target})`,
    );
}
