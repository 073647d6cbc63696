/** The command line: help, usage errors (exit 2), errors (exit 1), and each command's output. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fixturesDir, REPO_ROOT, tinyDir, tinyReference } from './fixtures-util.js';
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

const SUBCOMMANDS = ['info', 'generate', 'logits', 'score', 'sample', 'beam', 'bench'];

test('--help on every subcommand lists its flags with defaults; exit 0', () => {
  for (const c of SUBCOMMANDS) {
    const r = cli(c, '--help');
    assert.is(r.code, 0, `${c}: ${r.err}`);
    assert.match(r.out, /--json/);
  }
  assert.match(cli('generate', '--help').out, /--temperature VALUE .*\(default 1\)/);
  assert.is(cli('--help').code, 0);
});

test('unknown flags, missing values, bad numbers -> one line naming the problem, exit 2', () => {
  for (const [args, msg] of [
    [['generate', '--modle', 'x'], /^gpt2-webgpu generate: unknown option --modle \(did you mean --model\?\)$/],
    [['generate', '--model'], /^gpt2-webgpu generate: --model needs a value/],
    [['generate', '--json=1'], /^gpt2-webgpu generate: --json takes no value, got "1"$/],
    [['generate', 'stray'], /^gpt2-webgpu generate: Unexpected argument 'stray'/],
    [
      ['frobnicate'],
      /^gpt2-webgpu: unknown command "frobnicate" \(commands: info, generate, logits, score, sample, beam, bench, serve\)$/,
    ],
    [['genrate', '--model', 'x'], /^gpt2-webgpu: unknown command "genrate" \(did you mean generate\?\)$/],
    [['sample', '--temp', '0'], /^gpt2-webgpu sample: unknown option --temp \(did you mean --temperature\?\)$/],
    [
      ['generate', '--stop-strings', 'x'],
      /^gpt2-webgpu generate: unknown option --stop-strings \(did you mean --stop\?\)$/,
    ],
    [
      ['beam', '--num-return-sequences', '2'],
      /unknown option --num-return-sequences \(did you mean --num-sequences\?\)$/,
    ],
    [['beam', '--xyzzy'], /^gpt2-webgpu beam: unknown option --xyzzy \(gpt2-webgpu beam --help lists the options\)$/],
    [
      ['info', '--constructor'],
      /^gpt2-webgpu info: unknown option --constructor \(gpt2-webgpu info --help lists the options\)$/,
    ],
    [['info', '--', '--json'], /^gpt2-webgpu info: Unexpected argument '--json'/],
    [
      ['generate', '--model', 'random:gpt2', '--ids', '1,2', '--temperature', 'hot'],
      /^gpt2-webgpu generate: --temperature must be a number, got "hot"$/,
    ],
    [
      ['generate', '--model', 'random:gpt2', '--ids', '1,x'],
      /^gpt2-webgpu generate: --ids must be comma-separated non-negative integers, got "1,x"$/,
    ],
    [['bench', '--batch', '0'], /^gpt2-webgpu bench: --batch must be an integer in \[1, 1024\], got "0"$/],
    [
      ['generate', '--model', 'random:gpt2', '--ids', '1', '--kv-dtype', 'bf16'],
      /^gpt2-webgpu generate: --kv-dtype must be one of f32, f16, got "bf16"$/,
    ],
    [['bench', '--kv-dtype', 'f8'], /^gpt2-webgpu bench: --kv-dtype must be one of f32, f16, got "f8"$/],
  ] as const) {
    const r = cli(...args);
    assert.is(r.code, 2, `${args.join(' ')}: exit ${r.code}, stderr ${r.err}`);
    assert.is(r.err.trimEnd().split('\n').length, 1, `one line, not the help: ${r.err}`);
    assert.match(r.err.trimEnd(), msg);
    assert.is(r.out, '');
  }
});

test('negative numbers are values (--temperature -1), refused by the rule they break, before the model is looked at', () => {
  for (const args of [['--temperature', '-1'], ['--temperature=-1']]) {
    const r = cli('generate', '--model', join(tmp, 'nope'), '--ids', '1', ...args);
    assert.is(r.code, 2, r.err);
    assert.match(
      r.err,
      /^gpt2-webgpu generate: --temperature must be a finite number >= 0 \(0 = greedy\), got "-1"\n$/,
    );
  }
  const minP = cli('sample', '--logits', join(tmp, 'nope.f32'), '--min-p', '-0.5');
  assert.match(minP.err, /--min-p must be in \[0, 1\] \(0 = off\), got "-0.5"/);
  assert.is(
    cli('generate', '--model', 'x', '--ids', '1', '--max-new-tokens', '-3').err.trim(),
    'gpt2-webgpu generate: --max-new-tokens must be an integer in [0, 1000000], got "-3"',
  );
  // where a negative value is allowed, it is taken
  const f = join(tmp, 'neg.f32');
  writeFileSync(f, new Uint8Array(Float32Array.from([0, 0, 0]).buffer));
  const ok = cli(
    'sample',
    '--logits',
    f,
    '--count',
    '10',
    '--freq-penalty',
    '-1',
    '--presence-penalty',
    '-0.5',
    '--seed',
    '1',
  );
  assert.is(ok.code, 0, ok.err);
});

test('sampling and generation flags are checked before the model is downloaded or loaded', () => {
  const missing = join(tmp, 'nope'); // loading it would fail with a WeightsFormatError
  for (const [cmd, args, msg] of [
    ['generate', ['--top-p', '2'], /--top-p must be in \[0, 1\] \(0 or 1 = off\), got "2"/],
    ['generate', ['--top-k', '1.5'], /--top-k must be an integer >= 0 \(0 = off\), got "1.5"/],
    ['generate', ['--seed', '-1'], /--seed must be an integer in \[0, 2\^53\), got "-1"/],
    ['generate', ['--num-sequences', '0'], /--num-sequences must be an integer in \[1, 1024\], got "0"/],
    ['generate', ['--stop', ''], /--stop must not be empty/],
    ['generate', ['--weights-seed', 'x'], /--weights-seed must be an integer >= 0, got "x"/],
    ['beam', ['--num-beams', '2', '--num-sequences', '3'], /--num-sequences \(3\) must be <= --num-beams \(2\)/],
    ['beam', ['--num-beams', '0'], /--num-beams must be an integer in \[1, 256\], got "0"/],
  ] as const) {
    const r = cli(cmd, '--model', missing, '--ids', '1', ...args);
    assert.is(r.code, 2, `${args.join(' ')}: ${r.err}`);
    assert.match(r.err, msg);
    assert.not.match(r.err, /WeightsFormatError|no such file/);
  }
});

test('--dtype outside f32, f16, q8, q4 is a one-line usage error naming them (exit 2), before the model is loaded', () => {
  const missing = join(tmp, 'nope'); // loading it would fail with a WeightsFormatError
  for (const cmd of [['generate', '--ids', '1'], ['bench']]) {
    const r = cli(cmd[0]!, '--model', missing, ...cmd.slice(1), '--dtype', 'q3');
    assert.is(r.code, 2, r.err);
    assert.match(r.err, new RegExp(`^gpt2-webgpu ${cmd[0]}: --dtype must be one of f32, f16, q8, q4, got "q3"\n$`));
  }
  const both = cli('generate', '--model', missing, '--ids', '1', '--f16', '--dtype', 'q8');
  assert.is(both.code, 2, both.err);
  assert.match(both.err, /--f16 means --dtype f16, but --dtype q8 was given/);
});

test('errors exit 1 with a named error', () => {
  const r = cli('generate', '--model', join(tmp, 'nope'), '--ids', '1');
  assert.is(r.code, 1, r.err);
  assert.match(r.err, /error: \w+Error: /);
  const r2 = cli('generate', '--model', tinyDir(), '--ids', '60000', '--max-new-tokens', '1');
  assert.is(r2.code, 1, r2.err);
  assert.match(r2.err, /error: PromptError: /);
  assert.not.match(r2.err, /\n\s+at /);
});

// One ordinary run, looked at by the next two tests.
let plainRun: ReturnType<typeof cli> | undefined;
function plain(): ReturnType<typeof cli> {
  plainRun ??= cli('generate', '--model', tinyDir(), '--ids', '464,3290', '--max-new-tokens', '3', '--seed', '1');
  assert.is(plainRun.code, 0, plainRun.err);
  return plainRun;
}

test("a run prints nothing but the engine's own output: no Dawn 'Warning:' lines", () => {
  const r = plain();
  assert.not.match(r.err + r.out, /Warning:/);
  assert.ok(r.out.length > 0);
  // stderr: the load's progress, then the run's statistics line, nothing else
  for (const line of r.err.trimEnd().split('\n'))
    assert.match(line, /^(compile \(GPU pipelines\)|upload \(weights to the GPU\)): |^seed 1; first token /, line);
});

test('load progress names its phases, pipeline compilation included (it comes before the upload)', () => {
  const lines = plain().err.split('\n');
  const at = (re: RegExp) => lines.findIndex((l) => re.test(l));
  const building = at(/^compile \(GPU pipelines\): building$/);
  const built = at(/^compile \(GPU pipelines\): done in \d+\.\d s$/);
  const upload = at(/^upload \(weights to the GPU\): 100% \(14\.1 of 14\.1 MB\)$/);
  assert.ok(building >= 0 && built > building && upload > built, plain().err);
});

test('generate | head -c 20: the closed pipe ends the run quietly, exit 0', () => {
  const r = spawnSync(
    'bash',
    [
      '-o',
      'pipefail',
      '-c',
      `"${process.execPath}" "${BIN}" generate --model "${tinyDir()}" --prompt "Hello there" --max-new-tokens 200 --no-stop-at-eos --seed 1 | head -c 20`,
    ],
    {
      encoding: 'utf8',
      timeout: 120_000,
      env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' },
    },
  );
  assert.is(r.stdout.length, 20);
  assert.not.match(r.stderr, /EPIPE|\n\s+at |Error/);
  assert.is(r.status, 0, r.stderr);
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

test('generate: --suppress-tokens takes the runner-up, --stop-token-ids ends with "stop", --exclude-stop drops its text', () => {
  const p = ref.prompts[0]!;
  const P = p.ids.length;
  const run = (...extra: string[]) => {
    const r = cli('generate', '--model', tinyDir(), '--ids', p.ids.join(','), '--temperature', '0', '--json', ...extra);
    assert.is(r.code, 0, r.err);
    return JSON.parse(r.out).sequences[0] as { tokens: number[]; text: string; finish_reason: string };
  };
  // Banning the greedy first token: the first token is HF's second-best of that step.
  const [top5] = p.greedy48_step_top5[0]!;
  assert.is(top5[0], p.greedy48[P]);
  const banned = run('--max-new-tokens', '1', '--suppress-tokens', `${top5[0]},7`);
  assert.equal(banned.tokens, [top5[1]]);
  // A stop token id at greedy step 3: four tokens, finish reason stop; --exclude-stop leaves its text out.
  const stopId = p.greedy48[P + 3]!;
  assert.ok(!p.greedy48.slice(P, P + 3).includes(stopId), 'the stop id first occurs at step 3');
  const kept = run('--max-new-tokens', '10', '--stop-token-ids', String(stopId));
  assert.equal(kept.tokens, p.greedy48.slice(P, P + 4));
  assert.is(kept.finish_reason, 'stop');
  assert.is(kept.text, gpt2Tokenizer.decode(p.greedy48.slice(P, P + 4)));
  const cut = run('--max-new-tokens', '10', '--stop-token-ids', String(stopId), '--exclude-stop');
  assert.is(cut.text, gpt2Tokenizer.decode(p.greedy48.slice(P, P + 3)));
  // Malformed ban lists are usage errors before anything loads.
  const bad = cli('generate', '--model', join(tmp, 'nope'), '--ids', '1', '--suppress-tokens', '1,x');
  assert.is(bad.code, 2);
  assert.match(bad.err, /--suppress-tokens must be comma-separated non-negative integers, got "1,x"/);
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
  // {id: count} for the ids drawn only: top-k 2 keeps ids 2 and 3
  assert.equal(Object.keys(j.counts), ['2', '3']);
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

test('"how many outputs" is --num-sequences in every command; beam takes its old --num-return with a note', () => {
  for (const c of ['generate', 'beam']) {
    const help = cli(c, '--help').out;
    assert.match(help, /--num-sequences VALUE/, c);
    assert.not.match(help, /num-return/, c);
  }
  const old = cli('beam', '--model', join(tmp, 'nope'), '--ids', '1', '--num-beams', '1', '--num-return', '2');
  assert.is(old.code, 2);
  assert.match(old.err, /^note: --num-return is deprecated, use --num-sequences\n/);
  assert.match(old.err, /--num-sequences \(2\) must be <= --num-beams \(1\)/);
  const both = cli('beam', '--model', 'x', '--ids', '1', '--num-return', '2', '--num-sequences', '2');
  assert.is(both.code, 2);
  assert.match(both.err, /give --num-sequences alone \(--num-return is its old name\)/);
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
    '--num-sequences',
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
  // lavapipe is a CPU adapter with 8-lane subgroups: the default wait sleeps in slices, and the
  // report carries its device profile, every kernel choice (layer norms stay dispatches, the GEMV
  // at every M, one step in flight)
  assert.is(j.host_wait, 'sleep');
  assert.is(j.profile.name, 'cpu-subgroups');
  assert.is(j.profile_overrides, null);
  assert.equal(
    [j.profile.matmul.gemv, j.profile.matmul.fuseLn, j.profile.matmul.gemvMaxM, j.profile.attention.decode],
    ['cols', false, null, 'subgroup'],
  );
  assert.is(j.pipeline_depth, 1); // and decode one step at a time
  assert.is(j.attention_decode, 'subgroup'); // a 4-invocation subgroup per (token, head)
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

test("bench --wait spin, --profile (fields merged over the adapter's, or a named profile) and --pipeline-depth are reported; bad values are usage or option errors", () => {
  const file = (name: string, o: unknown) => {
    const f = join(tmp, `${name}.json`);
    writeFileSync(f, typeof o === 'string' ? o : JSON.stringify(o));
    return f;
  };
  const gpu = { name: 'gpu', matmul: { gemmTile: { tx: 32, ty: 8, tm: 2, tn: 4, bk: 16 }, gemvMaxM: 3 } };
  const args = [
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
  ];
  const r = cli(...args, '--wait', 'spin', '--profile', file('gpu', gpu), '--pipeline-depth', '3', '--json');
  assert.is(r.code, 0, r.err);
  const j = JSON.parse(r.out);
  assert.is(j.host_wait, 'spin');
  assert.is(j.profile.name, 'gpu'); // the GPU profile forced on lavapipe
  assert.equal(j.profile_overrides, gpu);
  assert.equal(j.profile.matmul.gemmTile, { tx: 32, ty: 8, tm: 2, tn: 4, bk: 16 });
  assert.equal([j.profile.matmul.gemvMaxM, j.profile.matmul.fuseLn, j.profile.matmul.splitK], [3, true, 'workgroup']);
  assert.equal([j.matmul_prompt, j.attention_decode], ['gemm', 'wide']); // 4 rows > gemvMaxM 3
  assert.is(j.pipeline_depth, 3);
  // the text report names the profile and prints its fields
  const text = cli(...args, '--profile', file('gpu', gpu));
  assert.is(text.code, 0, text.err);
  assert.match(
    text.out,
    /profile gpu with \{"name":"gpu",.*\} merged over it:\n {2}matmul\.gemv=threads matmul\.splitK=workgroup .*matmul\.gemvMaxM=3/,
  );
  assert.match(text.out, /\n {2}attention\.decode=wide attention\.prompt=tiled /);
  const badDepth = cli('bench', '--model', tinyDir(), '--pipeline-depth', '0');
  assert.is(badDepth.code, 2);
  assert.match(badDepth.err, /--pipeline-depth must be an integer in \[1, 16\], got "0"/);
  const bad = cli('bench', '--model', tinyDir(), '--wait', 'nap');
  assert.is(bad.code, 2);
  assert.match(bad.err, /--wait must be auto, sleep or spin, got "nap"/);
  // the per-knob flags are gone: a profile file says it
  for (const flag of [
    '--fuse-ln',
    '--gemv-reduce',
    '--gemm-tile',
    '--gemv-max-m',
    '--attention-wg',
    '--matmul-subgroups',
  ]) {
    const gone = cli('bench', '--model', tinyDir(), flag, 'on');
    assert.is(gone.code, 2, flag);
    assert.match(gone.err, /unknown option/i, flag);
  }
  for (const [name, content, msg] of [
    [
      'tile',
      { matmul: { gemmTile: { tx: 16, ty: 16, tm: 9, tn: 4, bk: 16 } } },
      /experimental\.profile\.matmul\.gemmTile .*tm must be an integer in \[1, 8\]/,
    ],
    ['typo', { atention: {} }, /experimental\.profile: unknown field "atention"/],
    ['prompt', { attention: { prompt: 'flash' } }, /experimental\.profile\.attention\.prompt must be/],
    ['text', 'not json', /--profile .*text\.json: not JSON/],
  ] as const) {
    const r2 = cli('bench', '--model', tinyDir(), '--profile', file(name, content));
    assert.is(r2.code, 1, name);
    assert.match(r2.err, /InvalidOptionError/, name);
    assert.match(r2.err, msg, name);
  }
  const missing = cli('bench', '--model', tinyDir(), '--profile', join(tmp, 'none.json'));
  assert.is(missing.code, 1);
  assert.match(missing.err, /--profile .*none\.json: cannot read it \(ENOENT\)/);
});

test('bench --profile picks the kernels: on lavapipe a 64-token prompt takes the subgroup attention and GEMM and decodes with a subgroup per head; with prompt blocks and decode lanes those; the CPU profile without subgroups token pairs, gemv_kn_cols and one invocation per head (attention_prompt, matmul_prompt, attention_decode)', () => {
  const run = (name: string, profile: object) => {
    const f = join(tmp, `kernels-${name}.json`);
    writeFileSync(f, JSON.stringify(profile));
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
      '--profile',
      f,
      '--json',
    );
    assert.is(r.code, 0, r.err);
    const j = JSON.parse(r.out);
    return [j.attention_prompt, j.matmul_prompt, j.attention_decode];
  };
  assert.equal(run('own', {}), ['subgroup', 'subgroups', 'subgroup']); // lavapipe is a CPU adapter with 8-lane subgroups
  assert.equal(run('blocks', { attention: { decode: 'lanes', prompt: 'blocks' } }), ['blocks', 'subgroups', 'lanes']);
  assert.equal(run('cpu', { name: 'cpu', attention: { prompt: 'pairs' } }), ['pairs', 'cols', 'lanes']);
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
  assert.is(j.kv_dtype, 'f32');
  assert.is(j.results[0].kv_cache_bytes, 2 * 1 * 1 * 1002 * 256 * 4, 'K and V, 1 layer, 1 row, 1002 slots of 256 f32');
  assert.is(j.results[1].batch, 131);
  assert.match(
    j.results[1].error,
    /OutOfMemoryError: a KV cache layer of 131 rows x 1002 slots x 256 f32 is \d+ bytes, over the adapter's maxStorageBufferBindingSize/,
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

test('score --ids --json: per-token log-probs of the trained fixture within 1e-4 of transformers; one input only', () => {
  const dir = join(fixturesDir(), 'trained-gpt2-fortunes');
  const ref = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as {
    prompts: Array<{ ids: number[] }>;
    scoring: number[][];
  };
  const r = cli('score', '--model', dir, '--ids', ref.prompts[1]!.ids.join(','), '--top', '2', '--json');
  assert.is(r.code, 0, r.err);
  const j = JSON.parse(r.out) as {
    tokens: Array<{ logprob: number; top: unknown[] }>;
    count: number;
    perplexity: number;
  };
  assert.is(j.count, ref.scoring[1]!.length);
  j.tokens.forEach((t, i) => assert.ok(Math.abs(t.logprob - ref.scoring[1]![i]!) < 1e-4, `token ${i}`));
  assert.ok(j.tokens.every((t) => t.top.length === 2));
  const mean = ref.scoring[1]!.reduce((a, b) => a + b, 0) / ref.scoring[1]!.length;
  assert.ok(Math.abs(j.perplexity / Math.exp(-mean) - 1) < 1e-4, 'perplexity = exp(-mean log-prob)');
  const both = cli('score', '--model', dir, '--ids', '1,2', '--text', 'x');
  assert.is(both.code, 2);
  assert.match(both.err, /give exactly one of --text, --file, --ids/);
});

test('generate --logprobs N --json: each token with its log-probs, equal to score over the same ids (trained fixture); refused without --json and past 20', () => {
  const dir = join(fixturesDir(), 'trained-gpt2-fortunes');
  const ref = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as { prompts: Array<{ ids: number[] }> };
  const prompt = ref.prompts[1]!.ids;
  const args = ['--model', dir, '--ids', prompt.join(','), '--temperature', '0', '--max-new-tokens', '6'];
  const r = cli('generate', ...args, '--no-stop-at-eos', '--logprobs', '2', '--json');
  assert.is(r.code, 0, r.err);
  type Lp = { id: number; text: string; logprob: number; processed_logprob: number; greedy: boolean };
  const seq = (JSON.parse(r.out) as { sequences: Array<{ tokens: number[]; logprobs: Array<Lp & { top: Lp[] }> }> })
    .sequences[0]!;
  assert.is(seq.logprobs.length, 6);
  const tok = gpt2Tokenizer;
  // the same tokens scored by `score` (the prompt's last position predicts the first new token)
  const sc = cli('score', '--model', dir, '--ids', [...prompt, ...seq.tokens].join(','), '--json');
  assert.is(sc.code, 0, sc.err);
  const scored = (JSON.parse(sc.out) as { tokens: Array<{ id: number; logprob: number }> }).tokens.slice(-6);
  seq.logprobs.forEach((lp, i) => {
    const what = `token ${i}`;
    assert.is(lp.id, seq.tokens[i], what);
    assert.is(lp.text, tok.decode([lp.id]), what);
    assert.is(scored[i]!.id, lp.id, what);
    assert.ok(
      Math.abs(lp.logprob - scored[i]!.logprob) < 1e-4,
      `${what}: ${lp.logprob} against score's ${scored[i]!.logprob}`,
    );
    // greedy with nothing processing the logits: drawn from the raw distribution, its argmax
    assert.ok(Math.abs(lp.processed_logprob - lp.logprob) < 1e-4, what);
    assert.ok(lp.greedy, what);
    assert.is(lp.top.length, 2, what);
    assert.is(lp.top[0]!.id, lp.id, `${what}: the best alternative is the greedy token`);
    assert.ok(lp.top[0]!.logprob >= lp.top[1]!.logprob, what);
    assert.is(lp.top[1]!.text, tok.decode([lp.top[1]!.id]), what);
  });
  const plainRun = cli('generate', ...args, '--logprobs', '0');
  assert.is(plainRun.code, 2);
  assert.match(plainRun.err, /--logprobs needs --json/);
  const many = cli('generate', ...args, '--logprobs', '21', '--json');
  assert.is(many.code, 2);
  assert.match(many.err, /--logprobs/);
});

test.run();
