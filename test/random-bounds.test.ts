/**
 * Random checkpoints from absurd configs (issue 28, item 14): config fields are bounded to sane
 * integers and a random model's total size is computed and refused before anything is allocated
 * (vocab 2^53-1 hung the CPU, 2^32+10 kept uploading, n_layer 100000 grew to 1.55 GB).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OutOfMemoryError, WeightsFormatError } from '../src/errors.js';
import { CONFIG_LIMITS, KNOWN_MODELS } from '../src/engine/config.js';
import { MAX_RANDOM_MODEL_BYTES, randomCheckpoint } from '../src/engine/random.js';
import { resolveSource } from '../src/node-sources.js';
import { smallConfig } from './fixtures-util.js';

const dir = mkdtempSync(join(tmpdir(), 'gpt2-random-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

/** fn throws `cls` matching `pattern` within `ms`. */
function throwsFast(fn: () => unknown, cls: new (...a: never[]) => Error, pattern: RegExp, ms = 500): void {
  const t0 = Date.now();
  try {
    fn();
  } catch (e) {
    assert.ok(Date.now() - t0 < ms, `took ${Date.now() - t0} ms`);
    assert.instance(e, cls, `${(e as Error).name}: ${(e as Error).message}`);
    assert.match((e as Error).message, pattern);
    return;
  }
  assert.unreachable(`expected a ${cls.name} matching ${pattern}`);
}

test('item 14: config fields past sane integers are refused (vocab 2^53-1, 2^32+10, n_layer 100000, ...)', async () => {
  for (const [key, value] of [
    ['vocab_size', 2 ** 53 - 1],
    ['vocab_size', 2 ** 32 + 10],
    ['n_layer', 100_000],
    ['n_positions', 2 ** 31],
    ['n_embd', 2 ** 20],
  ] as const) {
    const over = { [key]: value, ...(key === 'n_embd' ? { n_head: 2 } : {}) };
    throwsFast(
      () => randomCheckpoint(smallConfig(over)),
      WeightsFormatError,
      new RegExp(`"${key}" is ${value}, past this engine's bound ${CONFIG_LIMITS[key]}`),
    );
  }
  // The same through random:<config.json>.
  const file = join(dir, 'deep.json');
  writeFileSync(file, JSON.stringify(smallConfig({ n_layer: 100_000 })));
  const t0 = Date.now();
  let err: unknown;
  await resolveSource(`random:${file}`).catch((e) => (err = e));
  assert.instance(err, WeightsFormatError);
  assert.match((err as Error).message, /"n_layer" is 100000, past this engine's bound/);
  assert.ok(Date.now() - t0 < 500, `took ${Date.now() - t0} ms`);
  // The published sizes are well inside.
  for (const cfg of Object.values(KNOWN_MODELS))
    for (const k of Object.keys(CONFIG_LIMITS) as Array<keyof typeof CONFIG_LIMITS>)
      assert.ok(cfg[k] <= CONFIG_LIMITS[k]);
});

test('item 14: a random model past MAX_RANDOM_MODEL_BYTES in total is refused before any allocation', () => {
  const big = smallConfig({ vocab_size: 1 << 20, n_embd: 1 << 14, n_head: 16, n_layer: 1 });
  throwsFast(
    () => randomCheckpoint(big),
    OutOfMemoryError,
    new RegExp(
      `random:1L-16384C-16H-V1048576: \\d+ parameters are \\d+ bytes in f32, more than the ${MAX_RANDOM_MODEL_BYTES} bytes a random model may have`,
    ),
  );
  // gpt2-xl (6.2 GB in f32) is within the bound.
  assert.is(randomCheckpoint('gpt2-xl').config.n_layer, 48);
});

test.run();
