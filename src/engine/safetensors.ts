/**
 * safetensors reader (and a small writer for tests and random models).
 *
 * Format (https://github.com/huggingface/safetensors): 8-byte little-endian u64 N, then N bytes of
 * UTF-8 JSON starting with '{' (may be padded with trailing spaces), then the data region. The JSON
 * maps tensor names to { dtype, shape, data_offsets: [begin, end] } (offsets relative to the data
 * region) plus an optional "__metadata__" string->string map.
 *
 * The reader treats the file as hostile and is as strict as the spec and the reference (Rust)
 * implementation: every number is checked before use; the tensors must tile the data region exactly
 * (sorted by offset: no overlap, no hole, ending at end of file: "the byte buffer needs to be
 * entirely indexed, and cannot contain holes"). Every failure is a WeightsFormatError naming the
 * file, the tensor and the numbers. Only the header is read up front; tensor bytes are read on demand
 * through a ByteSource (a file, a Blob, a ranged HTTP resource).
 */
import { WeightsFormatError } from '../errors.js';

/**
 * An untrusted value as messages show it: JSON (strings quoted), cut to about `max` characters with
 * the full length noted, so a hostile file or server cannot put megabytes (or a structure too deep
 * to stringify) into an error message.
 */
export function preview(value: unknown, max = 80): string {
  let s: string;
  try {
    s = typeof value === 'bigint' ? `${value}n` : (JSON.stringify(value) ?? String(value));
  } catch {
    s = Array.isArray(value) ? '[an array nested too deep to show]' : '{an object nested too deep to show}';
  }
  return s.length > max ? `${s.slice(0, max)}... (${s.length} characters)` : s;
}

/** A shape for messages, "[a, b, c]", its middle elided past 8 dimensions. */
export function shapeText(shape: readonly number[]): string {
  if (shape.length <= 8) return `[${shape.join(', ')}]`;
  return `[${shape.slice(0, 4).join(', ')}, ... ${shape.length - 6} more ..., ${shape.slice(-2).join(', ')}]`;
}

/** Random-access bytes: a file on disk, a browser File/Blob, an HTTP resource with Range support. */
export interface ByteSource {
  /** For messages: a path or URL. */
  name: string;
  /** Total size in bytes. */
  size: number;
  /** Exactly `length` bytes at `offset` (a shorter result is reported as a truncated file). */
  read(offset: number, length: number): Promise<Uint8Array>;
}

/** A ByteSource over bytes already in memory. */
export function bytesSource(name: string, data: Uint8Array | ArrayBuffer): ByteSource {
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  return {
    name,
    size: bytes.byteLength,
    read: async (offset, length) => bytes.subarray(offset, offset + length),
  };
}

/** Element sizes of the spec's byte-addressable dtypes. Only F32, F16 and BF16 can be read as f32. */
export const SAFETENSORS_DTYPE_BYTES: Readonly<Record<string, number>> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  F8_E8M0: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  I64: 8,
  U64: 8,
  F64: 8,
};
/** The dtypes readTensorF32 converts. */
export const READABLE_DTYPES = ['F32', 'F16', 'BF16'] as const;

/** The spec's upper bound on the header (the reference implementation refuses more: 100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;
/** Nesting the header may have: a valid one needs 3 (header object, tensor entry, shape array). */
export const MAX_HEADER_DEPTH = 8;
/** Top-level entries (tensors and __metadata__): a GPT-2 checkpoint has under 1,000 tensors. */
export const MAX_HEADER_ENTRIES = 10_000;
/** JSON values in the whole header (every member and element): ~14 per tensor entry. */
export const MAX_HEADER_VALUES = 200_000;

export interface TensorInfo {
  name: string;
  dtype: string;
  shape: number[];
  /** Absolute byte range in the file, [begin, end). */
  begin: number;
  end: number;
}

export interface SafetensorsFile {
  source: ByteSource;
  /** Byte offset of the data region (8 + header length). */
  dataStart: number;
  metadata: Record<string, string> | null;
  /** Tensors in header order. */
  tensors: Map<string, TensorInfo>;
}

function fail(src: ByteSource, what: string): never {
  throw new WeightsFormatError(`${src.name}: ${what}`);
}

async function readExact(src: ByteSource, offset: number, length: number, what: string): Promise<Uint8Array> {
  const b = await src.read(offset, length);
  if (b.byteLength !== length) {
    fail(
      src,
      `truncated: reading ${what} needs ${length} bytes at offset ${offset} but got ${b.byteLength} (file size ${src.size})`,
    );
  }
  return b;
}

const isNonNegInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/** Reads and validates the header of a safetensors file. Reads no tensor data. */
export async function parseSafetensors(src: ByteSource): Promise<SafetensorsFile> {
  if (!Number.isSafeInteger(src.size) || src.size < 8) {
    fail(src, `file is ${src.size} bytes, shorter than the 8-byte header length that starts a safetensors file`);
  }
  const lenBytes = await readExact(src, 0, 8, 'the header length');
  const n64 = new DataView(lenBytes.buffer, lenBytes.byteOffset, 8).getBigUint64(0, true);
  if (n64 > BigInt(src.size - 8)) {
    fail(
      src,
      `header length ${n64} passes the end of the file (file size ${src.size}, so at most ${src.size - 8}); truncated or not a safetensors file`,
    );
  }
  const n = Number(n64);
  if (n > MAX_HEADER_BYTES) fail(src, `header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  if (n < 2) fail(src, `header length ${n} is too small to hold a JSON object`);
  const headerBytes = await readExact(src, 8, n, 'the JSON header');
  if (headerBytes[0] !== 0x7b) {
    fail(
      src,
      `header must start with '{' (0x7b), found byte 0x${headerBytes[0]!.toString(16).padStart(2, '0')}; not a safetensors file?`,
    );
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    fail(src, `header (${n} bytes) is not valid UTF-8`);
  }
  // Bounds first, on the text: what JSON.parse and the checks below would otherwise spend on a
  // header built to exhaust them (deep nesting, millions of entries) is never spent.
  const scan = scanHeader(text);
  if (scan.tooDeep) fail(src, `header nests deeper than ${MAX_HEADER_DEPTH} levels (a safetensors header needs 3)`);
  if (scan.tooManyEntries)
    fail(src, `header has more than ${MAX_HEADER_ENTRIES} entries (a GPT-2 checkpoint has under 1000 tensors)`);
  if (scan.tooManyValues) fail(src, `header holds more than ${MAX_HEADER_VALUES} values (~14 per tensor entry)`);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    fail(src, `header is not valid JSON (${preview((e as Error).message, 200)})`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    fail(src, `header must be a JSON object, got ${Array.isArray(json) ? 'an array' : preview(json)}`);
  }
  // JSON.parse keeps the last of duplicate keys silently; a header that names a tensor twice is
  // ambiguous (readers may disagree on which entry counts), so refuse it.
  if (scan.duplicate !== null) fail(src, `header names ${preview(scan.duplicate)} twice`);

  const dataStart = 8 + n;
  const dataSize = src.size - dataStart;
  let metadata: Record<string, string> | null = null;
  const tensors = new Map<string, TensorInfo>();
  for (const [name, v] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof v !== 'object' || v === null || Array.isArray(v))
        fail(src, `__metadata__ must be an object of strings, got ${preview(v)}`);
      for (const [k, s] of Object.entries(v as Record<string, unknown>)) {
        if (typeof s !== 'string') fail(src, `__metadata__[${preview(k)}] must be a string, got ${preview(s)}`);
      }
      metadata = v as Record<string, string>;
      continue;
    }
    const t = `tensor ${preview(name)}`;
    if (typeof v !== 'object' || v === null || Array.isArray(v))
      fail(src, `${t}: entry must be an object {dtype, shape, data_offsets}, got ${preview(v)}`);
    const e = v as Record<string, unknown>;
    const dtype = e.dtype;
    if (typeof dtype !== 'string') fail(src, `${t}: dtype must be a string, got ${preview(dtype)}`);
    const item = SAFETENSORS_DTYPE_BYTES[dtype];
    if (item === undefined || !Object.prototype.hasOwnProperty.call(SAFETENSORS_DTYPE_BYTES, dtype)) {
      fail(src, `${t}: unknown dtype ${preview(dtype)} (known: ${Object.keys(SAFETENSORS_DTYPE_BYTES).join(', ')})`);
    }
    const shape = e.shape;
    if (!Array.isArray(shape) || !shape.every(isNonNegInt)) {
      fail(src, `${t}: shape must be a list of non-negative integers, got ${preview(shape)}`);
    }
    const offs = e.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every(isNonNegInt)) {
      fail(src, `${t}: data_offsets must be [begin, end] with non-negative integers, got ${preview(offs)}`);
    }
    const [b, en] = offs as [number, number];
    if (b > en) fail(src, `${t}: data_offsets [${b}, ${en}] has begin after end`);
    if (en > dataSize)
      fail(src, `${t}: data_offsets [${b}, ${en}] pass the end of the data region (${dataSize} bytes)`);
    // numel * item must equal the range; compare without overflowing (every range is <= dataSize).
    let bytes = item;
    for (const d of shape as number[]) bytes = d === 0 ? 0 : bytes * d;
    if (bytes !== en - b) {
      fail(
        src,
        `${t}: shape ${shapeText(shape as number[])} x ${dtype} (${item} B) needs ${bytes} bytes but data_offsets [${b}, ${en}] hold ${en - b}`,
      );
    }
    tensors.set(name, { name, dtype, shape: (shape as number[]).slice(), begin: dataStart + b, end: dataStart + en });
  }

  // The tensors must tile the data region: sorted by (begin, end), each starts where the last ended.
  const sorted = [...tensors.values()].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = dataStart;
  let prev: TensorInfo | undefined;
  for (const t of sorted) {
    if (t.begin < at) {
      fail(
        src,
        `tensors ${preview(prev!.name)} [${prev!.begin - dataStart}, ${prev!.end - dataStart}] and ${preview(t.name)} [${t.begin - dataStart}, ${t.end - dataStart}] overlap`,
      );
    }
    if (t.begin > at) {
      fail(
        src,
        `data region has a hole: bytes [${at - dataStart}, ${t.begin - dataStart}) before tensor ${preview(t.name)} belong to no tensor`,
      );
    }
    at = t.end;
    prev = t;
  }
  if (at !== src.size) {
    fail(
      src,
      `data region has ${src.size - at} trailing bytes after the last tensor (data ends at ${at - dataStart}, region is ${dataSize} bytes)`,
    );
  }
  return { source: src, dataStart, metadata, tensors };
}

/** What scanHeader found: the first duplicate top-level key, and which bound (if any) was passed. */
interface HeaderScan {
  duplicate: string | null;
  tooDeep: boolean;
  tooManyEntries: boolean;
  tooManyValues: boolean;
}

/**
 * One pass over the header text (before JSON.parse, so it must cope with invalid JSON: it never
 * reads past the end): nesting depth, top-level entries, values (members and elements, counted
 * by their separating commas) and duplicate top-level keys. Stops as soon as a bound is passed.
 */
function scanHeader(text: string): HeaderScan {
  const out: HeaderScan = { duplicate: null, tooDeep: false, tooManyEntries: false, tooManyValues: false };
  const seen = new Set<string>();
  let depth = 0;
  let entries = 0;
  let values = 0;
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (ch === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      if (depth === 1 && expectKey) {
        if (++entries > MAX_HEADER_ENTRIES) return { ...out, tooManyEntries: true };
        if (out.duplicate === null && j < text.length) {
          let key: string;
          try {
            key = JSON.parse(text.slice(i, j + 1)) as string;
          } catch {
            return out; // not valid JSON: JSON.parse says so next
          }
          if (seen.has(key)) out.duplicate = key;
          seen.add(key);
        }
        expectKey = false;
      }
      i = j;
    } else if (ch === '{' || ch === '[') {
      if (++depth > MAX_HEADER_DEPTH) return { ...out, tooDeep: true };
      expectKey = ch === '{' && depth === 1;
    } else if (ch === '}' || ch === ']') {
      depth--;
    } else if (ch === ',') {
      if (++values > MAX_HEADER_VALUES) return { ...out, tooManyValues: true };
      if (depth === 1) expectKey = true;
    }
  }
  return out;
}

let f16Table: Float32Array | undefined;
/** f16 bits -> f32 for all 65536 halves (256 KiB, built once). */
function halfTable(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const s = h & 0x8000 ? -1 : 1;
      const e = (h >>> 10) & 0x1f;
      const m = h & 0x3ff;
      f16Table[h] =
        e === 0 ? s * m * 2 ** -24 : e === 0x1f ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
    }
  }
  return f16Table;
}

/** Converts raw little-endian tensor bytes of a readable dtype to float32. */
export function bytesToF32(bytes: Uint8Array, dtype: string): Float32Array {
  const item = SAFETENSORS_DTYPE_BYTES[dtype] ?? 0;
  const n = item ? bytes.byteLength / item : 0;
  if (dtype === 'F32') {
    const out = new Float32Array(n);
    new Uint8Array(out.buffer).set(bytes); // copy: also fixes alignment
    return out;
  }
  if (dtype === 'F16' || dtype === 'BF16') {
    const halves = new Uint16Array(n);
    new Uint8Array(halves.buffer).set(bytes);
    const out = new Float32Array(n);
    if (dtype === 'F16') {
      const tab = halfTable();
      for (let i = 0; i < n; i++) out[i] = tab[halves[i]!]!;
    } else {
      const w = new Uint32Array(out.buffer); // bf16 is the top half of an f32
      for (let i = 0; i < n; i++) w[i] = halves[i]! << 16;
    }
    return out;
  }
  throw new WeightsFormatError(
    `cannot convert dtype ${dtype} to float32; readable dtypes are ${READABLE_DTYPES.join(', ')}`,
  );
}

function lookup(file: SafetensorsFile, name: string): TensorInfo {
  const t = file.tensors.get(name);
  if (!t) fail(file.source, `no tensor named "${name}"`);
  if (!(READABLE_DTYPES as readonly string[]).includes(t.dtype)) {
    fail(file.source, `tensor "${name}" has dtype ${t.dtype}; only ${READABLE_DTYPES.join(', ')} can be loaded`);
  }
  return t;
}

/** Reads a whole tensor as float32 (F16 and BF16 converted). */
export async function readTensorF32(file: SafetensorsFile, name: string): Promise<Float32Array> {
  const t = lookup(file, name);
  return bytesToF32(await readExact(file.source, t.begin, t.end - t.begin, `tensor "${name}"`), t.dtype);
}

/** Reads rows [start, start + count) along the first dimension of a tensor, as float32. */
export async function readRowsF32(
  file: SafetensorsFile,
  name: string,
  start: number,
  count: number,
): Promise<Float32Array> {
  const t = lookup(file, name);
  const rows = t.shape[0] ?? 1;
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(count) || start < 0 || count < 0 || start + count > rows) {
    fail(file.source, `tensor "${name}" ${shapeText(t.shape)}: rows [${start}, ${start + count}) out of range`);
  }
  const rowBytes = rows === 0 ? 0 : (t.end - t.begin) / rows;
  const off = t.begin + start * rowBytes;
  return bytesToF32(
    await readExact(file.source, off, count * rowBytes, `rows ${start}..${start + count} of tensor "${name}"`),
    t.dtype,
  );
}

export interface TensorToWrite {
  name: string;
  dtype: 'F32' | 'F16' | 'BF16';
  shape: number[];
  /** Raw little-endian bytes (numel x element size). */
  data: Uint8Array;
}

/** Serialises tensors (in the given order) into a safetensors file; header padded to 8 bytes. */
export function serializeSafetensors(list: TensorToWrite[], metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let at = 0;
  for (const t of list) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + t.data.byteLength] };
    at += t.data.byteLength;
  }
  let text = JSON.stringify(header);
  text += ' '.repeat((8 - ((8 + new TextEncoder().encode(text).byteLength) % 8)) % 8); // align the data region
  const hb = new TextEncoder().encode(text);
  const out = new Uint8Array(8 + hb.byteLength + at);
  new DataView(out.buffer).setBigUint64(0, BigInt(hb.byteLength), true);
  out.set(hb, 8);
  let p = 8 + hb.byteLength;
  for (const t of list) {
    out.set(t.data, p);
    p += t.data.byteLength;
  }
  return out;
}
