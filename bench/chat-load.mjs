// Closed-loop chat load: U users, each sending its next message as soon as its reply came, T turns
// each, replies of various lengths (6..20 new tokens, fixed per user and turn, no EOS stop). Run
// two ways on one model, alternated: U separate sessions (their steps interleave on the queue), and
// one session group of U (merged runs, finished turns' places taken by arriving ones: continuous
// batching). Reports wall time, tokens/s and queue submits of each, and how many turns shared steps.
//   node bench/chat-load.mjs [--model random:gpt2] [--users 4] [--turns 4] [--f16] [--json]
import { createEngine } from 'gpt2-webgpu';
import { bool, flags, int, parseOrExit, str } from './flags.mjs';

const USAGE = 'usage: node bench/chat-load.mjs [--model M] [--users U] [--turns T] [--f16] [--json]';
function parse(argv) {
  const f = flags(argv, {
    model: str('random:gpt2'),
    users: str('4'),
    turns: str('4'),
    f16: bool,
    json: bool,
  });
  return { ...f, users: int('--users', f.users, 1, 256), turns: int('--turns', f.turns, 1, 256) };
}

/** New tokens of user u's turn t: 6..20, spread so that turns end at different steps. */
const newTokens = (u, t) => 6 + ((u * 7 + t * 5) % 15);

async function load(model, users, turns, grouped) {
  const capacity = 32 + turns * 24; // every turn: <= 4 prompt tokens, <= 20 new ones
  const group = grouped ? await model.createSessionGroup(users, { capacity }) : undefined;
  const sessions = group
    ? group.sessions
    : await Promise.all(Array.from({ length: users }, () => model.createSession({ capacity })));
  const submits0 = model.ctx.stats.submits;
  const t0 = performance.now();
  let tokens = 0;
  let shared = 0;
  try {
    await Promise.all(
      sessions.map(async (s, u) => {
        for (let t = 0; t < turns; t++) {
          const r = await s.generate([100 + u, 200 + t, 300], {
            maxNewTokens: newTokens(u, t),
            temperature: 0.8,
            topK: 40,
            seed: 1000 * u + t,
            stopAtEos: false,
          });
          tokens += r.sequences[0].tokens.length;
          if (r.stats.batchRows > 1) shared++;
        }
      }),
    );
    await group?.idle();
    const ms = performance.now() - t0;
    return {
      ms,
      tokens,
      tokens_per_s: (1000 * tokens) / ms,
      submits: model.ctx.stats.submits - submits0,
      turns_sharing_steps: shared,
    };
  } finally {
    if (group) group.destroy();
    else for (const s of sessions) s.destroy();
  }
}

const opts = parseOrExit('bench/chat-load.mjs', USAGE, () => parse(process.argv.slice(2)));
const engine = await createEngine();
try {
  const model = await engine.loadModel(opts.model, opts.f16 ? { dtype: 'f16' } : {});
  if (!opts.json)
    console.log(
      `${opts.model} (${opts.f16 ? 'f16' : 'f32'}), adapter: ${engine.ctx.adapter.description || engine.ctx.adapter.vendor}; ${opts.users} users x ${opts.turns} turns`,
    );
  await load(model, Math.min(opts.users, 2), 1, true); // warm-up: every pipeline and plan shape once
  const separate = await load(model, opts.users, opts.turns, false);
  const group = await load(model, opts.users, opts.turns, true);
  const report = {
    date: new Date().toISOString(),
    model: opts.model,
    dtype: opts.f16 ? 'f16' : 'f32',
    adapter: engine.ctx.adapter,
    users: opts.users,
    turns: opts.turns,
    separate,
    group,
  };
  if (opts.json) console.log(JSON.stringify(report));
  else {
    for (const [name, x] of [
      ['separate sessions', separate],
      ['one session group', group],
    ]) {
      console.log(
        `${name.padEnd(18)} ${x.tokens} tokens in ${x.ms.toFixed(0)} ms: ${x.tokens_per_s.toFixed(1)} tokens/s, ${x.submits} submits, ${x.turns_sharing_steps} of ${opts.users * opts.turns} turns shared steps`,
      );
    }
  }
  model.destroy();
} finally {
  engine.destroy();
}
