/**
 * float64 references for attention and the KV-cache kernels, written against the *logical* history
 * of each row (keys/values per absolute position), not the cache's slot layout, so the kernels'
 * ring indexing is checked rather than mirrored.
 */

/** Keys and values of one row by absolute position: k[pos] and v[pos] are [C] arrays. */
export interface RowHistory {
  k: Float64Array[];
  v: Float64Array[];
}

/**
 * Causal attention of each query t (row[t], pos[t]) over positions max(0, p - cap + 1)..p of its
 * row's history: out[t, h*D + d] = sum_j softmax_j(q_h . k_j,h / sqrt(D)) v_j,h[d]. q is cols [0, C)
 * of qkv [T, 3C]. Returns [T, C].
 */
export function attention64(
  qkv: ArrayLike<number>,
  T: number,
  C: number,
  nHead: number,
  cap: number,
  rows: ArrayLike<number>,
  pos: ArrayLike<number>,
  hist: RowHistory[],
): Float64Array {
  const D = C / nHead;
  const out = new Float64Array(T * C);
  for (let t = 0; t < T; t++) {
    const h0 = hist[rows[t]!]!;
    const p = pos[t]!;
    const lo = Math.max(0, p - cap + 1);
    for (let h = 0; h < nHead; h++) {
      const s: number[] = [];
      for (let j = lo; j <= p; j++) {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += qkv[t * 3 * C + h * D + d]! * h0.k[j]![h * D + d]!;
        s.push(dot / Math.sqrt(D));
      }
      const m = Math.max(...s);
      const e = s.map((x) => Math.exp(x - m));
      const z = e.reduce((a, b) => a + b, 0);
      for (let d = 0; d < D; d++) {
        let acc = 0;
        for (let j = lo; j <= p; j++) acc += e[j - lo]! * h0.v[j]![h * D + d]!;
        out[t * C + h * D + d] = acc / z;
      }
    }
  }
  return out;
}

/** dst[r, s, :] = src[parent[r], s, :] for s < len; other slots keep `dstInit`; parent >= srcRows gives NaN. */
export function kvGather64(
  src: ArrayLike<number>,
  srcRows: number,
  dstInit: ArrayLike<number>,
  rows: number,
  cap: number,
  C: number,
  parent: ArrayLike<number>,
  len: number,
): Float64Array {
  const out = Float64Array.from(dstInit);
  for (let r = 0; r < rows; r++) {
    const pr = parent[r]!;
    for (let i = 0; i < len * C; i++) out[r * cap * C + i] = pr < srcRows ? src[pr * cap * C + i]! : NaN;
  }
  return out;
}
