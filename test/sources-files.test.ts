/**
 * Local model files that are not regular files, or too big (issue 28, item 12): a FIFO config.json
 * must not hang, a directory model.safetensors must not give a raw EISDIR, and `sample --logits`
 * must not read /dev/zero until memory runs out. Each is a named error before any read.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { closeSync, constants, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WeightsFormatError } from '../src/errors.js';
import { MAX_CONFIG_BYTES } from '../src/engine/config.js';
import { resolveSource } from '../src/node-sources.js';
import { makeSafetensors, REPO_ROOT, rejectsWith, smallConfig } from './fixtures-util.js';

const cfg = smallConfig();
const root = mkdtempSync(join(tmpdir(), 'gpt2-files-'));
const fifos: string[] = [];
test.after(() => {
  // Unblock anything still opening a FIFO for reading (a regression), so the process can exit.
  for (const f of fifos) {
    try {
      closeSync(openSync(f, constants.O_WRONLY | constants.O_NONBLOCK));
    } catch {
      // no reader waiting
    }
  }
  rmSync(root, { recursive: true, force: true });
});

function mkfifo(path: string): void {
  const r = spawnSync('mkfifo', [path]);
  if (r.status !== 0) throw new Error(`mkfifo ${path} failed: ${r.stderr}`);
  fifos.push(path);
}

/** p, or a failure naming `what` after ms. */
function within<T>(ms: number, p: Promise<T>, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([
    p,
    new Promise<T>((_, rej) => {
      t = setTimeout(() => rej(new Error(`${what}: still running after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

test('item 12: a FIFO config.json, a directory model.safetensors and an oversized config are named errors', async () => {
  const st = (await makeSafetensors(cfg)).bytes;

  const fifoDir = join(root, 'fifo');
  mkdirSync(fifoDir);
  mkfifo(join(fifoDir, 'config.json'));
  writeFileSync(join(fifoDir, 'model.safetensors'), st);
  await within(
    3000,
    rejectsWith(
      resolveSource(fifoDir),
      WeightsFormatError,
      /fifo\/config\.json: cannot read it \(a FIFO \(named pipe\), not a regular file\)/,
    ),
    'a FIFO config.json',
  );
  await within(
    3000,
    rejectsWith(
      resolveSource(`random:${join(fifoDir, 'config.json')}`),
      WeightsFormatError,
      /config\.json: cannot read config for a random model \(a FIFO \(named pipe\), not a regular file\)/,
    ),
    'a FIFO random: config',
  );

  const dirDir = join(root, 'dir');
  mkdirSync(join(dirDir, 'model.safetensors'), { recursive: true });
  writeFileSync(join(dirDir, 'config.json'), JSON.stringify(cfg));
  await rejectsWith(
    resolveSource(dirDir),
    WeightsFormatError,
    /dir\/model\.safetensors: a directory, not a regular file/,
  );

  const bigDir = join(root, 'big');
  mkdirSync(bigDir);
  writeFileSync(join(bigDir, 'config.json'), JSON.stringify(cfg) + ' '.repeat(MAX_CONFIG_BYTES));
  writeFileSync(join(bigDir, 'model.safetensors'), st);
  await rejectsWith(
    resolveSource(bigDir),
    WeightsFormatError,
    new RegExp(`big/config\\.json: cannot read it \\(\\d+ bytes, more than the ${MAX_CONFIG_BYTES} allowed\\)`),
  );
});

test('item 12: sample --logits refuses /dev/zero and a FIFO at once, reading nothing', () => {
  const fifo = join(root, 'logits.fifo');
  mkfifo(fifo);
  for (const [file, kind] of [
    ['/dev/zero', 'a character device'],
    [fifo, 'a FIFO \\(named pipe\\)'],
  ] as const) {
    // Under a 4 GB address-space limit, so a regression fails instead of filling memory.
    const r = spawnSync(
      'sh',
      [
        '-c',
        'ulimit -v 4000000 2>/dev/null; exec "$0" "$@"',
        process.execPath,
        join(REPO_ROOT, 'bin', 'gpt2-webgpu.js'),
        'sample',
        '--logits',
        file,
        '--count',
        '1',
      ],
      {
        encoding: 'utf8',
        timeout: 10_000,
        env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' },
      },
    );
    assert.is(r.status, 1, `${file}: exit ${r.status} ${r.signal ?? ''} ${r.stderr}`);
    assert.match(
      r.stderr,
      new RegExp(`InvalidOptionError: --logits ${file}: cannot read it \\(${kind}, not a regular file\\)`),
    );
  }
});

test.run();
