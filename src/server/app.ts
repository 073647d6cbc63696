/**
 * The HTTP server as a fastify instance built around one loaded model, testable without the CLI:
 *
 *   const server = await buildApp(model, { maxBatch: 16 });
 *   await server.app.listen({ host: '127.0.0.1', port: 8080 });
 *   ...
 *   await server.close(); // stops listening, lets running requests end, frees the session group
 *
 * Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /v1/models/:id,
 * GET /health. Errors are OpenAI's JSON error shape (errors.ts).
 */
import { randomUUID } from 'node:crypto';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Model } from '../engine/engine.js';
import { ApiError, toApiError } from './errors.js';
import { chatBody, completionBody } from './schema.js';
import { Scheduler, type SchedulerOptions } from './scheduler.js';
import { runJob, type StreamSink, type Usage } from './runner.js';
import type { Job } from './request.js';
import { completionJob, completionResponse, completionStream, type Meta } from './completions.js';
import { chatJob, chatResponse, chatStream } from './chat.js';
import { SseStream } from './sse.js';

export interface ServerOptions extends SchedulerOptions {
  /** The model id the API reports and accepts (default: the model's source). */
  modelName?: string;
  /** Largest request body in bytes; larger ones get a 413 (default 4 MiB). */
  bodyLimit?: number;
}

export interface ServerApp {
  app: FastifyInstance;
  scheduler: Scheduler;
  modelName: string;
  /** Stops listening, waits for running requests, frees the session group (not the model). */
  close(): Promise<void>;
}

type Body = Record<string, unknown>;
type Kind = 'completion' | 'chat';

/** Aborts when the client goes away before its response is complete. */
function disconnectSignal(reply: FastifyReply): AbortController {
  const ac = new AbortController();
  reply.raw.on('close', () => {
    if (!reply.raw.writableFinished) ac.abort();
  });
  return ac;
}

/** Builds the fastify app; the model stays the caller's (close() does not destroy it). */
export async function buildApp(model: Model, opts: ServerOptions = {}): Promise<ServerApp> {
  const scheduler = await Scheduler.create(model, opts);
  const modelName = opts.modelName ?? model.source;
  const created = Math.floor(Date.now() / 1000);
  const app = Fastify({
    bodyLimit: opts.bodyLimit ?? 4 * 1024 * 1024,
    logger: false,
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false, allErrors: false } },
  });

  app.setErrorHandler((err, req, reply) => {
    const e = toApiError(err);
    // Server-side failures are the operator's to see (4xx are the client's, answered in full).
    if (e.status >= 500) process.stderr.write(`${req.method} ${req.url}: ${e.status} ${e.message}\n`);
    void reply.status(e.status).headers(e.headers).send(e.body);
  });
  app.setNotFoundHandler((req, reply) => {
    const e = new ApiError(404, `Unknown route ${req.method} ${req.url}`, 'invalid_request_error', null, 'not_found');
    void reply.status(404).send(e.body);
  });

  const handle = async (kind: Kind, req: FastifyRequest, reply: FastifyReply) => {
    const body = req.body as Body;
    const job =
      kind === 'completion' ? completionJob(model, body, scheduler.window) : chatJob(model, body, scheduler.window);
    const meta: Meta = {
      id: `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID().replace(/-/g, '')}`,
      created: Math.floor(Date.now() / 1000),
      model: modelName,
    };
    const ac = disconnectSignal(reply);
    if (!job.stream) {
      const { choices, usage } = await runJob(model, scheduler, job, ac.signal);
      return kind === 'completion' ? completionResponse(meta, job, choices, usage) : chatResponse(meta, choices, usage);
    }
    return stream(kind, job, meta, reply, ac.signal);
  };

  const stream = async (kind: Kind, job: Job, meta: Meta, reply: FastifyReply, signal: AbortSignal) => {
    const sse = new SseStream(reply);
    const sink: StreamSink & { end(u: Usage): void } =
      kind === 'completion' ? completionStream(meta, job, sse) : chatStream(meta, job, sse);
    try {
      const { usage } = await runJob(model, scheduler, job, signal, sink);
      sink.end(usage);
    } catch (e) {
      if (!sse.started) throw e; // nothing sent yet: a plain JSON error with its status
      if (!signal.aborted) sse.send(toApiError(e).body);
      sse.end();
    }
    return reply;
  };

  app.post('/v1/completions', { schema: { body: completionBody } }, (req, reply) => handle('completion', req, reply));
  app.post('/v1/chat/completions', { schema: { body: chatBody } }, (req, reply) => handle('chat', req, reply));
  const card = () => ({
    id: modelName,
    object: 'model',
    created,
    owned_by: 'gpt2-webgpu',
    max_model_len: scheduler.window,
  });
  app.get('/v1/models', async () => ({ object: 'list', data: [card()] }));
  app.get('/v1/models/*', async (req) => {
    const id = (req.params as { '*': string })['*'];
    if (id !== modelName)
      throw new ApiError(404, `The model '${id}' does not exist`, 'invalid_request_error', 'model', 'model_not_found');
    return card();
  });
  app.get('/health', async () => ({
    status: 'ok',
    model: modelName,
    max_batch: scheduler.maxBatch,
    max_queue: scheduler.maxQueue,
    ...scheduler.stats,
  }));

  return {
    app,
    scheduler,
    modelName,
    async close() {
      await app.close();
      await scheduler.close();
    },
  };
}
