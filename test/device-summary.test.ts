/**
 * scripts/device-summary.js, the table a GPU session reads after scripts/device-check.sh (one shot
 * on a borrowed machine): results with their targets, and runs without a result named with why
 * (skipped for the time budget, timed out, failed with Dawn's warnings left out).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from './fixtures-util.js';

test('device-summary: a result row with its target; skipped, timed-out and failed runs named', () => {
  const dir = mkdtempSync(join(tmpdir(), 'gpt2-devsum-'));
  writeFileSync(join(dir, 'info.json'), JSON.stringify({ adapter: { description: 'NVIDIA H100 80GB HBM3' } }));
  const row = {
    batch: 1,
    load_ms: 812.4,
    first_token_ms: 9.87,
    prefill_ms: 9.5,
    decode_ms_per_token: 0.913,
    decode_ms_per_token_p90: 0.95,
    tokens_per_s: 1095,
    dispatches_per_token: 61,
  };
  writeFileSync(
    join(dir, 'gpt2-f32.json'),
    JSON.stringify({ results: [row, { batch: 64, error: 'OutOfMemoryError: no room' }] }),
  );
  writeFileSync(join(dir, 'gpt2-f32.log'), 'exit 0 (limit 150 s)\n');
  writeFileSync(
    join(dir, 'gpt2-prefill-1024.log'),
    "skipped: the check's budget of 540 s was spent before this step\n",
  );
  writeFileSync(join(dir, 'gpt2-xl-f16.json'), '');
  writeFileSync(join(dir, 'gpt2-xl-f16.log'), 'upload: 10%\nexit 124 (limit 200 s)\n');
  writeFileSync(join(dir, 'gpt2-f16.json'), '{"trunc');
  writeFileSync(
    join(dir, 'gpt2-f16.log'),
    'error: DeviceLostError: the GPU device was lost\nWarning: maxDynamicUniformBuffersPerPipelineLayout artificially reduced\nexit 1 (limit 120 s)\n',
  );
  const sessions = {
    separate_turn_ms: 812.5,
    separate_tokens_per_s: 630.2,
    group_turn_ms: 101.25,
    group_tokens_per_s: 5056.8,
    group_setup_ms: 0.4321,
    group_first_token_ms: 3.215,
  };
  writeFileSync(join(dir, 'gpt2-sessions.json'), JSON.stringify({ results: [{ ...row, batch: 16, sessions }] }));
  const chat = (tps: number, submits: number, shared: number) => ({
    ms: 1000,
    tokens: 500,
    tokens_per_s: tps,
    submits,
    turns_sharing_steps: shared,
  });
  writeFileSync(
    join(dir, 'gpt2-chat.json'),
    JSON.stringify({ users: 16, turns: 3, separate: chat(812.4, 650, 0), group: chat(4999.6, 70, 48) }),
  );
  const r = spawnSync(process.execPath, [join(REPO_ROOT, 'scripts', 'device-summary.js'), dir], { encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
  const lines = r.stdout.split('\n');
  const line = (name: string) => lines.filter((l) => l.startsWith(`${name} `));
  assert.match(r.stdout, /^adapter: NVIDIA H100 80GB HBM3/);
  const f32 = line('gpt2-f32');
  assert.is(f32.length, 2, r.stdout);
  assert.match(
    f32[0]!,
    /^gpt2-f32\s+1\s+812\s+9\.87\/9\.50\s+0\.913 \(0\.950\)\s+1095\s+61\s+decode <= 1\.0 ms\/token$/,
  );
  assert.match(f32[1]!, /64\s+failed: OutOfMemoryError: no room/);
  assert.match(line('gpt2-prefill-1024').join(''), /skipped: the check's budget of 540 s was spent/);
  assert.match(line('gpt2-xl-f16').join(''), /timed out at its limit of 200 s/);
  const f16 = line('gpt2-f16').join('');
  assert.match(f16, /failed: error: DeviceLostError: the GPU device was lost \| exit 1/);
  assert.not.match(f16, /Warning/);
  // a --sessions run: its row, then the separate / group line under it
  const at = lines.findIndex((l) => l.startsWith('gpt2-sessions '));
  assert.match(
    lines[at + 1]!,
    /^\s+sessions: separate 630 tokens\/s \(turn 812\.5 ms\), group 5057 tokens\/s \(turn 101\.3 ms, first token 3\.21 ms, set-up 0\.43 ms\)$/,
  );
  assert.match(
    line('gpt2-chat').join(''),
    /^gpt2-chat\s+chat load, 16 users x 3 turns: separate 812 tokens\/s \(650 submits, 0 turns shared steps\), group 5000 tokens\/s \(70 submits, 48 turns shared steps\)$/,
  );
  assert.not.match(r.stdout, /f16 decode at batch 1/, 'no ratio without a gpt2-f16 result');
});

test('device-summary: q8 and q4 decode at batch 1 against f16, where all of them left results', () => {
  const dir = mkdtempSync(join(tmpdir(), 'gpt2-devsum-'));
  const run = (name: string, results: object[]) =>
    writeFileSync(join(dir, `${name}.json`), JSON.stringify({ results }));
  run('gpt2-f16', [{ batch: 1, decode_ms_per_token: 0.8 }]);
  run('gpt2-q8', [
    { batch: 64, decode_ms_per_token: 9 },
    { batch: 1, decode_ms_per_token: 0.5 },
  ]);
  run('gpt2-q4', [{ batch: 1, error: 'OutOfMemoryError: no room' }]);
  const r = spawnSync(process.execPath, [join(REPO_ROOT, 'scripts', 'device-summary.js'), dir], { encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /^q8 \/ f16 decode at batch 1: 0\.625 \(0\.500 \/ 0\.800 ms\/token; target <= 0\.6\)$/m);
  assert.not.match(r.stdout, /q4 \/ f16/, 'gpt2-q4 has no batch-1 result');
});

test.run();
