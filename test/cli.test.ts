/** The command line: help, usage errors (exit 2), errors (exit 1), and each command's output. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT, tinyDir, tinyReference } from './fixtures-util.js';
import { gpt2Tokenizer } from '../src/engine/tokenizer.js';

const BIN = join(REPO_ROOT, 'bin', 'gpt2-webgpu.js');
const ref = tinyReference();
const tmp = mkdtempSync(join(tmpdir(), 'gpt2-cli-'));

function cli(...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' },
  });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

const SUBCOMMANDS = ['info', 'generate', 'logits', 'sample', 'beam', 'bench'];

test('--help on every subcommand lists its flags with defaults; exit 0', () => {
  for (const c of SUBCOMMANDS) {
    const r = cli(c, '--help');
    assert.is(r.code, 0, `${c}: ${r.err}`);
    assert.match(r.out, /--json/);
  }
  assert.match(cli('generate', '--help').out, /--temperature VALUE .*\(default 1\)/);
  assert.is(cli('--help').code, 0);
});

test('unknown flags, missing values, bad numbers -> usage and exit 2', () => {
  for (const args of [
    ['generate', '--modle', 'x'],
    ['generate', '--model'],
    ['frobnicate'],
    ['generate', '--model', 'random:gpt2', '--ids', '1,2', '--temperature', 'hot'],
    ['generate', '--model', 'random:gpt2', '--ids', '1,x'],
    ['bench', '--batch', '0'],
  ]) {
    const r = cli(...args);
    assert.is(r.code, 2, `${args.join(' ')}: exit ${r.code}, stderr ${r.err}`);
    assert.match(r.err, /usage|gpt2-webgpu/);
  }
});

test('errors exit 1 with a named error', () => {
  const r = cli('generate', '--model', join(tmp, 'nope'), '--ids', '1');
  assert.is(r.code, 1, r.err);
  assert.match(r.err, /error: \w+Error: /);
  const r2 = cli('generate', '--model', tinyDir(), '--ids', '1', '--top-p', '2');
  assert.is(r2.code, 1, r2.err);
  assert.match(r2.err, /InvalidOptionError/);
});

test('info prints the adapter', () => {
  const r = cli('info', '--json');
  assert.is(r.code, 0, r.err);
  const j = JSON.parse(r.out);
  assert.ok(j.adapter.limits.maxStorageBufferBindingSize > 0);
  assert.type(j.adapter.description, 'string');
});

test('generate --json on the HF tiny model reproduces greedy48', () => {
  const p = ref.prompts[0]!;
  const r = cli(
    'generate',
    '--model',
    tinyDir(),
    '--ids',
    p.ids.join(','),
    '--temperature',
    '0',
    '--max-new-tokens',
    '12',
    '--no-stop-at-eos',
    '--json',
  );
  assert.is(r.code, 0, r.err);
  const j = JSON.parse(r.out);
  assert.equal(j.prompt_ids, p.ids);
  assert.equal(j.sequences[0].tokens, p.greedy48.slice(p.ids.length, p.ids.length + 12));
  for (const k of ['prefill_ms', 'decode_ms_per_token', 'readback_bytes_per_token', 'tokens_per_s'])
    assert.type(j.stats[k], 'number', k);
  assert.type(j.seed, 'number');
});

test('logits --out writes float32 logits and prints the shape', () => {
  const p = ref.prompts[0]!;
  const out = join(tmp, 'l.f32');
  const r = cli('logits', '--model', tinyDir(), '--ids', p.ids.join(','), '--all-positions', '--out', out);
  assert.is(r.code, 0, r.err);
  assert.equal(JSON.parse(r.out), { shape: [p.ids.length, 50257] });
  assert.is(readFileSync(out).byteLength, p.ids.length * 50257 * 4);
});

test('sample --json counts draws on the GPU; --probs-out writes the distribution', () => {
  const logits = Float32Array.from([0.1, 0.2, 0.3, 0.4].map(Math.log));
  const f = join(tmp, 's.f32');
  writeFileSync(f, new Uint8Array(logits.buffer));
  const probs = join(tmp, 'p.f32');
  const r = cli(
    'sample',
    '--logits',
    f,
    '--count',
    '4000',
    '--top-k',
    '2',
    '--seed',
    '1',
    '--probs-out',
    probs,
    '--json',
  );
  assert.is(r.code, 0, r.err);
  const j = JSON.parse(r.out);
  assert.is(j.counts.length, 4);
  assert.is(j.counts[0] + j.counts[1], 0);
  assert.is(j.counts[2] + j.counts[3], 4000);
  const pr = new Float32Array(new Uint8Array(readFileSync(probs)).buffer);
  assert.is(pr.length, 4);
  assert.ok(Math.abs(pr[2]! - 3 / 7) < 1e-5 && Math.abs(pr[3]! - 4 / 7) < 1e-5);
});

test('a file flag that cannot be read or written is named, without a stack trace', () => {
  const missing = cli('sample', '--logits', join(tmp, 'no-such.f32'));
  assert.is(missing.code, 1);
  assert.match(missing.err, /InvalidOptionError: --logits .*no-such\.f32: cannot read it \(ENOENT\)/);
  const unwritable = cli('logits', '--model', tinyDir(), '--ids', '1,2', '--out', join(tmp, 'no-dir', 'l.f32'));
  assert.is(unwritable.code, 1);
  assert.match(unwritable.err, /InvalidOptionError: --out .*l\.f32: cannot write it \(ENOENT\)/);
  for (const r of [missing, unwritable]) assert.not.match(r.err, /\n\s+at /);
});

test('beam --json reproduces the fixture beams', () => {
  const p = ref.prompts[0]!;
  const r = cli(
    'beam',
    '--model',
    tinyDir(),
    '--ids',
    p.ids.join(','),
    '--num-beams',
    '6',
    '--num-return',
    '2',
    '--max-new-tokens',
    '20',
    '--json',
  );
  assert.is(r.code, 0, r.err);
  const j = JSON.parse(r.out);
  // Tokens and text are the completion's (as generate's); the prompt comes as prompt_ids.
  assert.equal(j.prompt_ids, p.ids);
  assert.equal(
    j.beams.map((b: { tokens: number[] }) => [...j.prompt_ids, ...b.tokens]),
    p['beam_nb6_nr2_max20_lp0.0'].sequences,
  );
  assert.is(j.beams[0].text, gpt2Tokenizer.decode(j.beams[0].tokens));
  assert.is(j.beams[0].finish_reason, 'length');
});

test('bench --json smoke run has every field', () => {
  const r = cli(
    'bench',
    '--model',
    tinyDir(),
    '--batch',
    '1,2',
    '--prompt-tokens',
    '4',
    '--new-tokens',
    '4',
    '--repeat',
    '1',
    '--json',
  );
  assert.is(r.code, 0, r.err);
  const j = JSON.parse(r.out);
  assert.is(j.results.length, 2);
  for (const x of j.results) {
    for (const k of [
      'load_ms',
      'first_token_ms',
      'setup_ms',
      'prefill_ms',
      'decode_ms_per_token',
      'decode_ms_per_token_p90',
      'tokens_per_s',
      'readback_bytes_per_token',
      'dispatches_per_token',
      'submits_per_token',
    ]) {
      assert.type(x[k], 'number', k);
    }
    assert.ok(Array.isArray(x.kernels) || typeof x.kernels_note === 'string');
    if (Array.isArray(x.kernels)) {
      // by operation: the same dispatches, summed over layers (no `h.<l>.` prefixes, no chunk indices)
      type K = { name: string; ms: number; dispatches: number };
      const ops = x.kernels_by_op as K[];
      const count = (ks: K[]) => ks.reduce((s, k) => s + k.dispatches, 0);
      assert.is(count(ops), count(x.kernels));
      assert.ok(
        ops.every((k) => !/^h\.\d|\[/.test(k.name) && k.ms >= 0),
        JSON.stringify(ops.map((k) => k.name)),
      );
      for (const op of ['attn.c_attn', 'attn', 'mlp.c_fc', 'mlp.c_proj', 'lm_head'])
        assert.ok(
          ops.some((k) => k.name === op),
          op,
        );
      assert.is(ops.find((k) => k.name === 'attn.c_attn')!.dispatches, 2); // one per layer of the tiny model
    }
  }
  assert.ok(j.adapter);
  // lavapipe is a CPU adapter: the default wait sleeps in slices, layer norms stay dispatches, the (unused) GPU GEMV would split K over workgroups.
  assert.is(j.host_wait, 'sleep');
  assert.is(j.fuse_ln, false);
  assert.is(j.gemv_reduce, 'split');
  assert.equal(j.gemv_max_m, { kn: null, nk: null }); // CPU adapters take the GEMV at every M
  assert.is(j.pipeline_depth, 1); // and decode one step at a time
  assert.is(j.attention_decode_wg, null); // not a wide workgroup:
  assert.is(j.attention_decode, 'subgroup'); // one 4-invocation subgroup per (token, head) (lavapipe's subgroups are 8)
  assert.is(j.attention_prompt, 'subgroup'); // a 4-token prompt: prefill_sg (lavapipe's subgroups are 8)
  assert.is(j.matmul_prompt, 'cols'); // and gemv_kn_cols blocks (the subgroup GEMM from 8 rows on)
  assert.is(j.sessions, false);
  assert.ok(j.results.every((x: object) => !('sessions' in x)));
});

test('bench --sessions times B conversations as separate sessions and as one session group', () => {
  const r = cli(
    'bench',
    '--model',
    tinyDir(),
    '--batch',
    '1,3',
    '--prompt-tokens',
    '5',
    '--new-tokens',
    '3',
    '--repeat',
    '2',
    '--no-profile',
    '--sessions',
    '--json',
  );
  assert.is(r.code, 0, r.err);
  const j = JSON.parse(r.out);
  assert.is(j.sessions, true);
  for (const x of j.results) {
    const s = x.sessions;
    for (const k of ['separate_turn_ms', 'group_turn_ms']) assert.ok(s[k] > 0, `${k}: ${s[k]}`);
    // The follow-up turn's set-up (plans kept from the turn before) is part of its first token, which is part of the turn.
    assert.ok(
      s.group_setup_ms > 0 && s.group_setup_ms < s.group_first_token_ms && s.group_first_token_ms < s.group_turn_ms,
      JSON.stringify(s),
    );
    // tokens/s = B x N / turn time
    assert.ok(
      Math.abs(s.separate_tokens_per_s - (1000 * x.batch * 3) / s.separate_turn_ms) < 1e-6 * s.separate_tokens_per_s,
    );
    assert.ok(Math.abs(s.group_tokens_per_s - (1000 * x.batch * 3) / s.group_turn_ms) < 1e-6 * s.group_tokens_per_s);
  }
  const table = cli(
    'bench',
    '--model',
    tinyDir(),
    '--batch',
    '2',
    '--prompt-tokens',
    '5',
    '--new-tokens',
    '2',
    '--repeat',
    '1',
    '--no-profile',
    '--sessions',
  );
  assert.is(table.code, 0, table.err);
  assert.match(
    table.out,
    /separate sessions at once\s+one session group\n\s+2\s+\d+ ms, [\d.]+\/s\s+\d+ ms, [\d.]+\/s \(first token [\d.]+ ms, set-up [\d.]+\)/,
  );
});

test('bench --wait spin, --fuse-ln on, --gemv-reduce workgroup, --gemm-tile and --pipeline-depth are reported; bad values are usage or option errors', () => {
  const r = cli(
    'bench',
    '--model',
    tinyDir(),
    '--prompt-tokens',
    '4',
    '--new-tokens',
    '2',
    '--repeat',
    '1',
    '--no-profile',
    '--wait',
    'spin',
    '--fuse-ln',
    'on',
    '--gemv-reduce',
    'workgroup',
    '--gemm-tile',
    '32,8,2,4,16',
    '--gemv-max-m',
    '3',
    '--pipeline-depth',
    '3',
    '--json',
  );
  assert.is(r.code, 0, r.err);
  assert.is(JSON.parse(r.out).host_wait, 'spin');
  assert.is(JSON.parse(r.out).fuse_ln, true);
  assert.is(JSON.parse(r.out).gemv_reduce, 'workgroup');
  assert.equal(JSON.parse(r.out).gemm_tile, { tx: 32, ty: 8, tm: 2, tn: 4, bk: 16 });
  assert.equal(JSON.parse(r.out).gemv_max_m, { kn: 3, nk: 3 });
  assert.is(JSON.parse(r.out).pipeline_depth, 3);
  const badDepth = cli('bench', '--model', tinyDir(), '--pipeline-depth', '0');
  assert.is(badDepth.code, 2);
  assert.match(badDepth.err, /--pipeline-depth must be an integer in \[1, 16\], got "0"/);
  const badMax = cli('bench', '--model', tinyDir(), '--gemv-max-m=1.5');
  assert.is(badMax.code, 2);
  assert.match(badMax.err, /--gemv-max-m must be an integer >= 0, got "1.5"/);
  const shortTile = cli('bench', '--model', tinyDir(), '--gemm-tile', '16,16');
  assert.is(shortTile.code, 2);
  assert.match(shortTile.err, /--gemm-tile takes 5 comma-separated integers TX,TY,TM,TN,BK, got "16,16"/);
  const badTile = cli('bench', '--model', tinyDir(), '--gemm-tile', '16,16,9,4,16');
  assert.is(badTile.code, 1);
  assert.match(badTile.err, /gemmTile .*tm must be an integer in \[1, 8\]/);
  const bad = cli('bench', '--model', tinyDir(), '--wait', 'nap');
  assert.is(bad.code, 2);
  assert.match(bad.err, /--wait must be auto, sleep or spin, got "nap"/);
  for (const wg of ['48', '512', '-1']) {
    const badWg = cli('bench', '--model', tinyDir(), `--attention-wg=${wg}`);
    assert.is(badWg.code, 2, wg);
    assert.match(badWg.err, /--attention-wg must be/, wg);
  }
  for (const [flag, value, msg] of [
    ['--fuse-ln', 'yes', /--fuse-ln must be auto, on or off, got "yes"/],
    ['--gemv-reduce', 'atomic', /--gemv-reduce must be auto, split or workgroup, got "atomic"/],
    ['--attention-blocks', 'maybe', /--attention-blocks must be auto, on or off, got "maybe"/],
    ['--matmul-subgroups', 'yes', /--matmul-subgroups must be auto, on or off, got "yes"/],
    ['--attention-subgroups', '1', /--attention-subgroups must be auto, on or off, got "1"/],
  ] as const) {
    const badMode = cli('bench', '--model', tinyDir(), flag, value);
    assert.is(badMode.code, 2, flag);
    assert.match(badMode.err, msg, flag);
  }
});

test('bench --attention-subgroups / --attention-blocks / --matmul-subgroups: on lavapipe a 64-token prompt takes the subgroup attention and GEMM and decodes through subgroups; without the subgroup attention the blocks one; with all off token pairs, gemv_kn_cols and one invocation per head (attention_prompt, matmul_prompt, attention_decode)', () => {
  const run = (sg: string, blocks: string, mm: string) => {
    const r = cli(
      'bench',
      '--model',
      tinyDir(),
      '--prompt-tokens',
      '64',
      '--new-tokens',
      '2',
      '--repeat',
      '1',
      '--no-profile',
      '--attention-subgroups',
      sg,
      '--attention-blocks',
      blocks,
      '--matmul-subgroups',
      mm,
      '--json',
    );
    assert.is(r.code, 0, r.err);
    const j = JSON.parse(r.out);
    return [j.attention_prompt, j.matmul_prompt, j.attention_decode];
  };
  assert.equal(run('auto', 'auto', 'auto'), ['subgroup', 'subgroups', 'subgroup']); // lavapipe is a CPU adapter with 8-lane subgroups
  assert.equal(run('off', 'auto', 'auto'), ['blocks', 'subgroups', 'lanes']);
  assert.equal(run('off', 'off', 'off'), ['pairs', 'cols', 'lanes']);
});

test('bench profiles a batch whose full-window cache would not fit one binding (sized like the run)', () => {
  // 33 rows x 16384 slots x 64 x 4 B = 138 MB per cache layer, over lavapipe's 128 MiB binding
  // limit; the measured generation only needs 2 + 2 slots, and the profiled step must too.
  const cfgPath = join(tmp, 'long-window.json');
  writeFileSync(
    cfgPath,
    JSON.stringify({
      n_layer: 1,
      n_embd: 64,
      n_head: 2,
      vocab_size: 512,
      n_positions: 16384,
      bos_token_id: 511,
      eos_token_id: 511,
    }),
  );
  const r = cli(
    'bench',
    '--model',
    `random:${cfgPath}`,
    '--batch',
    '33',
    '--prompt-tokens',
    '2',
    '--new-tokens',
    '2',
    '--repeat',
    '1',
    '--json',
  );
  assert.is(r.code, 0, r.err);
  const x = JSON.parse(r.out).results[0];
  assert.is(x.batch, 33);
  assert.ok(Array.isArray(x.kernels) && x.kernels.length > 0, JSON.stringify(x));
});

test('bench --new-tokens 1 measures the prefill alone, so a full-window prompt (1024 tokens) can be timed', () => {
  const r = cli(
    'bench',
    '--model',
    tinyDir(),
    '--prompt-tokens',
    '1024',
    '--new-tokens',
    '1',
    '--repeat',
    '1',
    '--json',
  );
  assert.is(r.code, 0, r.err);
  const j = JSON.parse(r.out);
  const x = j.results[0];
  assert.ok(x.prefill_ms > 0 && x.first_token_ms >= x.prefill_ms, JSON.stringify(x));
  for (const k of [
    'decode_ms_per_token',
    'decode_ms_per_token_p90',
    'tokens_per_s',
    'dispatches_per_token',
    'submits_per_token',
  ])
    assert.is(x[k], null, k);
  assert.is(x.readback_bytes_per_token, 4);
  assert.match(x.decode_note, /no decode steps/);
  assert.ok(Array.isArray(x.kernels) && x.kernels.length > 0, 'a decode step is still profiled');
  assert.match(
    cli('bench', '--model', tinyDir(), '--prompt-tokens', '1024', '--new-tokens', '1', '--repeat', '1').out,
    /prefill only/,
  );
  // 1024 + 2 - 1 tokens would pass through the model: more than its 1024 positions.
  const over = cli('bench', '--model', tinyDir(), '--prompt-tokens', '1024', '--new-tokens', '2', '--repeat', '1');
  assert.is(over.code, 1);
  assert.match(
    over.err,
    /1025 tokens go through the model \(prompt-tokens 1024 \+ new-tokens 2 - 1, the last new token is not fed back\), over its context window of 1024/,
  );
  assert.match(over.err, /^error: InvalidOptionError: /m);
  assert.not.match(over.err, /\n\s+at /, 'a named error, no stack trace');
  assert.not.match(over.err, /upload:/, 'refused before any weight upload');
  assert.is(cli('bench', '--model', tinyDir(), '--new-tokens', '0').code, 2);
});

test('bench: a batch size that fails (here its cache is over the binding limit) is reported beside the others; exit 1', () => {
  // 1 layer, C 256: a cache layer of B rows x 1002 slots is B x 1.03 MB, over lavapipe's 128 MiB at B = 131.
  const cfgPath = join(tmp, 'wide.json');
  writeFileSync(
    cfgPath,
    JSON.stringify({
      n_layer: 1,
      n_embd: 256,
      n_head: 4,
      vocab_size: 512,
      n_positions: 2048,
      bos_token_id: 511,
      eos_token_id: 511,
    }),
  );
  const r = cli(
    'bench',
    '--model',
    `random:${cfgPath}`,
    '--batch',
    '1,131',
    '--prompt-tokens',
    '1000',
    '--new-tokens',
    '2',
    '--repeat',
    '1',
    '--no-profile',
    '--json',
  );
  assert.is(r.code, 1, r.err);
  const j = JSON.parse(r.out);
  assert.is(j.results.length, 2);
  assert.is(j.results[0].batch, 1);
  assert.type(j.results[0].decode_ms_per_token, 'number');
  assert.is(j.results[1].batch, 131);
  assert.match(
    j.results[1].error,
    /OutOfMemoryError: a KV cache layer of 131 rows x 1002 slots x 256 is \d+ bytes, over the adapter's maxStorageBufferBindingSize/,
  );
  assert.match(r.err, /error: bench: batch 131 failed \(OutOfMemoryError/);
  const human = cli(
    'bench',
    '--model',
    `random:${cfgPath}`,
    '--batch',
    '1,131',
    '--prompt-tokens',
    '1000',
    '--new-tokens',
    '2',
    '--repeat',
    '1',
    '--no-profile',
  );
  assert.is(human.code, 1);
  assert.match(human.out, /\n\s+131 {2}failed: OutOfMemoryError: a KV cache layer/);
});

test.run();
