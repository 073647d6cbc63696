/** float64 reference: per-row log-softmax of a target id, the argmax and the top-N (id, log-prob). */

export interface RowLogprobs64 {
  logprob: number;
  argmax: number;
  top: Array<{ id: number; logprob: number }>;
}

export function logprobs64(
  x: ArrayLike<number>,
  rows: number,
  V: number,
  targets: number[],
  top: number,
): RowLogprobs64[] {
  const res: RowLogprobs64[] = [];
  for (let r = 0; r < rows; r++) {
    const row = Array.from({ length: V }, (_, i) => x[r * V + i]!);
    const m = Math.max(...row.filter((v) => !Number.isNaN(v)));
    let s = 0;
    for (const v of row) s += Math.exp(v - m);
    const lse = m + Math.log(s);
    // (value desc, id asc); NaN last
    const order = row
      .map((v, id) => ({ v, id }))
      .filter((e) => !Number.isNaN(e.v))
      .sort((a, b) => b.v - a.v || a.id - b.id);
    const t = targets[r]!;
    res.push({
      logprob: t < V ? row[t]! - lse : NaN,
      argmax: order[0]!.id,
      top: order.slice(0, top).map((e) => ({ id: e.id, logprob: e.v - lse })),
    });
  }
  return res;
}
