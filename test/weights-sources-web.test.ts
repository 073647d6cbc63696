import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createServer } from 'node:http';
import { AddressInfo } from 'node:net';
import { DownloadError, WeightsFormatError } from '../src/errors.js';
import { fileSource, urlSource } from '../src/engine/sources-web.js';
import { makeSafetensors, rejectsWith, smallConfig } from './fixtures-util.js';

const cfg = smallConfig();

/** Serves /m/config.json and /m/model.safetensors, with or without Range support; logs Range headers. */
async function serve(bytes: Uint8Array, ranges: boolean) {
  const log: Array<string | undefined> = [];
  const server = createServer((req, res) => {
    if (req.url === '/m/config.json')
      return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(cfg));
    if (req.url !== '/m/model.safetensors') return void res.writeHead(404).end();
    log.push(req.headers.range);
    const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
    if (ranges && m) {
      const [a, b] = [Number(m[1]), Math.min(Number(m[2]), bytes.length - 1)];
      res
        .writeHead(206, { 'content-range': `bytes ${a}-${b}/${bytes.length}`, 'content-length': b - a + 1 })
        .end(bytes.subarray(a, b + 1));
    } else {
      res.writeHead(200, { 'content-length': bytes.length }).end(bytes);
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    log,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

test('urlSource reads the header and tensors with Range requests when the server supports them', async () => {
  const { bytes, values } = await makeSafetensors(cfg, { prefix: true });
  const s = await serve(bytes, true);
  try {
    const ck = await urlSource(`${s.url}/m/`);
    assert.equal(ck.config, cfg);
    assert.equal(
      Array.from(await ck.read('h.0.attn.c_proj.weight')),
      Array.from(values.get('h.0.attn.c_proj.weight')!),
    );
    assert.equal(
      Array.from(await ck.readRows('wte.weight', 90, 7)),
      Array.from(values.get('wte.weight')!.subarray(90 * 8, 97 * 8)),
    );
    assert.ok(
      s.log.length >= 4 && s.log.every((r) => r !== undefined && /^bytes=\d+-\d+$/.test(r)),
      `ranged reads only: ${s.log.join(' ')}`,
    );
  } finally {
    await s.close();
  }
});

test('urlSource falls back to one whole-file fetch with progress when Range is ignored', async () => {
  const { bytes, values } = await makeSafetensors(cfg);
  const s = await serve(bytes, false);
  try {
    const seen: number[] = [];
    const ck = await urlSource(`${s.url}/m`, { onProgress: (p) => seen.push(p.loadedBytes / p.totalBytes) });
    assert.equal(Array.from(await ck.read('ln_f.bias')), Array.from(values.get('ln_f.bias')!));
    assert.is(s.log.length, 1);
    assert.is(seen[seen.length - 1], 1);
    await rejectsWith(urlSource(`${s.url}/nothing`), DownloadError, /\/nothing\/config\.json: HTTP 404 \(not found\)/);
  } finally {
    await s.close();
  }
});

test('fileSource opens picked files and names what is missing', async () => {
  const { bytes, values } = await makeSafetensors(cfg, { dtype: 'F16' });
  const files = [
    new File([JSON.stringify(cfg)], 'config.json'),
    new File([bytes as Uint8Array<ArrayBuffer>], 'model.safetensors'),
  ];
  const ck = await fileSource(files);
  assert.is((await ck.read('wpe.weight')).length, values.get('wpe.weight')!.length);
  await rejectsWith(
    fileSource(files.slice(1)),
    WeightsFormatError,
    /no config\.json among the chosen files \(model\.safetensors\)/,
  );
  await rejectsWith(
    fileSource(files.slice(0, 1)),
    WeightsFormatError,
    /no \.safetensors file among the chosen files \(config\.json\)/,
  );
  const cut = new File([bytes.slice(0, 100) as Uint8Array<ArrayBuffer>], 'model.safetensors');
  await rejectsWith(
    fileSource([files[0]!, cut]),
    WeightsFormatError,
    /^model\.safetensors: header length \d+ passes the end of the file \(file size 100/,
  );
});

test.run();
