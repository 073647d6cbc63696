/** float64 references: row-wise softmax and argmax over [rows, V]. */

export function softmax64(x: ArrayLike<number>, rows: number, V: number): Float64Array {
  const y = new Float64Array(rows * V);
  for (let r = 0; r < rows; r++) {
    let m = -Infinity;
    for (let i = 0; i < V; i++) m = Math.max(m, x[r * V + i]!);
    let s = 0;
    for (let i = 0; i < V; i++) s += Math.exp(x[r * V + i]! - m);
    for (let i = 0; i < V; i++) y[r * V + i] = Math.exp(x[r * V + i]! - m) / s;
  }
  return y;
}

/** First index of each row's maximum, NaN ignored; 0xFFFFFFFF for a row with no non-NaN value. */
export function argmax64(x: ArrayLike<number>, rows: number, V: number): Uint32Array {
  const out = new Uint32Array(rows);
  for (let r = 0; r < rows; r++) {
    let best = -Infinity;
    let bi = 0xffffffff;
    for (let i = 0; i < V; i++) {
      const v = x[r * V + i]!;
      if (v > best || (v === best && bi === 0xffffffff)) {
        best = v;
        bi = i;
      }
    }
    out[r] = bi;
  }
  return out;
}
