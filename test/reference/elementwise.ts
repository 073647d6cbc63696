/** float64 references for the elementwise kernels. */

/** GPT-2's gelu_new (tanh approximation), as in HF's NewGELUActivation. */
export function gelu64(x: ArrayLike<number>): Float64Array {
  const y = new Float64Array(x.length);
  const k = Math.sqrt(2 / Math.PI);
  for (let i = 0; i < x.length; i++) {
    const v = x[i]!;
    y[i] = 0.5 * v * (1 + Math.tanh(k * (v + 0.044715 * v * v * v)));
  }
  return y;
}

export function add64(a: ArrayLike<number>, b: ArrayLike<number>): Float64Array {
  const y = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) y[i] = a[i]! + b[i]!;
  return y;
}

/** out[i, :] = x[idx[i], :]; an index >= rows gives a NaN row. */
export function gatherRows64(x: ArrayLike<number>, rows: number, C: number, idx: ArrayLike<number>): Float64Array {
  const y = new Float64Array(idx.length * C);
  for (let i = 0; i < idx.length; i++) {
    const s = idx[i]!;
    for (let c = 0; c < C; c++) y[i * C + c] = s < rows ? x[s * C + c]! : NaN;
  }
  return y;
}
