// Checks the package as it would be published: packs it once with `npm pack` (which runs prepack
// and prepare: the browser bundle and the tsc build), then lints that tarball with
//   publint --strict                 package.json fields, exports and files against the contents;
//   attw --profile esm-only          @arethetypeswrong/cli: the types each resolution mode gets.
// esm-only: the package is ESM only ("type": "module", no require condition), so attw's node10
// and node16-from-CJS resolutions do not apply (a CommonJS user imports it with import()).
// Exits non-zero when either tool reports a problem. Usage: node scripts/check-package.js
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const bin = (name) => join(root, 'node_modules', '.bin', name);
const dir = mkdtempSync(join(tmpdir(), 'gpt2-check-package-'));

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', ...opts });
  if (r.status !== 0) {
    console.error(`check-package: ${[cmd, ...args].join(' ')} failed (status ${r.status ?? r.signal})`);
    rmSync(dir, { recursive: true, force: true });
    process.exit(1);
  }
  return r;
}

try {
  const pack = run('npm', ['pack', '--json', '--pack-destination', dir], { stdio: ['ignore', 'pipe', 'inherit'] });
  const out = pack.stdout.toString();
  // npm prints the lifecycle scripts' output before the JSON on stdout.
  const json = out.slice(out.lastIndexOf('\n[') + 1);
  const [{ filename }] = JSON.parse(json);
  const tgz = join(dir, filename);
  run(bin('publint'), ['run', tgz, '--strict']);
  run(bin('attw'), [tgz, '--profile', 'esm-only']);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
