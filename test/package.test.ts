/**
 * The published package, as a user gets it: `npm pack` into a temporary folder, then
 *   - the tarball's contents (the library, its declarations, the browser bundle, the CLI, LICENSE;
 *     no tests, benches or examples) and that every export and relative import in it resolves;
 *   - a Node ESM consumer (moduleResolution nodenext) type-checked with the repository's tsc
 *     without skipLibCheck, then run: createEngine, load the tiny fixture, 4 greedy tokens;
 *   - a browser consumer (moduleResolution bundler) type-checked the same way and bundled by
 *     esbuild for platform browser.
 * Offline: the tarball is extracted into the consumer's node_modules and its dependencies are
 * symlinks to the repository's node_modules (npm install would fetch them from the registry).
 * Needs `npm run build` (npm test does it); the browser bundle is built here, as prepack does.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, posix } from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT, tinyDir, tinyReference } from './fixtures-util.js';

const run = promisify(execFile);
const TSC = join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
const tmp = mkdtempSync(join(tmpdir(), 'gpt2-pkg-'));
const NODE_APP = join(tmp, 'node-app');
const WEB_APP = join(tmp, 'web-app');

function sh(cmd: string, args: string[], cwd = REPO_ROOT): string {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: status ${r.status}\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** Runs tsc on a consumer project; the whole diagnostic output on failure. */
async function tsc(dir: string): Promise<void> {
  try {
    await run(process.execPath, [TSC, '-p', dir], { cwd: dir, timeout: 120_000 });
  } catch (e) {
    const x = e as { stdout?: string; stderr?: string; message: string };
    throw new Error(`tsc -p ${dir} failed:\n${x.stdout ?? ''}${x.stderr ?? ''}${x.stdout ? '' : x.message}`, {
      cause: e,
    });
  }
}

let files: string[] = [];
let pkg: { exports: Record<string, unknown>; dependencies: Record<string, string>; bin: Record<string, string> };

test.before(() => {
  sh(process.execPath, [join(REPO_ROOT, 'scripts', 'build-browser.js')]); // what prepack does
  const out = sh('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', tmp]);
  const [info] = JSON.parse(out.slice(out.indexOf('['))) as Array<{ filename: string; files: Array<{ path: string }> }>;
  files = info!.files.map((f) => f.path).sort();
  // An "installed" copy: the tarball in node_modules/gpt2-webgpu, its dependencies (and @types/node
  // for the Node consumer) linked from the repository's node_modules.
  const nm = join(tmp, 'node_modules');
  mkdirSync(join(nm, 'gpt2-webgpu'), { recursive: true });
  sh('tar', ['-xzf', join(tmp, info!.filename), '-C', join(nm, 'gpt2-webgpu'), '--strip-components=1']);
  pkg = JSON.parse(readFileSync(join(nm, 'gpt2-webgpu', 'package.json'), 'utf8'));
  for (const dep of [...Object.keys(pkg.dependencies), '@types/node']) {
    mkdirSync(dirname(join(nm, dep)), { recursive: true });
    symlinkSync(join(REPO_ROOT, 'node_modules', dep), join(nm, dep), 'dir');
  }
  // Both consumers find node_modules in the folder above them.
  mkdirSync(NODE_APP);
  writeFileSync(join(NODE_APP, 'package.json'), JSON.stringify({ name: 'node-app', private: true, type: 'module' }));
  writeFileSync(
    join(NODE_APP, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        module: 'nodenext',
        moduleResolution: 'nodenext',
        target: 'es2022',
        strict: true,
        types: ['node'],
        outDir: 'out',
      },
      files: ['main.ts'],
    }),
  );
  writeFileSync(
    join(NODE_APP, 'main.ts'),
    [
      "import { createEngine, InvalidOptionError, type GenerateResult, type LoadProgress } from 'gpt2-webgpu';",
      'const engine = await createEngine();',
      'try {',
      '  const device: GPUDevice = engine.ctx.device; // a WebGPU type, from @webgpu/types via the package',
      '  const phases: string[] = [];',
      '  const onProgress = (p: LoadProgress) => phases.at(-1) === p.phase || phases.push(p.phase);',
      '  const model = await engine.loadModel(process.argv[2]!, { onProgress });',
      '  const ids = JSON.parse(process.argv[3]!) as number[];',
      '  const r: GenerateResult = await model.generate(ids, { temperature: 0, maxNewTokens: 4, stopAtEos: false });',
      '  const named = new InvalidOptionError("x").name;',
      '  console.log(JSON.stringify({ tokens: r.sequences[0]!.tokens, label: device.label, named, phases }));',
      '} finally {',
      '  engine.destroy();',
      '}',
      '',
    ].join('\n'),
  );
  mkdirSync(WEB_APP);
  writeFileSync(join(WEB_APP, 'package.json'), JSON.stringify({ name: 'web-app', private: true, type: 'module' }));
  writeFileSync(
    join(WEB_APP, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        module: 'esnext',
        moduleResolution: 'bundler',
        target: 'es2022',
        lib: ['es2022', 'dom'],
        strict: true,
        types: [],
        noEmit: true,
      },
      files: ['main.ts', 'node-only.ts'],
    }),
  );
  writeFileSync(
    join(WEB_APP, 'main.ts'),
    [
      "import { Engine, type GenerateResult } from 'gpt2-webgpu';",
      'export async function run(gpu: GPU): Promise<GenerateResult> {',
      '  const engine = await Engine.create({ gpu });',
      "  const model = await engine.loadModel('random:distilgpt2');",
      "  return model.generate('Hello', { maxNewTokens: 2 });",
      '}',
      '',
    ].join('\n'),
  );
  writeFileSync(
    join(WEB_APP, 'node-only.ts'),
    [
      '// The browser entry has no createEngine (it is the Node entry, which a bundler does not pick).',
      '// @ts-expect-error no exported member createEngine',
      "import { createEngine } from 'gpt2-webgpu';",
      'void createEngine;',
      '',
    ].join('\n'),
  );
});

test.after(() => rmSync(tmp, { recursive: true, force: true }));

test('the tarball holds the library, its declarations, the browser bundle, the CLI and LICENSE, and nothing else', () => {
  for (const f of [
    'LICENSE',
    'README.md',
    'package.json',
    'bin/gpt2-webgpu.js',
    'dist/src/index.js',
    'dist/src/index.d.ts',
    'dist/src/node.js',
    'dist/src/node.d.ts',
    'dist/src/cli.js',
    'dist/browser/gpt2-webgpu.js',
    'weights/manifest.json',
  ])
    assert.ok(files.includes(f), `${f} missing from ${files.join(' ')}`);
  const stray = files.filter(
    (f) =>
      !/^(LICENSE|README\.md|package\.json|bin\/gpt2-webgpu\.js|weights\/manifest\.json)$/.test(f) &&
      !/^dist\/src\/.*\.(js|d\.ts)$/.test(f) &&
      !/^dist\/browser\/gpt2-webgpu\.js(\.map)?$/.test(f),
  );
  assert.equal(stray, [], 'tests, benches, examples, shaders or source maps in the tarball');
  assert.not.ok(files.includes('dist/src/bench-browser.js'), 'the browser bench page is not part of the package');
  assert.match(readFileSync(join(REPO_ROOT, 'LICENSE'), 'utf8'), /^MIT License\n\nCopyright \(c\) 2026/);
});

test('every export target and every relative import of the shipped modules is in the tarball', () => {
  const targets: string[] = [];
  const walk = (x: unknown): void => {
    if (typeof x === 'string') targets.push(x.replace(/^\.\//, ''));
    else if (x && typeof x === 'object') Object.values(x).forEach(walk);
  };
  walk(pkg.exports);
  walk(pkg.bin);
  for (const t of targets) assert.ok(files.includes(t), `export target ${t} is not in the tarball`);
  for (const f of files.filter((p) => /\.(js|d\.ts)$/.test(p) && p.startsWith('dist/src/'))) {
    const code = readFileSync(join(tmp, 'node_modules', 'gpt2-webgpu', f), 'utf8');
    for (const m of code.matchAll(/\b(?:from|import)\s*\(?\s*['"](\.{1,2}\/[^'"]+)['"]/g)) {
      let target = posix.join(posix.dirname(f), m[1]!);
      if (f.endsWith('.d.ts')) target = target.replace(/\.js$/, '.d.ts');
      assert.ok(files.includes(target), `${f} imports ${m[1]}, which is not in the tarball`);
    }
  }
});

test('consumers type-check against the tarball without skipLibCheck: Node (nodenext) and bundler', async () => {
  await Promise.all([tsc(NODE_APP), tsc(WEB_APP)]);
});

test('the Node consumer runs: createEngine, the tiny model from its folder (its load phases), 4 greedy tokens', () => {
  const p = tinyReference().prompts[0]!;
  const r = spawnSync(process.execPath, [join(NODE_APP, 'out', 'main.js'), tinyDir(), JSON.stringify(p.ids)], {
    cwd: NODE_APP,
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' },
  });
  assert.is(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  assert.equal(j.tokens, p.greedy48.slice(p.ids.length, p.ids.length + 4));
  assert.is(j.label, 'gpt2-webgpu');
  assert.is(j.named, 'InvalidOptionError');
  assert.equal(j.phases, ['compile', 'upload'], 'onProgress names the pipeline build, then the upload');
  // The CLI the package installs as a bin runs from the tarball too.
  const help = spawnSync(
    process.execPath,
    [join(tmp, 'node_modules', 'gpt2-webgpu', pkg.bin['gpt2-webgpu']!), '--help'],
    {
      encoding: 'utf8',
    },
  );
  assert.is(help.status, 0, help.stderr);
  assert.match(help.stdout, /usage: gpt2-webgpu <command>/);
});

test('esbuild bundles the browser consumer for platform browser from the browser entry', async () => {
  const { build } = await import('esbuild');
  const r = await build({
    entryPoints: [join(WEB_APP, 'main.ts')],
    bundle: true,
    platform: 'browser',
    format: 'esm',
    outfile: join(WEB_APP, 'out.js'),
    absWorkingDir: WEB_APP,
    logLevel: 'silent',
    metafile: true,
  });
  const inputs = Object.keys(r.metafile.inputs);
  assert.ok(
    inputs.some((i) => i.endsWith('gpt2-webgpu/dist/src/index.js')),
    inputs.join('\n'),
  );
  assert.not.ok(
    inputs.some((i) => /gpt2-webgpu\/dist\/src\/(node|node-sources|cli)\.js$|\/webgpu\//.test(i)),
    `Node-only modules in a browser bundle:\n${inputs.join('\n')}`,
  );
  assert.ok(existsSync(join(WEB_APP, 'out.js')));
});

test.run();
