// out[i, :] (+)= table[ids[i], :] over n_ids x dim; an id out of range writes NaN (the tensor
// layer checks ids first).
// T: the storage type (f32; f16 in the variant the `kernels` module makes); arithmetic is f32.
alias T = f32;
struct Params { table: u32, ids: u32, out: u32, n: u32, dim: u32, table_rows: u32, accumulate: u32 }
var<immediate> p: Params;
@group(0) @binding(0) var<storage, read_write> table: array<T>;
@group(0) @binding(1) var<storage, read_write> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<T>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i < p.n) {
        let id = ids[p.ids + i / p.dim];
        var v = bitcast<f32>(0x7fc00000u);
        if (id < p.table_rows) {
            v = f32(table[p.table + id * p.dim + i % p.dim]);
        }
        if (p.accumulate != 0u) {
            v = v + f32(out[p.out + i]);
        }
        out[p.out + i] = T(v);
    }
}
