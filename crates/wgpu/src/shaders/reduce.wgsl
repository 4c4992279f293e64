// Appended to the row kernels (LayerNorm, L2 normalisation) by the `kernels` module: a sum over a
// 256-invocation workgroup in a fixed tree order, so every invocation, and every run, gets the same bits.
var<workgroup> partial: array<f32, 256>;

fn workgroup_sum(v: f32, lid: u32) -> f32 {
    workgroupBarrier();
    partial[lid] = v;
    for (var half = 128u; half > 0u; half = half / 2u) {
        workgroupBarrier();
        if (lid < half) {
            partial[lid] = partial[lid] + partial[lid + half];
        }
    }
    workgroupBarrier();
    return partial[0];
}
