// One workgroup per row: x /= max(|x|, 1e-12), the sum of squares reduced in a fixed tree order
// (workgroup_sum, reduce.wgsl).
// T: the storage type (f32; f16 in the variant the `kernels` module makes); arithmetic is f32.
alias T = f32;
struct Params { x: u32, rows: u32, dim: u32 }
var<immediate> p: Params;
@group(0) @binding(0) var<storage, read_write> x: array<T>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.rows) {
        return;
    }
    let base = p.x + row * p.dim;
    var s = 0.0;
    for (var c = lid; c < p.dim; c = c + 256u) {
        let v = f32(x[base + c]);
        s = s + v * v;
    }
    let inv = 1.0 / max(sqrt(workgroup_sum(s, lid)), 1e-12);
    for (var c = lid; c < p.dim; c = c + 256u) {
        x[base + c] = T(f32(x[base + c]) * inv);
    }
}
