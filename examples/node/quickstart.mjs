// Node quickstart (the README's, runnable): node examples/node/quickstart.mjs [model] [prompt]
// model: gpt2 (downloaded once into the HF cache), random:gpt2 (offline), or a local HF folder.
import { createEngine } from 'gpt2-webgpu';

const [source = 'random:gpt2', prompt = 'The meaning of life is'] = process.argv.slice(2);
const engine = await createEngine();
try {
  const model = await engine.loadModel(source);
  const res = await model.generate(prompt, { maxNewTokens: 20, temperature: 0.7, topP: 0.95, seed: 1 });
  console.log(JSON.stringify({ text: res.sequences[0].text, tokens: res.sequences[0].tokens, seed: res.seed }));
  for await (const t of model.stream(prompt, { maxNewTokens: 10, temperature: 0 })) process.stderr.write(t.text);
  process.stderr.write('\n');
  model.destroy();
} finally {
  engine.destroy();
}
