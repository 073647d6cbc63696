// Runs every compiled test file (dist/test/**/*.test.js) with uvu, each file in its own Node process
// (a crash or device loss in one file cannot take the others down), then prints one closing line
// "N passed, N failed" and exits non-zero on any failure.
// Usage: node scripts/run-tests.js [substring filter...]
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { spawnSync } from 'node:child_process';

const root = new URL('..', import.meta.url).pathname;
const dir = join(root, 'dist', 'test');
const filters = process.argv.slice(2);
const files = [];
(function walk(d) {
  for (const f of readdirSync(d).sort()) {
    const p = join(d, f);
    if (statSync(p).isDirectory()) walk(p);
    else if (f.endsWith('.test.js') && (filters.length === 0 || filters.some((s) => p.includes(s)))) files.push(p);
  }
})(dir);
if (files.length === 0) {
  console.error(`no test files matched in ${dir}`);
  process.exit(1);
}
process.env.XDG_RUNTIME_DIR ||= '/tmp';
let passed = 0,
  failed = 0,
  skipped = 0,
  badFiles = [];
const t0 = Date.now();
for (const f of files) {
  const t1 = Date.now();
  const r = spawnSync(process.execPath, [f], { encoding: 'utf8', env: process.env, timeout: 15 * 60 * 1000 });
  const out = (r.stdout || '') + (r.stderr || '');
  const total = Number(/Total:\s+(\d+)/.exec(out)?.[1] ?? 0);
  const ok = Number(/Passed:\s+(\d+)/.exec(out)?.[1] ?? 0);
  const sk = Number(/Skipped:\s+(\d+)/.exec(out)?.[1] ?? 0);
  passed += ok;
  skipped += sk;
  failed += total - ok; // uvu's Total already leaves skipped tests out
  const name = relative(root, f);
  if (r.status !== 0 || total + sk === 0) {
    if (total - ok === 0) failed += 1; // a crash or a file with no tests counts as one failure
    badFiles.push(name);
    process.stdout.write(out);
  }
  console.log(
    `${r.status === 0 && total + sk > 0 ? 'ok  ' : 'FAIL'} ${name}: ${ok}/${total} passed${sk ? `, ${sk} skipped` : ''} (${((Date.now() - t1) / 1000).toFixed(1)} s)`,
  );
}
console.log(
  `\n${badFiles.length ? 'failing files: ' + badFiles.join(', ') + '\n' : ''}(${((Date.now() - t0) / 1000).toFixed(1)} s)`,
);
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
process.exit(failed > 0 ? 1 : 0);
