// KV-cache maintenance.
//
// kv_write: for each token t (row r, pos p from meta), copy its key and value from the c_attn
//   output qkv [T, 3C] (k = cols [C, 2C), v = cols [2C, 3C)) to k_cache / v_cache [rows, cap, C] at
//   slot p % cap of row r. A token whose row is >= rows is skipped (defence in depth: no write out
//   of bounds). Two tokens of one step must not map to the same (row, slot): the engine never
//   writes more than cap positions of a row in one step.
//   Work split: one thread per (t, c); flat index e = t * C + c over a 2-D grid of workgroups.
//
// kv_gather: dst[r, s, :] = src[parent[r], s, :] for s < len (beam reordering, or one prefilled
//   row copied to N rows with parent = 0...). src [src_rows, cap, C] and dst [rows, cap, C] are
//   distinct buffers; parent [rows] u32 is written by another GPU kernel. A row's first len slots
//   are contiguous (len * C floats), so the copy is flat: e = r * span + i, i < span = max_len * C;
//   threads with i >= len * C do nothing (len lives in the uniform and may shrink between steps).
//   A parent >= src_rows writes NaN instead of reading out of bounds.

override WG: u32 = 256u;

struct WriteParams {
  T: u32,
  C: u32,
  rows: u32,
  cap: u32,
  groups_x: u32,  // workgroups along dispatch x
}

struct GatherParams {
  rows: u32,      // dst rows
  src_rows: u32,
  cap: u32,
  C: u32,
  len: u32,       // slots to copy (updatable)
  span: u32,      // max_len * C: elements per row the dispatch covers
  groups_x: u32,
  nan_bits: u32,  // 0x7fc00000
}

@group(0) @binding(0) var<uniform> wp: WriteParams;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;             // [T, 3C]
@group(0) @binding(2) var<storage, read> tok_meta: array<u32>;        // [T, 2] (row, pos)
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;   // [rows, cap, C]
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;   // [rows, cap, C]

@compute @workgroup_size(WG)
fn kv_write(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let e = (wg.y * wp.groups_x + wg.x) * WG + lid;
  if (e >= wp.T * wp.C) { return; }
  let t = e / wp.C;
  let c = e - t * wp.C;
  let row = tok_meta[2u * t];
  let pos = tok_meta[2u * t + 1u];
  if (row >= wp.rows) { return; }
  let dst = (row * wp.cap + pos % wp.cap) * wp.C + c;
  let src = t * 3u * wp.C + wp.C + c;
  k_cache[dst] = qkv[src];
  v_cache[dst] = qkv[src + wp.C];
}

@group(0) @binding(0) var<uniform> gp: GatherParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;         // [src_rows, cap, C]
@group(0) @binding(2) var<storage, read> parent: array<u32>;      // [rows]
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;   // [rows, cap, C]

@compute @workgroup_size(WG)
fn kv_gather(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let e = (wg.y * gp.groups_x + wg.x) * WG + lid;
  if (e >= gp.rows * gp.span) { return; }
  let r = e / gp.span;
  let i = e - r * gp.span;
  if (i >= gp.len * gp.C) { return; }
  let src_row = parent[r];
  let row_elems = gp.cap * gp.C;
  if (src_row >= gp.src_rows) {
    dst[r * row_elems + i] = bitcast<f32>(gp.nan_bits);
  } else {
    dst[r * row_elems + i] = src[src_row * row_elems + i];
  }
}
