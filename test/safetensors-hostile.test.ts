/**
 * safetensors headers built to exhaust the parser (issue 28, item 13): deep nesting, huge entry
 * counts, megabyte names and values. Each is a WeightsFormatError with a short message, fast.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { WeightsFormatError } from '../src/errors.js';
import {
  bytesSource,
  MAX_HEADER_DEPTH,
  MAX_HEADER_ENTRIES,
  MAX_HEADER_VALUES,
  parseSafetensors,
} from '../src/engine/safetensors.js';
import { parseConfig } from '../src/engine/config.js';
import { checkpointFromSafetensors } from '../src/engine/checkpoint.js';
import { makeSafetensors, rejectsWith, smallConfig } from './fixtures-util.js';

/** A file whose header is `text` (no data). */
function file(text: string): Uint8Array {
  const hb = new TextEncoder().encode(text);
  const out = new Uint8Array(8 + hb.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(hb.length), true);
  out.set(hb, 8);
  return out;
}

/** Parses `text` as a header; resolves with the WeightsFormatError, checks time and message length. */
async function refused(text: string, pattern: RegExp, ms = 1500): Promise<Error> {
  const t0 = Date.now();
  const e = await rejectsWith(parseSafetensors(bytesSource('x.safetensors', file(text))), WeightsFormatError, pattern);
  assert.ok(Date.now() - t0 < ms, `took ${Date.now() - t0} ms`);
  assert.ok(e.message.length < 400, `message of ${e.message.length} characters: ${e.message.slice(0, 200)}...`);
  return e;
}

test('item 13: nesting past MAX_HEADER_DEPTH is refused before parsing (100k deep __metadata__ included)', async () => {
  assert.ok(MAX_HEADER_DEPTH >= 3, 'a valid header nests 3 deep (entry object, shape array)');
  const deep = 100_000;
  await refused(
    `{"__metadata__":{"a":${'['.repeat(deep)}${']'.repeat(deep)}}}`,
    new RegExp(`^x\\.safetensors: header nests deeper than ${MAX_HEADER_DEPTH} levels`),
  );
  // Just past the bound, in a tensor entry.
  const n = MAX_HEADER_DEPTH - 1;
  await refused(`{"t":{"dtype":${'['.repeat(n)}${']'.repeat(n)}}}`, /nests deeper than/);
});

test('item 13: entry and value counts are bounded (1.2 M empty entries refused fast)', async () => {
  // (Every key the same: the entry bound is met before duplicates would be reported.)
  await refused(
    `{${'"t":{},'.repeat(1_200_000)}"u":{}}`,
    new RegExp(
      `^x\\.safetensors: header has more than ${MAX_HEADER_ENTRIES} entries \\(a GPT-2 checkpoint has under 1000 tensors\\)`,
    ),
    3000,
  );
  await refused(
    `{"t":{"dtype":"F32","shape":[${'1,'.repeat(MAX_HEADER_VALUES)}1],"data_offsets":[0,4]}}`,
    new RegExp(`header holds more than ${MAX_HEADER_VALUES} values`),
  );
});

test('item 13: untrusted names and values are shortened in messages', async () => {
  const long = 'n'.repeat(1_000_000);
  await refused(`{"${long}":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}}`, /^x\.safetensors: tensor "nnnn/);
  await refused(`{"t":{"dtype":"${long}","shape":[1],"data_offsets":[0,4]}}`, /unknown dtype "nnnn/);
  await refused(`{"t":{"dtype":"F32","shape":"${long}","data_offsets":[0,4]}}`, /shape must be a list/);
  await refused(`{"__metadata__":{"k":[${'1,'.repeat(50_000)}1]}}`, /__metadata__\["k"\] must be a string/);
  await refused(`{"__metadata__":"${long}"}`, /__metadata__ must be an object of strings/);
  await refused(`{"${long}":{},"${long}":{}}`, /header names "nnnn.* twice/);
  // A config value nested 100k deep (JSON.parse copes; the message must not stringify it whole).
  const deepCfg = JSON.parse(`{"vocab_size":${'['.repeat(100_000)}${']'.repeat(100_000)}}`) as unknown;
  const e = await rejectsWith(
    (async () => parseConfig(deepCfg, 'config.json'))(),
    WeightsFormatError,
    /"vocab_size" must be a positive integer, got /,
  );
  assert.ok(e.message.length < 400, e.message.slice(0, 200));
  // Tensor names from the file, in the checkpoint's messages.
  const cfg = smallConfig({ n_layer: 1 });
  const empty = (name: string) => ({ name, dtype: 'F32' as const, shape: [0], data: new Uint8Array(0) });
  for (const extra of [[empty(`h.${'9'.repeat(5000)}.x`)], [empty(long), empty(`transformer.${long}`)]]) {
    const bytes = (await makeSafetensors(cfg, { extra })).bytes;
    const st = await parseSafetensors(bytesSource('y.safetensors', bytes));
    const c = await rejectsWith(
      (async () => checkpointFromSafetensors(cfg, st, 'y'))(),
      WeightsFormatError,
      /belongs to layer|appears twice/,
    );
    assert.ok(c.message.length < 400, c.message.slice(0, 200));
  }
});

test.run();
