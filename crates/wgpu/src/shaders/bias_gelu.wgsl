// x[r, c] = gelu(x[r, c] + bias[c]) over rows x cols: exact (erf) GELU, or the tanh form when
// use_tanh != 0. erfc is Numerical Recipes' erfcc (fractional error < 1.2e-7 everywhere), so the
// negative tail keeps its relative accuracy.
// T: the storage type (f32; f16 in the variant the `kernels` module makes); arithmetic is f32.
alias T = f32;
struct Params { x: u32, bias: u32, n: u32, cols: u32, use_tanh: u32 }
var<immediate> p: Params;
@group(0) @binding(0) var<storage, read_write> x: array<T>;
@group(0) @binding(1) var<storage, read_write> bias: array<T>;

fn erfc_nonneg(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806
        + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    return t * exp(-z * z + poly);
}

fn gelu_erf(v: f32) -> f32 {
    // Phi(v) = erfc(-v / sqrt 2) / 2
    let z = v * 0.70710678118654752;
    let c = erfc_nonneg(abs(z));
    let phi = select(1.0 - 0.5 * c, 0.5 * c, z < 0.0);
    return v * phi;
}

fn gelu_tanh(v: f32) -> f32 {
    let u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
    // x * sigmoid(2u) = 0.5 x (1 + tanh u), without tanh's overflow for large |u|
    return v / (1.0 + exp(-2.0 * u));
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i < p.n) {
        let v = f32(x[p.x + i]) + f32(bias[p.bias + i % p.cols]);
        x[p.x + i] = T(select(gelu_erf(v), gelu_tanh(v), p.use_tanh != 0u));
    }
}
