/**
 * `gpt2-webgpu serve`: listens with the app of app.ts until SIGINT or SIGTERM, then closes it
 * (running requests end first) and returns.
 */
import type { Model } from '../engine/engine.js';
import { buildApp, type ServerOptions } from './app.js';

export interface ServeOptions extends ServerOptions {
  host?: string;
  port?: number;
  /** Where the listening line goes (default stderr). */
  log?: (line: string) => void;
}

export async function serve(model: Model, opts: ServeOptions = {}): Promise<void> {
  const log = opts.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const server = await buildApp(model, opts);
  const address = await server.app.listen({ host: opts.host ?? '127.0.0.1', port: opts.port ?? 8080 });
  log(
    `serving ${server.modelName} at ${address}/v1 (max batch ${server.scheduler.maxBatch}, queue ${server.scheduler.maxQueue}, context ${server.scheduler.window}); Ctrl-C stops`,
  );
  await new Promise<void>((resolve) => {
    const stop = (sig: NodeJS.Signals) => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      log(`${sig}: closing`);
      resolve();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  await server.close();
}
