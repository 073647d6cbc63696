/**
 * Entry of the benchmark's browser bundle (dist/browser/bench.js, built by
 * scripts/build-browser.js, driven by bench/browser.mjs): the engine and `runBench` from one copy
 * of the sources, so the report's model, plans and kernels are the engine's own.
 */
export { Engine } from './engine/engine.js';
export { formatBench, runBench } from './bench.js';
