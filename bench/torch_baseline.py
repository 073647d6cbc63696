#!/usr/bin/env python3
"""PyTorch-on-CPU baseline for `gpt2-webgpu bench`: a plain GPT-2 (eager, float32, KV cache) with
random weights of a named shape, timing prefill and decode ms/token the same way the engine's
bench does (median over runs). Needs Debian's python3-torch (apt-get install python3-torch).

    python3 bench/torch_baseline.py --model gpt2 --threads 2 --prompt-tokens 128 --new-tokens 32 --repeat 3
"""
import argparse, json, math, statistics, time
import torch as t

SHAPES = {
    'gpt2': (12, 768, 12), 'gpt2-medium': (24, 1024, 16), 'gpt2-large': (36, 1280, 20),
    'gpt2-xl': (48, 1600, 25), 'distilgpt2': (6, 768, 12),
}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--model', default='gpt2', choices=SHAPES)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--prompt-tokens', type=int, default=128)
    ap.add_argument('--new-tokens', type=int, default=32)
    ap.add_argument('--repeat', type=int, default=3)
    a = ap.parse_args()
    t.set_num_threads(a.threads)
    t.manual_seed(0)
    L, C, H = SHAPES[a.model]
    V, P = 50257, 1024
    D = C // H
    g = lambda *s: t.randn(*s) * 0.02
    wte, wpe = g(V, C), g(P, C)
    layers = [dict(ln1=(t.ones(C), t.zeros(C)), attn=(g(C, 3 * C), t.zeros(3 * C)), proj=(g(C, C), t.zeros(C)),
                   ln2=(t.ones(C), t.zeros(C)), fc=(g(C, 4 * C), t.zeros(4 * C)), fc2=(g(4 * C, C), t.zeros(C))) for _ in range(L)]
    lnf = (t.ones(C), t.zeros(C))
    ln = lambda x, p: t.nn.functional.layer_norm(x, (C,), p[0], p[1], 1e-5)
    gelu = lambda x: t.nn.functional.gelu(x, approximate='tanh')

    def forward(ids, pos0, cache):
        T = ids.shape[0]
        x = wte[ids] + wpe[pos0:pos0 + T]
        for l, w in enumerate(layers):
            q, k, v = (ln(x, w['ln1']) @ w['attn'][0] + w['attn'][1]).split(C, dim=-1)
            k, v = k.view(T, H, D).transpose(0, 1), v.view(T, H, D).transpose(0, 1)
            if l in cache:
                k, v = t.cat([cache[l][0], k], 1), t.cat([cache[l][1], v], 1)
            cache[l] = (k, v)
            q = q.view(T, H, D).transpose(0, 1)
            s = (q @ k.transpose(1, 2)) / math.sqrt(D)
            S = k.shape[1]
            mask = t.ones(T, S, dtype=t.bool).tril(S - T)
            a = s.masked_fill(~mask, float('-inf')).softmax(-1) @ v
            x = x + a.transpose(0, 1).reshape(T, C) @ w['proj'][0] + w['proj'][1]
            x = x + gelu(ln(x, w['ln2']) @ w['fc'][0] + w['fc'][1]) @ w['fc2'][0] + w['fc2'][1]
        return ln(x[-1:], lnf) @ wte.T

    prompt = t.tensor([(i * 7919 + 13) % (V - 1) for i in range(a.prompt_tokens)])
    prefill, decode = [], []
    with t.inference_mode():
        for r in range(a.repeat + 1):
            cache = {}
            t0 = time.perf_counter()
            logits = forward(prompt, 0, cache)
            tok = int(logits.argmax())
            t1 = time.perf_counter()
            for i in range(a.new_tokens - 1):
                tok = int(forward(t.tensor([tok]), a.prompt_tokens + i, cache).argmax())
            t2 = time.perf_counter()
            if r == 0:
                continue  # warm-up
            prefill.append((t1 - t0) * 1000)
            decode.append((t2 - t1) * 1000 / (a.new_tokens - 1))
    print(json.dumps({'torch': t.__version__, 'threads': a.threads, 'model': a.model, 'prompt_tokens': a.prompt_tokens,
                      'new_tokens': a.new_tokens, 'prefill_ms': statistics.median(prefill),
                      'decode_ms_per_token': statistics.median(decode), 'decode_ms_per_token_all': decode}))

if __name__ == '__main__':
    main()
