/** float64 reference for the linear layers: out[M, N] = x[M, K] @ W (+ bias) (gelu_new) (+ base). */

/** GPT-2's gelu_new in float64. */
export function geluNew64(v: number): number {
  return 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v)));
}

export interface Matmul64Opts {
  layout: 'kn' | 'nk'; // 'kn': w is [K, N]; 'nk': w is [N, K]
  bias?: ArrayLike<number>; // [N]
  gelu?: boolean;
  base?: ArrayLike<number>; // [M, N], added last (accumulate)
  cols?: readonly number[]; // compute only these output columns (result is [M, cols.length])
}

/** Returns [M, N] (or [M, cols.length]) in float64. */
export function matmul64(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  M: number,
  K: number,
  N: number,
  o: Matmul64Opts,
): Float64Array {
  const cols = o.cols ?? Array.from({ length: N }, (_, i) => i);
  const C = cols.length;
  const y = new Float64Array(M * C);
  for (let m = 0; m < M; m++) {
    for (let ci = 0; ci < C; ci++) {
      const n = cols[ci]!;
      let s = 0;
      if (o.layout === 'kn') for (let k = 0; k < K; k++) s += x[m * K + k]! * w[k * N + n]!;
      else for (let k = 0; k < K; k++) s += x[m * K + k]! * w[n * K + k]!;
      if (o.bias) s += o.bias[n]!;
      if (o.gelu) s = geluNew64(s);
      if (o.base) s += o.base[m * N + n]!;
      y[m * C + ci] = s;
    }
  }
  return y;
}
