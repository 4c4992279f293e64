// One workgroup per row of scores [batch, heads, q, k] (mask f32), in place: keys with mask[b, j] == 0 get
// probability 0; a fully masked row is zeros. The maximum propagates NaN (tested on the bits, which
// no fast-math assumption removes), so a NaN score makes its row NaN rather than being skipped.
// T: the storage type (f32; f16 in the variant the `kernels` module makes); arithmetic is f32.
alias T = f32;
struct Params { scores: u32, mask: u32, rows: u32, rows_per_batch: u32, k: u32, scale: f32 }
var<immediate> p: Params;
@group(0) @binding(0) var<storage, read_write> scores: array<T>;
@group(0) @binding(1) var<storage, read_write> mask: array<f32>;

var<workgroup> partial: array<f32, 128>;

fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

fn max_nan(a: f32, b: f32) -> f32 {
    return select(b, a, a > b || is_nan(a));
}

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.rows) {
        return;
    }
    let r = p.scores + row * p.k;
    let m = p.mask + (row / p.rows_per_batch) * p.k;
    var top = bitcast<f32>(0xff800000u);
    for (var j = lid; j < p.k; j = j + 128u) {
        if (mask[m + j] != 0.0) {
            top = max_nan(top, f32(scores[r + j]) * p.scale);
        }
    }
    partial[lid] = top;
    for (var half = 64u; half > 0u; half = half / 2u) {
        workgroupBarrier();
        if (lid < half) {
            partial[lid] = max_nan(partial[lid], partial[lid + half]);
        }
    }
    workgroupBarrier();
    top = partial[0];
    var sum = 0.0;
    for (var j = lid; j < p.k; j = j + 128u) {
        if (mask[m + j] != 0.0) {
            sum = sum + exp(f32(scores[r + j]) * p.scale - top);
        }
    }
    workgroupBarrier();
    partial[lid] = sum;
    for (var half = 64u; half > 0u; half = half / 2u) {
        workgroupBarrier();
        if (lid < half) {
            partial[lid] = partial[lid] + partial[lid + half];
        }
    }
    workgroupBarrier();
    sum = partial[0];
    // 0 only when every key is masked; NaN stays NaN.
    let inv = select(1.0 / sum, 0.0, sum == 0.0);
    for (var j = lid; j < p.k; j = j + 128u) {
        var v = 0.0;
        if (mask[m + j] != 0.0) {
            v = exp(f32(scores[r + j]) * p.scale - top) * inv;
        }
        scores[r + j] = T(v);
    }
}
