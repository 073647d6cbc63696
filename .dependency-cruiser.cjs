/**
 * Layer rules (checked by `npm run lint`): each layer imports only from the layers below it.
 *   src/gpu       GPU foundation: device context, tensors, Dispatch, pipeline cache
 *   src/kernels   every GPU op (WGSL families + their TypeScript bindings)
 *   src/sampling  options, validation, processor semantics, beam hypotheses bookkeeping
 *   src/engine    config, sources, weights, model and plans, KV cache, generation, sessions, Engine
 *   src/*.ts      entry points (index, node, CLI, bench): they use src/engine (and the
 *                 device context, src/gpu/device.ts), never src/kernels or src/gpu/common.ts
 *   src/server    the HTTP server (an entry point): engine, sampling and errors only
 * src/errors.ts and the generated src/shaders.gen.ts are leaves every layer may use.
 */
const layer = (name, below) => ({
  name: `${name}-imports-only-below`,
  comment: `src/${name} may import only from ${below.join(', ')} (layers point one way)`,
  severity: 'error',
  from: { path: `^src/${name}/` },
  to: {
    path: '^src/',
    pathNot: [`^src/${name}/`, ...below.map((b) => `^src/${b}/`), '^src/errors\\.ts$', '^src/shaders\\.gen\\.ts$'],
  },
});

module.exports = {
  forbidden: [
    layer('gpu', []),
    layer('kernels', ['gpu']),
    layer('sampling', ['gpu', 'kernels']),
    layer('engine', ['gpu', 'kernels', 'sampling']),
    layer('server', ['engine', 'sampling']),
    {
      name: 'entry-points-use-the-engine',
      comment:
        'src/*.ts entry points reach kernels and GPU internals through src/engine only (src/gpu/device.ts, the device context, is public)',
      severity: 'error',
      from: { path: '^src/[^/]+\\.ts$', pathNot: '^src/shaders\\.gen\\.ts$' },
      to: { path: ['^src/kernels/', '^src/gpu/common\\.ts$'] },
    },
    {
      name: 'leaves-import-nothing',
      comment: 'src/errors.ts and src/shaders.gen.ts are leaves',
      severity: 'error',
      from: { path: '^src/(errors|shaders\\.gen)\\.ts$' },
      to: { path: '^src/' },
    },
    {
      name: 'no-circular',
      severity: 'error',
      from: { path: '^src/' },
      to: { circular: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
  },
};
