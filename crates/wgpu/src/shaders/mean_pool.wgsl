// out[b, d] = sum_s x[b, s, d] * mask[b, s] / max(sum_s mask[b, s], 1e-9) (mask f32). One thread per
// (b, d), the sequence summed in order (deterministic).
// T: the storage type (f32; f16 in the variant the `kernels` module makes); arithmetic is f32.
alias T = f32;
struct Params { x: u32, mask: u32, out: u32, batch: u32, seq: u32, dim: u32 }
var<immediate> p: Params;
@group(0) @binding(0) var<storage, read_write> x: array<T>;
@group(0) @binding(1) var<storage, read_write> mask: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<T>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i < p.batch * p.dim) {
        let b = i / p.dim;
        let d = i % p.dim;
        var acc = 0.0;
        var count = 0.0;
        for (var s = 0u; s < p.seq; s = s + 1u) {
            let m = mask[p.mask + b * p.seq + s];
            if (m != 0.0) {
                acc = acc + m * f32(x[p.x + (b * p.seq + s) * p.dim + d]);
            }
            count = count + m;
        }
        out[p.out + i] = T(acc / max(count, 1e-9));
    }
}
