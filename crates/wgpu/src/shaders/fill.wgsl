// x[i] = value for i < n (f32). One thread per element over a 2-D grid of 256-thread workgroups.
struct Params { x: u32, n: u32, value: f32 }
var<immediate> p: Params;
@group(0) @binding(0) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i < p.n) {
        x[p.x + i] = p.value;
    }
}
