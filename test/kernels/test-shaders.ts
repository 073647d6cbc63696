/**
 * Importing this adds the test-only shaders (test/shaders/*.wgsl, embedded in test/shaders.gen.ts
 * by scripts/embed-shaders.js) to the engine's shader table, so that `ctx.pipeline(...)` finds
 * them, alone ('softmax') or appended to an engine shader ('elementwise+elementwise_test',
 * 'sampling+sampling_test'). Those entry points stay out of the shaders the engine ships.
 */
import { SHADERS } from '../../src/shaders.gen.js';
import { TEST_SHADERS } from '../shaders.gen.js';

for (const [name, code] of Object.entries(TEST_SHADERS)) {
  if (Object.hasOwn(SHADERS, name) && SHADERS[name] !== code)
    throw new Error(`test/shaders/${name}.wgsl would replace shaders/${name}.wgsl: rename it`);
  SHADERS[name] = code;
}
