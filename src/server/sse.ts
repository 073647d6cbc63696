/**
 * Server-sent events on a hijacked fastify reply: `data: {json}\n\n` per chunk, `data: [DONE]\n\n`
 * at the end. The headers go out with the first chunk, so that a request refused before anything
 * was generated (a full queue, a failure) still gets a plain JSON error with its status.
 */
import type { FastifyReply } from 'fastify';

export class SseStream {
  private open = false;
  constructor(private readonly reply: FastifyReply) {}

  get started(): boolean {
    return this.open;
  }

  private begin(): void {
    if (this.open) return;
    this.open = true;
    this.reply.hijack();
    this.reply.raw.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
  }

  send(data: unknown): void {
    this.begin();
    if (!this.reply.raw.destroyed) this.reply.raw.write(`data: ${JSON.stringify(data)}\n\n`);
  }

  end(): void {
    this.begin();
    if (!this.reply.raw.destroyed) this.reply.raw.end('data: [DONE]\n\n');
  }
}
