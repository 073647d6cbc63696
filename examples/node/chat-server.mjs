// Many conversations served from one model, as a chat server would (runnable):
//   node examples/node/chat-server.mjs [model] [conversations]
// Each user has a session of one session group; requests that arrive together (here: one round
// of messages, one per user) are answered in shared batched steps, each with the tokens it would
// get alone. Prints one JSON line per round: what each user got, and how many turns shared steps.
import { createEngine } from 'gpt2-webgpu';

const [source = 'random:gpt2', count = '4'] = process.argv.slice(2);
const users = Number(count);
const engine = await createEngine();
try {
  const model = await engine.loadModel(source);
  const group = await model.createSessionGroup(users, { capacity: 256 });
  const rounds = [(u) => `User ${u} says hello.`, (u) => ` User ${u} asks what happens next.`];
  for (const [i, message] of rounds.entries()) {
    // The request handlers of one round, started together: their turns merge into one run.
    const replies = await Promise.all(
      group.sessions.map((session, u) =>
        session.generate(message(u), { maxNewTokens: 12, temperature: 0.8, topK: 40, seed: 100 * i + u }),
      ),
    );
    console.log(
      JSON.stringify({
        round: i,
        replies: replies.map((r) => ({ text: r.sequences[0].text, tokens: r.sequences[0].tokens, seed: r.seed })),
        batch_rows: replies.map((r) => r.stats.batchRows),
        context_tokens: group.sessions.map((s) => s.tokens.length),
      }),
    );
  }
  await group.idle(); // turns resolve as each is done; let the last run end and free what it made
  group.destroy();
  model.destroy();
} finally {
  engine.destroy();
}
