// Bundles the engine for browsers with esbuild:
//   dist/browser/gpt2-webgpu.js   src/index.ts as one ES module (+ .map); the WGSL comes embedded
//                                 through src/shaders.gen.ts, so run scripts/embed-shaders.js first
//                                 (this script does it).
//   dist/browser/example.js       examples/browser/main.ts; its import of src/index.js becomes an
//                                 import of ./gpt2-webgpu.js, so the page loads the library bundle
//                                 above instead of a second copy of the engine.
//   dist/browser/index.html, style.css
//                                 the example page, so dist/browser/ is a complete static site.
//   dist/browser/test-page.js, test-page.html
//                                 test/browser-page.ts: kernel entry points the browser test calls.
//   dist/browser/bench.js, bench.html
//                                 src/bench-browser.ts: the engine and runBench, for bench/browser.mjs.
// The core must import no Node built-ins: with platform 'browser' esbuild fails on any (node:fs...).
//
// Usage: node scripts/build-browser.js [--minify]   (also importable: await buildBrowser())
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const OUT_DIR = join(root, 'dist', 'browser');

const common = {
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  sourcemap: true,
  logLevel: 'warning',
  absWorkingDir: root,
};

/** Rewrites the example's imports of the library source to the library bundle next to it. */
const libraryAsExternal = {
  name: 'library-as-external',
  setup(b) {
    b.onResolve({ filter: /(^|\/)src\/index(\.js|\.ts)?$/ }, () => ({ path: './gpt2-webgpu.js', external: true }));
  },
};

export async function buildBrowser({ minify = false } = {}) {
  const embed = spawnSync(process.execPath, [join(root, 'scripts', 'embed-shaders.js')], { stdio: 'inherit' });
  if (embed.status !== 0) throw new Error(`scripts/embed-shaders.js failed with status ${embed.status}`);
  mkdirSync(OUT_DIR, { recursive: true });
  const t0 = Date.now();
  await Promise.all([
    build({
      ...common,
      minify,
      entryPoints: [join(root, 'src', 'index.ts')],
      outfile: join(OUT_DIR, 'gpt2-webgpu.js'),
    }),
    build({
      ...common,
      minify,
      entryPoints: [join(root, 'examples', 'browser', 'main.ts')],
      outfile: join(OUT_DIR, 'example.js'),
      plugins: [libraryAsExternal],
    }),
    build({ ...common, entryPoints: [join(root, 'test', 'browser-page.ts')], outfile: join(OUT_DIR, 'test-page.js') }),
    build({ ...common, entryPoints: [join(root, 'src', 'bench-browser.ts')], outfile: join(OUT_DIR, 'bench.js') }),
  ]);
  // The example page, pointed at the bundle next to it.
  const html = readFileSync(join(root, 'examples', 'browser', 'index.html'), 'utf8');
  writeFileSync(join(OUT_DIR, 'index.html'), html.replace('../../dist/browser/example.js', './example.js'));
  writeFileSync(join(OUT_DIR, 'style.css'), readFileSync(join(root, 'examples', 'browser', 'style.css')));
  writeFileSync(
    join(OUT_DIR, 'test-page.html'),
    '<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,"><title>gpt2-webgpu browser test</title>\n' +
      '<script type="module" src="./test-page.js"></script>\n',
  );
  writeFileSync(
    join(OUT_DIR, 'bench.html'),
    '<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,"><title>gpt2-webgpu bench</title>\n',
  );
  return { outDir: OUT_DIR, ms: Date.now() - t0 };
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  try {
    const { outDir, ms } = await buildBrowser({ minify: process.argv.includes('--minify') });
    console.log(`browser bundles in ${outDir} (${ms} ms)`);
  } catch (e) {
    // esbuild has already printed its diagnostics.
    console.error(`build-browser: ${e.message.split('\n')[0]}`);
    process.exit(1);
  }
}
