/**
 * Sharded checkpoints (transformers' save_pretrained past max_shard_size: model.safetensors.index.json
 * plus model-0000N-of-0000M.safetensors): the tiny fixture split in two shards loads from a local
 * directory, the hub (a local server answering like huggingface.co), a URL and picked files, and
 * gives what the single file gives; a hostile or incomplete index is a WeightsFormatError.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DownloadError, WeightsFormatError } from '../src/errors.js';
import { parameterShapes, parseConfig } from '../src/engine/config.js';
import { bytesSource, parseSafetensors, serializeSafetensors, type TensorToWrite } from '../src/engine/safetensors.js';
import { fileSource, urlSource } from '../src/engine/sources-web.js';
import { resolveSource } from '../src/node-sources.js';
import type { Checkpoint } from '../src/engine/checkpoint.js';
import { rejectsWith, tinyCheckpoint, tinyConfigJson, tinySafetensorsBytes, tinyReference } from './fixtures-util.js';
import { engine, tinyModel } from './model-util.js';

const INDEX = 'model.safetensors.index.json';
const made: string[] = [];
test.after(() => {
  for (const d of made) rmSync(d, { recursive: true, force: true });
});

/** The tiny fixture's tensors (as stored: names, dtypes, bytes) split into `n` shards, with its index. */
async function shards(n = 2): Promise<Map<string, Uint8Array>> {
  const bytes = tinySafetensorsBytes();
  const file = await parseSafetensors(bytesSource('model.safetensors', bytes));
  const all: TensorToWrite[] = [...file.tensors.values()].map((t) => ({
    name: t.name,
    dtype: t.dtype as TensorToWrite['dtype'],
    shape: t.shape,
    data: bytes.subarray(t.begin, t.end), // absolute offsets
  }));
  const out = new Map<string, Uint8Array>();
  const weightMap: Record<string, string> = {};
  const per = Math.ceil(all.length / n);
  for (let i = 0; i < n; i++) {
    const name = `model-0000${i + 1}-of-0000${n}.safetensors`;
    const part = all.slice(i * per, (i + 1) * per);
    for (const t of part) weightMap[t.name] = name;
    out.set(name, serializeSafetensors(part));
  }
  out.set(INDEX, new TextEncoder().encode(JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap })));
  out.set('config.json', new TextEncoder().encode(JSON.stringify(tinyConfigJson())));
  return out;
}

/** A directory holding `files`. */
function dirOf(files: Map<string, Uint8Array>): string {
  const d = mkdtempSync(join(tmpdir(), 'gpt2-sharded-'));
  made.push(d);
  for (const [name, b] of files) writeFileSync(join(d, name), b);
  return d;
}

/** Every parameter of `ck` equals the single-file fixture's. */
async function sameTensors(ck: Checkpoint, what: string): Promise<void> {
  const ref = await tinyCheckpoint();
  for (const name of parameterShapes(parseConfig(tinyConfigJson(), 'tiny')).keys()) {
    assert.equal(ck.shape(name), ref.shape(name), `${what}: shape of ${name}`);
    assert.equal(Array.from(await ck.read(name)), Array.from(await ref.read(name)), `${what}: ${name}`);
  }
  assert.equal(
    Array.from(await ck.readRows('wte.weight', 100, 3)),
    Array.from(await ref.readRows('wte.weight', 100, 3)),
  );
}

test('a sharded local directory loads and computes what the single file does', async () => {
  const dir = dirOf(await shards(3));
  await sameTensors(await resolveSource(dir), 'local dir');
  const model = await (await engine()).loadModel(dir);
  try {
    const ids = tinyReference().prompts[0]!.ids;
    const got = await model.logits(ids);
    const want = await (await tinyModel()).logits(ids);
    assert.equal(Array.from(got.data), Array.from(want.data), 'logits bit for bit');
  } finally {
    model.destroy();
  }
});

test('picked files and a URL serve sharded checkpoints too', async () => {
  const files = await shards(2);
  const picked = [...files].map(([name, b]) => new File([b.slice()], name));
  await sameTensors(await fileSource(picked), 'picked files');
  await rejectsWith(
    fileSource(picked.filter((f) => f.name !== 'model-00002-of-00002.safetensors')),
    WeightsFormatError,
    /names model-00002-of-00002.safetensors, which is not among the chosen files/,
  );
  const server = createServer((req, res) => {
    const b = files.get(req.url!.replace(/^\/m\//, ''));
    if (!b) return void res.writeHead(404).end();
    res.writeHead(200, { 'content-length': b.length }).end(b);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  try {
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/m`;
    await sameTensors(await urlSource(url), 'url');
    // Without Range support every shard is held whole: together they get maxBytes, not each.
    const sizes = [...files].filter(([n]) => n.endsWith('.safetensors')).map(([, b]) => b.length);
    await rejectsWith(
      urlSource(url, { maxBytes: Math.max(...sizes) + 100 }),
      DownloadError,
      /model-00002-of-00002.safetensors: .*a whole-file download may hold in memory \(maxBytes\)/,
    );
  } finally {
    server.closeAllConnections();
    server.close();
  }
});

test('the hub: no model.safetensors, the index and its shards are downloaded into the cache (then offline works)', async () => {
  const files = await shards(2);
  const commit = 'b'.repeat(40);
  const asked: string[] = [];
  const gitSha1 = (b: Uint8Array) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');
  const server = createServer((req, res) => {
    const m = /^\/org\/sharded\/resolve\/main\/(.+)$/.exec(decodeURIComponent(req.url!));
    const b = m ? files.get(m[1]!) : undefined;
    asked.push(`${req.method} ${m?.[1]}`);
    if (!b) return void res.writeHead(404, { 'x-error-code': 'EntryNotFound' }).end();
    res.writeHead(200, { 'x-repo-commit': commit, etag: `"${gitSha1(b)}"`, 'content-length': b.length });
    res.end(req.method === 'HEAD' ? undefined : b);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const cacheDir = mkdtempSync(join(tmpdir(), 'gpt2-hfcache-'));
  made.push(cacheDir);
  try {
    const hubUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    await sameTensors(await resolveSource('org/sharded', { hubUrl, cacheDir }), 'hub');
    assert.ok(asked.includes('HEAD model.safetensors'), 'model.safetensors was asked for first');
    for (const f of ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', INDEX])
      assert.ok(asked.includes(`GET ${f}`), `${f} downloaded`);
    const n = asked.length;
    await sameTensors(await resolveSource('org/sharded', { hubUrl, cacheDir, offline: true }), 'offline');
    assert.is(asked.length, n, 'offline: no request');
  } finally {
    server.closeAllConnections();
    server.close();
  }
});

test('a hostile or incomplete index is a WeightsFormatError naming it (no file outside the folder is read)', async () => {
  const base = await shards(2);
  const withIndex = (weightMap: unknown) =>
    new Map([...base, [INDEX, new TextEncoder().encode(JSON.stringify({ weight_map: weightMap }))]]);
  const names = [...base.keys()].filter((k) => k.endsWith('.safetensors'));
  const cases: Array<[Map<string, Uint8Array>, RegExp]> = [
    [withIndex({ 'wte.weight': '../model.safetensors' }), /weight_map\["wte.weight"\] is "..\/model.safetensors"/],
    [withIndex({ 'wte.weight': '/etc/passwd' }), /shards are .safetensors file names beside the index/],
    [withIndex({}), /the weight_map is empty/],
    [withIndex([names[0]]), /not a sharded-checkpoint index/],
    [
      withIndex({ 'wte.weight': 'model-00009-of-00009.safetensors' }),
      /names model-00009-of-00009.safetensors, which is not in/,
    ],
    // Both shards hold wte: a tensor in two shards.
    [
      new Map([...base, [names[1]!, base.get(names[0]!)!]]),
      /tensor "[^"]+" appears twice \(as "transformer\.[^"]+" in .*model-00001-of-00002.safetensors and "transformer\.[^"]+" in .*model-00002-of-00002.safetensors\)/,
    ],
    [
      new Map([...base, [INDEX, new TextEncoder().encode('{ not json')]]),
      /model.safetensors.index.json: not valid JSON/,
    ],
  ];
  for (const [files, re] of cases) await rejectsWith(resolveSource(dirOf(files)), WeightsFormatError, re);
  // One shard missing: the tensors it held are missing.
  const partial = new Map(base);
  partial.set(INDEX, new TextEncoder().encode(JSON.stringify({ weight_map: { 'transformer.wte.weight': names[0] } })));
  await rejectsWith(resolveSource(dirOf(partial)), WeightsFormatError, /missing tensor/);
});

test.run();
