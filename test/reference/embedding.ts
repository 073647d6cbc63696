/**
 * float64 reference: out[t, :] = wte[ids[t], :] + wpe[pos[t], :] over plain (unpacked) [V, C] and
 * [nPos, C] values; an id >= V or pos >= nPos gives a NaN row (the kernel's defence in depth).
 */
export function embedding64(
  wte: ArrayLike<number>,
  V: number,
  wpe: ArrayLike<number>,
  nPos: number,
  C: number,
  ids: ArrayLike<number>,
  pos: ArrayLike<number>,
): Float64Array {
  const T = ids.length;
  const out = new Float64Array(T * C);
  for (let t = 0; t < T; t++) {
    const id = ids[t]!,
      p = pos[t]!;
    for (let c = 0; c < C; c++) out[t * C + c] = id < V && p < nPos ? wte[id * C + c]! + wpe[p * C + c]! : NaN;
  }
  return out;
}
