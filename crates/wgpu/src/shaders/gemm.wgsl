// C = alpha * A.B + beta * C (+ bias[n] on every row), batched over [outer, inner], every operand
// strided (see braid_runtime::ops::MatStrides), accumulated in f32. Tiles of (16 * ROWS) x 64 outputs per 16 x 16
// workgroup, ROWS x 4 per thread, K in steps of 32 through workgroup memory (16 KiB of it for the general kernel). ROWS is set when the
// pipeline is made (the `kernels` module): 4 for the general kernel, 1 for products of at most 16 rows,
// so a short batch wastes no tile rows. Each operand's tile is loaded along its
// contiguous axis (k for row-major A or a transposed weight B, m or n otherwise), so neighbouring
// threads read neighbouring words. beta == 0 ignores C's old contents (NaN included).
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

const ROWS: u32 = 4u;
const TM: u32 = 16u * ROWS;
const TN: u32 = 64u;
const DEPTH: u32 = 32u;
// [DEPTH][TM] and [DEPTH][TN]: a_tile[kk * TM + row], b_tile[kk * TN + col]
var<workgroup> a_tile: array<f32, TM * DEPTH>;
var<workgroup> b_tile: array<f32, DEPTH * TN>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row0 = wid.y * TM;
    let col0 = wid.x * TN;
    let outer = i32(wid.z / p.inner);
    let inner = i32(wid.z % p.inner);
    let a_base = i32(p.a) + outer * p.a_outer + inner * p.a_inner;
    let b_base = i32(p.b) + outer * p.b_outer + inner * p.b_inner;
    let c_base = i32(p.c) + outer * p.c_outer + inner * p.c_inner;
    let a_k_major = p.a_col == 1;  // A's k axis is contiguous
    let b_k_major = p.b_row == 1;  // B's k axis is contiguous
    let tr = lid3.y * ROWS;
    let tc = lid3.x * 4u;
    var acc: array<f32, 4u * ROWS>;
    for (var i = 0u; i < 4u * ROWS; i = i + 1u) {
        acc[i] = 0.0;
    }
    for (var k0 = 0u; k0 < p.k; k0 = k0 + DEPTH) {
        for (var e = 0u; e < ROWS * 2u; e = e + 1u) {
            let idx = lid + e * 256u;
            var r = idx % TM;
            var kk = idx / TM;
            if (a_k_major) {
                r = idx / DEPTH;
                kk = idx % DEPTH;
            }
            var va = 0.0;
            if (row0 + r < p.m && k0 + kk < p.k) {
                va = f32(a[a_base + i32(row0 + r) * p.a_row + i32(k0 + kk) * p.a_col]);
            }
            a_tile[kk * TM + r] = va;
        }
        for (var e = 0u; e < 8u; e = e + 1u) {
            let idx = lid + e * 256u;
            var cc = idx % TN;
            var kb = idx / TN;
            if (b_k_major) {
                cc = idx / DEPTH;
                kb = idx % DEPTH;
            }
            var vb = 0.0;
            if (col0 + cc < p.n && k0 + kb < p.k) {
                vb = f32(b[b_base + i32(k0 + kb) * p.b_row + i32(col0 + cc) * p.b_col]);
            }
            b_tile[kb * TN + cc] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < DEPTH; kk = kk + 1u) {
            let b0 = b_tile[kk * TN + tc];
            let b1 = b_tile[kk * TN + tc + 1u];
            let b2 = b_tile[kk * TN + tc + 2u];
            let b3 = b_tile[kk * TN + tc + 3u];
            for (var i = 0u; i < ROWS; i = i + 1u) {
                let av = a_tile[kk * TM + tr + i];
                acc[i * 4u] = acc[i * 4u] + av * b0;
                acc[i * 4u + 1u] = acc[i * 4u + 1u] + av * b1;
                acc[i * 4u + 2u] = acc[i * 4u + 2u] + av * b2;
                acc[i * 4u + 3u] = acc[i * 4u + 3u] + av * b3;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < ROWS; i = i + 1u) {
        let r = row0 + tr + i;
        if (r >= p.m) {
            break;
        }
        for (var j = 0u; j < 4u; j = j + 1u) {
            let col = col0 + tc + j;
            if (col < p.n) {
                let at = c_base + i32(r) * p.c_row + i32(col) * p.c_col;
                var v = p.alpha * acc[i * 4u + j];
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
