// C = alpha * A.B + beta * C (+ bias[n] on every row), batched over [outer, inner], every operand
// strided (see braid_runtime::ops::MatStrides), accumulated in f32: the kernel for products with many
// rows (gemm_small.wgsl takes the few-row ones). Tiles of (16 * TM) x 64 outputs per 16 x 16
// workgroup, TM x 4 per thread (TM is 4 or 8, set when the pipeline is made: the `kernels` module),
// K in steps of 16 through workgroup memory held as vec4 (one 128-bit read gives a thread 4 rows of
// A or 4 columns of B; rows padded by 4 floats against bank conflicts). The next step's tiles are
// read from memory into registers while the current one is multiplied. Each operand's tile is loaded
// along its contiguous axis (k for row-major A or a transposed weight B, m or n otherwise), so
// neighbouring threads read neighbouring words. beta == 0 ignores C's old contents (NaN included).
// T: the storage type (f32; f16 in the variant the `kernels` module makes); arithmetic is f32.
alias T = f32;
struct Params {
    m: u32, n: u32, k: u32, inner: u32,
    a: u32, a_row: i32, a_col: i32, a_outer: i32, a_inner: i32,
    b: u32, b_row: i32, b_col: i32, b_outer: i32, b_inner: i32,
    c: u32, c_row: i32, c_col: i32, c_outer: i32, c_inner: i32,
    bias: u32, has_bias: u32, alpha: f32, beta: f32,
}
var<immediate> p: Params;
@group(0) @binding(0) var<storage, read_write> a: array<T>;
@group(0) @binding(1) var<storage, read_write> b: array<T>;
@group(0) @binding(2) var<storage, read_write> c: array<T>;
@group(0) @binding(3) var<storage, read_write> bias: array<T>;

const TM: u32 = 8u;
const BM: u32 = 16u * TM;
const BN: u32 = 64u;
const BK: u32 = 16u;
const AP: u32 = BM + 4u;
const BP: u32 = BN + 4u;
const A_LOADS: u32 = BM * BK / 256u;
const B_LOADS: u32 = BN * BK / 256u;
const GROUPS: u32 = TM / 4u;
// a_s: [BK][AP] floats, b_s: [BK][BP] floats, as vec4.
var<workgroup> a_s: array<vec4<f32>, BK * AP / 4u>;
var<workgroup> b_s: array<vec4<f32>, BK * BP / 4u>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let outer = i32(wid.z / p.inner);
    let inner = i32(wid.z % p.inner);
    let a_base = i32(p.a) + outer * p.a_outer + inner * p.a_inner;
    let b_base = i32(p.b) + outer * p.b_outer + inner * p.b_inner;
    let c_base = i32(p.c) + outer * p.c_outer + inner * p.c_inner;
    let a_k_major = p.a_col == 1;  // A's k axis is contiguous
    let b_k_major = p.b_row == 1;  // B's k axis is contiguous
    let tx = lid % 16u;
    let ty = lid / 16u;
    var acc: array<vec4<f32>, TM>;
    for (var i = 0u; i < TM; i = i + 1u) {
        acc[i] = vec4<f32>(0.0);
    }
    var ra: array<f32, A_LOADS>;
    var rb: array<f32, B_LOADS>;
    // Where each of this thread's loads lands in the tiles: (row or column, k) per load.
    var a_r: array<u32, A_LOADS>;
    var a_k: array<u32, A_LOADS>;
    var b_c: array<u32, B_LOADS>;
    var b_k: array<u32, B_LOADS>;
    for (var e = 0u; e < A_LOADS; e = e + 1u) {
        let idx = lid + e * 256u;
        a_r[e] = select(idx % BM, idx / BK, a_k_major);
        a_k[e] = select(idx / BM, idx % BK, a_k_major);
    }
    for (var e = 0u; e < B_LOADS; e = e + 1u) {
        let idx = lid + e * 256u;
        b_c[e] = select(idx % BN, idx / BK, b_k_major);
        b_k[e] = select(idx / BN, idx % BK, b_k_major);
    }
    // The first step's tiles.
    for (var e = 0u; e < A_LOADS; e = e + 1u) {
        var v = 0.0;
        if (row0 + a_r[e] < p.m && a_k[e] < p.k) {
            v = f32(a[a_base + i32(row0 + a_r[e]) * p.a_row + i32(a_k[e]) * p.a_col]);
        }
        ra[e] = v;
    }
    for (var e = 0u; e < B_LOADS; e = e + 1u) {
        var v = 0.0;
        if (col0 + b_c[e] < p.n && b_k[e] < p.k) {
            v = f32(b[b_base + i32(b_k[e]) * p.b_row + i32(col0 + b_c[e]) * p.b_col]);
        }
        rb[e] = v;
    }
    for (var k0 = 0u; k0 < p.k; k0 = k0 + BK) {
        for (var e = 0u; e < A_LOADS; e = e + 1u) {
            let f = a_k[e] * AP + a_r[e];
            a_s[f / 4u][f % 4u] = ra[e];
        }
        for (var e = 0u; e < B_LOADS; e = e + 1u) {
            let f = b_k[e] * BP + b_c[e];
            b_s[f / 4u][f % 4u] = rb[e];
        }
        workgroupBarrier();
        let next = k0 + BK;
        if (next < p.k) {
            for (var e = 0u; e < A_LOADS; e = e + 1u) {
                var v = 0.0;
                if (row0 + a_r[e] < p.m && next + a_k[e] < p.k) {
                    v = f32(a[a_base + i32(row0 + a_r[e]) * p.a_row + i32(next + a_k[e]) * p.a_col]);
                }
                ra[e] = v;
            }
            for (var e = 0u; e < B_LOADS; e = e + 1u) {
                var v = 0.0;
                if (col0 + b_c[e] < p.n && next + b_k[e] < p.k) {
                    v = f32(b[b_base + i32(next + b_k[e]) * p.b_row + i32(col0 + b_c[e]) * p.b_col]);
                }
                rb[e] = v;
            }
        }
        for (var kk = 0u; kk < BK; kk = kk + 1u) {
            let bv = b_s[kk * (BP / 4u) + tx];
            for (var g = 0u; g < GROUPS; g = g + 1u) {
                let av = a_s[kk * (AP / 4u) + g * 16u + ty];
                acc[g * 4u] = fma(vec4<f32>(av.x), bv, acc[g * 4u]);
                acc[g * 4u + 1u] = fma(vec4<f32>(av.y), bv, acc[g * 4u + 1u]);
                acc[g * 4u + 2u] = fma(vec4<f32>(av.z), bv, acc[g * 4u + 2u]);
                acc[g * 4u + 3u] = fma(vec4<f32>(av.w), bv, acc[g * 4u + 3u]);
            }
        }
        workgroupBarrier();
    }
    for (var g = 0u; g < GROUPS; g = g + 1u) {
        for (var i = 0u; i < 4u; i = i + 1u) {
            let r = row0 + g * 64u + ty * 4u + i;
            if (r < p.m) {
                let out = acc[g * 4u + i];
                for (var j = 0u; j < 4u; j = j + 1u) {
                    let col = col0 + tx * 4u + j;
                    if (col < p.n) {
                        let at = c_base + i32(r) * p.c_row + i32(col) * p.c_col;
                        var v = p.alpha * out[j];
                        if (p.beta != 0.0) {
                            v = v + p.beta * f32(c[at]);
                        }
                        if (p.has_bias != 0u) {
                            v = v + f32(bias[p.bias + col]);
                        }
                        c[at] = T(v);
                    }
                }
            }
        }
    }
}
