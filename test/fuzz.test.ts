/**
 * Fuzzing the safetensors reader: 2,000 seeded mutations of a small valid file (bit flips in the
 * length and header, rewritten length fields, structural JSON edits re-serialised with a correct
 * length, truncations and appended bytes, byte insertions/deletions, combinations). Every outcome
 * must be a WeightsFormatError, or a successful parse that an independent check confirms is valid
 * (all tensors readable); never another exception, never a hang. Mutations that keep the file
 * valid (key order, whitespace, metadata text) must parse.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { WeightsFormatError } from '../src/errors.js';
import {
  bytesSource,
  parseSafetensors,
  READABLE_DTYPES,
  readTensorF32,
  SAFETENSORS_DTYPE_BYTES,
  SafetensorsFile,
  serializeSafetensors,
} from '../src/engine/safetensors.js';
import { Rng } from './helpers.js';
import { encodeAs } from './fixtures-util.js';

const CASES = 2000;

function baseFile(): Uint8Array {
  const rng = new Rng(1);
  const f32 = (n: number) => rng.normals(n);
  return serializeSafetensors(
    [
      { name: 'transformer.wte.weight', dtype: 'F32', shape: [5, 4], data: encodeAs(f32(20), 'F32') },
      { name: 'h.0.ln_1.weight', dtype: 'F16', shape: [4], data: encodeAs(f32(4), 'F16') },
      { name: 'empty', dtype: 'F32', shape: [0, 3], data: new Uint8Array(0) },
      { name: 'h.0.attn.c_attn.weight', dtype: 'BF16', shape: [2, 3, 2], data: encodeAs(f32(12), 'BF16') },
      { name: 'scalar', dtype: 'F32', shape: [], data: encodeAs(f32(1), 'F32') },
    ],
    { format: 'pt' },
  );
}

interface Parts {
  header: Record<string, unknown>;
  data: Uint8Array;
}
function split(b: Uint8Array): Parts {
  const n = Number(new DataView(b.buffer, b.byteOffset).getBigUint64(0, true));
  return { header: JSON.parse(new TextDecoder().decode(b.subarray(8, 8 + n))), data: b.subarray(8 + n) };
}
function join(text: string, data: Uint8Array, len?: bigint): Uint8Array {
  const hb = new TextEncoder().encode(text);
  const out = new Uint8Array(8 + hb.length + data.length);
  new DataView(out.buffer).setBigUint64(0, len ?? BigInt(hb.length), true);
  out.set(hb, 8);
  out.set(data, 8 + hb.length);
  return out;
}

/** A random "interesting" JSON value for replacing fields. */
function junk(rng: Rng): unknown {
  const opts: unknown[] = [
    -1,
    0,
    1,
    2.5,
    2 ** 53,
    1e300,
    -0,
    'F32',
    'I64',
    'F8_E4M3',
    'X',
    '',
    null,
    true,
    [],
    [1],
    [0, 0],
    [1, -1],
    ['a'],
    {},
    { dtype: 'F32' },
    [2 ** 40, 2 ** 40],
    4,
    8,
    80,
    rng.int(200),
  ];
  return opts[rng.int(opts.length)];
}

type Mutation = { kind: string; bytes: Uint8Array; mustParse: boolean };

function mutate(base: Uint8Array, rng: Rng): Mutation {
  const { header, data } = split(base);
  const names = Object.keys(header).filter((k) => k !== '__metadata__');
  const pick = () => names[rng.int(names.length)]!;
  const kind = rng.int(7);
  switch (kind) {
    case 0: {
      // flip 1-4 bits in the length or header bytes
      const b = base.slice();
      const hdrEnd = 8 + Number(new DataView(b.buffer).getBigUint64(0, true));
      for (let i = 1 + rng.int(4); i > 0; i--) b[rng.int(hdrEnd)]! ^= 1 << rng.int(8);
      return { kind: 'bitflip', bytes: b, mustParse: false };
    }
    case 1: {
      // rewrite the length field
      const b = base.slice();
      const dv = new DataView(b.buffer);
      const n = dv.getBigUint64(0, true);
      const choices = [
        n + 1n,
        n - 1n,
        n + BigInt(rng.int(100)),
        0n,
        1n,
        2n ** 64n - 1n,
        2n ** 63n,
        BigInt(b.length),
        BigInt(b.length - 8),
        BigInt(rng.int(2 ** 31)),
      ];
      dv.setBigUint64(0, BigInt.asUintN(64, choices[rng.int(choices.length)]!), true);
      return { kind: 'length', bytes: b, mustParse: false };
    }
    case 2: {
      // structural JSON edit, re-serialised with the right length
      const h = structuredClone(header) as Record<string, Record<string, unknown>>;
      const e = h[pick()]!;
      const op = rng.int(9);
      if (op === 0) e.dtype = junk(rng);
      else if (op === 1) e.dtype = Object.keys(SAFETENSORS_DTYPE_BYTES)[rng.int(16)];
      else if (op === 2) e.shape = junk(rng);
      else if (op === 3 && Array.isArray(e.shape))
        (e.shape as unknown[])[rng.int((e.shape as unknown[]).length + 1)] = junk(rng);
      else if (op === 4) e.data_offsets = junk(rng);
      else if (op === 5 && Array.isArray(e.data_offsets))
        (e.data_offsets as unknown[])[rng.int(2)] = ((e.data_offsets as number[])[rng.int(2)] ?? 0) + rng.int(9) - 4;
      else if (op === 6) delete h[pick()];
      else if (op === 7) h[pick()] = junk(rng) as Record<string, unknown>;
      else h.__metadata__ = junk(rng) as Record<string, unknown>;
      return { kind: `json${op}`, bytes: join(JSON.stringify(h), data), mustParse: false };
    }
    case 3: {
      // truncate or extend the file
      const cut = rng.int(base.length + 1);
      if (rng.next() < 0.7) return { kind: 'truncate', bytes: base.slice(0, cut), mustParse: cut === base.length };
      const extra = new Uint8Array(1 + rng.int(16)).map(() => rng.int(256));
      const out = new Uint8Array(base.length + extra.length);
      out.set(base);
      out.set(extra, base.length);
      return { kind: 'append', bytes: out, mustParse: false };
    }
    case 4: {
      // insert or delete bytes inside the header text (length kept or fixed)
      const text = new TextDecoder().decode(base.subarray(8, 8 + (base.length - data.length - 8)));
      const at = rng.int(text.length);
      const ins = ['{', '}', '"', ',', ':', '[', ']', '0', '-', 'e', '\\', '\u00ff', ' '][rng.int(13)]!;
      const t2 = rng.next() < 0.5 ? text.slice(0, at) + ins + text.slice(at) : text.slice(0, at) + text.slice(at + 1);
      return {
        kind: 'textedit',
        bytes: join(t2, data, rng.next() < 0.5 ? BigInt(text.length) : undefined),
        mustParse: false,
      };
    }
    case 5: {
      // duplicate key with different offsets: JSON.parse keeps the last; tiling must catch it
      const text = JSON.stringify(header);
      const name = pick();
      const dup = `"${name}":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},`;
      return { kind: 'dupkey', bytes: join('{' + dup + text.slice(1), data), mustParse: false };
    }
    default: {
      // benign: key order, whitespace padding, metadata text
      const keys = Object.keys(header).sort(() => rng.next() - 0.5);
      const h: Record<string, unknown> = {};
      for (const k of keys) h[k] = header[k];
      h.__metadata__ = { format: 'pt', note: 'x'.repeat(rng.int(5)) };
      const text = JSON.stringify(h, null, rng.int(3)) + ' '.repeat(rng.int(9));
      return { kind: 'benign', bytes: join(text, data), mustParse: true };
    }
  }
}

/** Independent validity check of a successful parse, then read every readable tensor. */
async function recheck(f: SafetensorsFile, bytes: Uint8Array): Promise<void> {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  assert.ok(8 + n <= bytes.length && f.dataStart === 8 + n);
  const json = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: number[] }
  >;
  const keys = Object.keys(json).filter((k) => k !== '__metadata__');
  assert.equal([...f.tensors.keys()].sort(), keys.sort());
  const ranges: Array<[number, number]> = [];
  for (const k of keys) {
    const e = json[k]!;
    const t = f.tensors.get(k)!;
    assert.equal(t.shape, e.shape);
    assert.is(t.dtype, e.dtype);
    const numel = e.shape.reduce((a, b) => a * b, 1);
    assert.is(t.begin, f.dataStart + e.data_offsets[0]!);
    assert.is(t.end - t.begin, numel * SAFETENSORS_DTYPE_BYTES[e.dtype]!);
    assert.ok(t.end <= bytes.length);
    if (t.end > t.begin) ranges.push([t.begin, t.end]);
    if ((READABLE_DTYPES as readonly string[]).includes(t.dtype)) assert.is((await readTensorF32(f, k)).length, numel);
  }
  ranges.sort((a, b) => a[0] - b[0]);
  let at = f.dataStart;
  for (const [b, e] of ranges) {
    assert.is(b, at, 'tensors tile the data region');
    at = e;
  }
  assert.is(at, bytes.length, 'data region fully covered');
}

test(`${CASES} seeded mutations: WeightsFormatError or a verified valid parse, never anything else`, async () => {
  const base = baseFile();
  await recheck(await parseSafetensors(bytesSource('base', base)), base);
  const rng = new Rng(20240601);
  const outcomes: Record<string, number> = {};
  for (let i = 0; i < CASES; i++) {
    const m = mutate(base, rng);
    const what = `case ${i} (${m.kind})`;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const hang = new Promise<never>((_, rej) => {
      timer = setTimeout(() => rej(new Error(`${what}: no answer within 5 s`)), 5000);
    });
    let file: SafetensorsFile | undefined;
    try {
      file = await Promise.race([parseSafetensors(bytesSource(`fuzz${i}`, m.bytes)), hang]);
    } catch (e) {
      if (!(e instanceof WeightsFormatError))
        throw new Error(`${what}: threw ${(e as Error).name}: ${(e as Error).message}`, { cause: e });
      assert.ok(e.message.startsWith(`fuzz${i}: `), `${what}: message names the file: ${e.message}`);
      assert.not.ok(m.mustParse, `${what}: a valid file was rejected: ${e.message}`);
    } finally {
      clearTimeout(timer);
    }
    const key = `${m.kind}:${file ? 'ok' : 'error'}`;
    outcomes[key] = (outcomes[key] ?? 0) + 1;
    if (file) await recheck(file, m.bytes);
  }
  // the fuzzer must reach both outcomes, through most mutation kinds
  const ok = Object.entries(outcomes)
    .filter(([k]) => k.endsWith(':ok'))
    .reduce((s, [, v]) => s + v, 0);
  assert.ok(ok > 100 && CASES - ok > 1000, `outcomes ${JSON.stringify(outcomes)}`);
  for (const k of ['bitflip', 'length', 'truncate', 'append', 'textedit', 'dupkey'])
    assert.ok(outcomes[`${k}:error`]! > 0, `${k} produced errors: ${JSON.stringify(outcomes)}`);
});

test.run();
