/** Browser-safe entry point: no Node built-ins are imported from here. */
export * from './errors.js';
export { createContext, GpuContext } from './engine/device.js';
export type { AdapterSummary, ContextOptions, GpuFeatures } from './engine/device.js';
