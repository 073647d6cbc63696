import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { WeightsFormatError } from '../src/errors.js';
import {
  ByteSource,
  bytesSource,
  parseSafetensors,
  readRowsF32,
  readTensorF32,
  serializeSafetensors,
} from '../src/engine/safetensors.js';
import { f16BitsToF32, f32ToF16Bits } from '../src/kernels/f16.js';
import { encodeAs, rejectsWith } from './fixtures-util.js';

/** A file from a header (object or raw text) and `dataBytes` data bytes (value i & 255). */
function raw(header: unknown, dataBytes = 0, lengthOverride?: bigint): Uint8Array {
  const text = typeof header === 'string' ? header : JSON.stringify(header);
  const hb = new TextEncoder().encode(text);
  const out = new Uint8Array(8 + hb.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, lengthOverride ?? BigInt(hb.length), true);
  out.set(hb, 8);
  for (let i = 0; i < dataBytes; i++) out[8 + hb.length + i] = i & 255;
  return out;
}

/** Asserts parsing rejects with a WeightsFormatError whose message matches every pattern. */
async function rejects(bytes: Uint8Array | ByteSource, ...patterns: RegExp[]): Promise<void> {
  const src = bytes instanceof Uint8Array ? bytesSource('bad.safetensors', bytes) : bytes;
  try {
    await parseSafetensors(src);
  } catch (e) {
    assert.instance(
      e,
      WeightsFormatError,
      `expected WeightsFormatError, got ${(e as Error).name}: ${(e as Error).message}`,
    );
    const m = (e as Error).message;
    assert.ok(m.startsWith(src.name + ':'), `message names the file: ${m}`);
    for (const p of patterns) assert.match(m, p);
    return;
  }
  assert.unreachable(`parse succeeded; expected an error matching ${patterns.join(' ')}`);
}

const t = (dtype: string, shape: unknown, offs: unknown) => ({ dtype, shape, data_offsets: offs });

test('reads F32, F16 and BF16 tensors, metadata, zero-size tensors and row ranges', async () => {
  const a = Float32Array.from([1, -2.5, 3.25, 0, 1e-3, 65504]);
  const b = Float32Array.from([0.1, -0.2, 0.3, 7]);
  const bfv = Float32Array.from([1.5, -3, 0.09375, 256]); // exactly representable in bf16
  const bytes = serializeSafetensors(
    [
      { name: 'a', dtype: 'F32', shape: [2, 3], data: encodeAs(a, 'F32') },
      { name: 'empty', dtype: 'F32', shape: [0, 4], data: new Uint8Array(0) },
      { name: 'b', dtype: 'F16', shape: [4], data: encodeAs(b, 'F16') },
      { name: 'c', dtype: 'BF16', shape: [2, 2], data: encodeAs(bfv, 'BF16') },
    ],
    { format: 'pt', note: 'x' },
  );
  const f = await parseSafetensors(bytesSource('ok.safetensors', bytes));
  assert.equal(f.metadata, { format: 'pt', note: 'x' });
  assert.equal([...f.tensors.keys()], ['a', 'empty', 'b', 'c']);
  assert.equal(f.tensors.get('a')!.shape, [2, 3]);
  assert.equal(Array.from(await readTensorF32(f, 'a')), Array.from(a));
  assert.equal(
    Array.from(await readTensorF32(f, 'b')),
    Array.from(b, (x) => f16BitsToF32(f32ToF16Bits(x))),
  );
  assert.equal(Array.from(await readTensorF32(f, 'c')), Array.from(bfv));
  assert.is((await readTensorF32(f, 'empty')).length, 0);
  assert.equal(
    Array.from(await readRowsF32(f, 'a', 1, 1)),
    [0, 1e-3, 65504].map((x) => Math.fround(x)),
  );
  await rejectsWith(readRowsF32(f, 'a', 1, 2), WeightsFormatError, /rows \[1, 3\) out of range/);
  await rejectsWith(readTensorF32(f, 'nope'), WeightsFormatError, /no tensor named "nope"/);
});

test('a tensor of a spec dtype that cannot be loaded parses, and reading it names the dtype', async () => {
  const f = await parseSafetensors(bytesSource('i64.safetensors', raw({ idx: t('I64', [2], [0, 16]) }, 16)));
  await rejectsWith(readTensorF32(f, 'idx'), WeightsFormatError, /dtype I64; only F32, F16, BF16/);
});

test('header framing errors: short file, length past the end, too large, not JSON, not an object', async () => {
  await rejects(new Uint8Array(5), /file is 5 bytes, shorter than the 8-byte header length/);
  await rejects(raw({}, 0, 1000n), /header length 1000 passes the end of the file \(file size 10, so at most 2\)/);
  await rejects(raw({}, 0, 2n ** 63n), /header length 9223372036854775808 passes the end/);
  // a 200 MB "file" whose header length claims 150 MB: refused before reading it
  const big: ByteSource = {
    name: 'huge.safetensors',
    size: 200_000_000,
    read: async (o, n) => (o === 0 ? raw({}, 0, 150_000_000n).subarray(0, 8) : new Uint8Array(n)),
  };
  await rejects(big, /header length 150000000 exceeds the 100000000-byte limit/);
  await rejects(raw('[1, 2]'), /must start with '\{' \(0x7b\), found byte 0x5b/);
  await rejects(raw('{"a": 1'), /header is not valid JSON/);
  const bad = raw('{"\xff":1}');
  bad[10] = 0xff; // invalid UTF-8 inside the string
  await rejects(bad, /not valid UTF-8/);
  await rejects(raw('{}  '.slice(0, 1)), /header length 1 is too small/);
});

test('truncated reads from the source are reported as truncation', async () => {
  const bytes = raw({ a: t('F32', [2], [0, 8]) }, 8);
  const src: ByteSource = {
    name: 'cut.safetensors',
    size: bytes.length,
    read: async (o, n) => bytes.subarray(o, o + (o === 0 ? n : Math.min(n, 4))),
  };
  await rejects(src, /truncated: reading the JSON header needs \d+ bytes at offset 8 but got 4/);
});

test('entry errors name the tensor and the values', async () => {
  await rejects(raw({ w: 5 }), /tensor "w": entry must be an object/);
  await rejects(raw({ w: t('Q4_K', [2], [0, 2]) }, 2), /tensor "w": unknown dtype "Q4_K"/);
  await rejects(raw({ w: t('toString', [2], [0, 2]) }, 2), /unknown dtype "toString"/);
  await rejects(
    raw({ w: { shape: [2], data_offsets: [0, 8] } }, 8),
    /tensor "w": dtype must be a string, got undefined/,
  );
  await rejects(
    raw({ w: t('F32', [2, -1], [0, 8]) }, 8),
    /tensor "w": shape must be a list of non-negative integers, got \[2,-1\]/,
  );
  await rejects(raw({ w: t('F32', [2.5], [0, 8]) }, 8), /shape must be a list of non-negative integers, got \[2.5\]/);
  await rejects(raw({ w: t('F32', '2', [0, 8]) }, 8), /shape must be a list/);
  await rejects(
    raw({ w: t('F32', [2], [0]) }, 8),
    /tensor "w": data_offsets must be \[begin, end\] with non-negative integers, got \[0\]/,
  );
  await rejects(raw({ w: t('F32', [2], [8, 0]) }, 8), /data_offsets \[8, 0\] has begin after end/);
  await rejects(
    raw({ w: t('F32', [2], [0, 16]) }, 8),
    /tensor "w": data_offsets \[0, 16\] pass the end of the data region \(8 bytes\)/,
  );
  await rejects(
    raw({ w: t('F32', [3], [0, 8]) }, 8),
    /tensor "w": shape \[3\] x F32 \(4 B\) needs 12 bytes but data_offsets \[0, 8\] hold 8/,
  );
  await rejects(
    raw({ w: t('F32', [2 ** 40, 2 ** 40], [0, 8]) }, 8),
    /needs \d.*bytes but data_offsets \[0, 8\] hold 8/,
  );
  await rejects(raw({ __metadata__: { a: 1 } }), /__metadata__\["a"\] must be a string, got 1/);
  await rejects(raw({ __metadata__: [] }), /__metadata__ must be an object of strings/);
});

test('the data region must be tiled exactly: overlaps, holes and trailing bytes are errors', async () => {
  await rejects(
    raw({ a: t('F32', [2], [0, 8]), b: t('F32', [2], [4, 12]) }, 12),
    /tensors "a" \[0, 8\] and "b" \[4, 12\] overlap/,
  );
  await rejects(
    raw({ a: t('F32', [2], [0, 8]), b: t('F32', [2], [0, 8]) }, 8),
    /"a" \[0, 8\] and "b" \[0, 8\] overlap/,
  );
  await rejects(
    raw({ a: t('F32', [1], [0, 4]), b: t('F32', [1], [8, 12]) }, 12),
    /hole: bytes \[4, 8\) before tensor "b"/,
  );
  await rejects(raw({ a: t('F32', [1], [4, 8]) }, 8), /hole: bytes \[0, 4\) before tensor "a"/);
  await rejects(raw({ a: t('F32', [1], [0, 4]) }, 6), /2 trailing bytes after the last tensor/);
  await rejects(raw({}, 3), /3 trailing bytes/);
  // a name given twice (JSON.parse would silently keep the last), also through an escape
  await rejects(
    raw(
      '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"\\u0061":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
      8,
    ),
    /header names "a" twice/,
  );
  const nested = await parseSafetensors(
    bytesSource('n', raw({ __metadata__: { a: 'x' }, a: t('F32', [1], [0, 4]) }, 4)),
  );
  assert.ok(nested.tensors.has('a'), 'a key inside __metadata__ is not a duplicate');
  // zero-size tensors may sit anywhere, even at the end
  const ok = await parseSafetensors(bytesSource('z', raw({ a: t('F32', [1], [0, 4]), z: t('F16', [0], [4, 4]) }, 4)));
  assert.equal([...ok.tensors.keys()], ['a', 'z']);
});

test.run();
