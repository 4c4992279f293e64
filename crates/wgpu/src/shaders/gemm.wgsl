// C = alpha * A.B + beta * C (+ bias[n] on every row), batched over [outer, inner], every operand
// strided (see braid_runtime::ops::MatStrides), accumulated in f32: the kernel for products with many
// rows (gemm_small.wgsl takes the few-row ones). Tiles of (64 * GROUPS) x 64 outputs per workgroup of
// 256, (4 * GROUPS) x 4 per thread (GROUPS is 1 or 2, set when the pipeline is made: the `kernels`
// module), K in steps of 16 through workgroup memory held as vec4 (one 128-bit read gives a thread 4
// rows of A or 4 columns of B; rows padded by 4 floats against bank conflicts). The next step's tiles
// are read from memory into registers while the current one is multiplied. Each operand's tile is
// loaded along its contiguous axis (k for row-major A or a transposed weight B, m or n otherwise), so
// neighbouring threads read neighbouring words. beta == 0 ignores C's old contents (NaN included).
// `// unroll` blocks are expanded by the `kernels` module (drivers do not unroll WGSL's loops: an array
// indexed in a loop lives in slow local memory), so every accumulator and load is a register.
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

const GROUPS: u32 = 2u;
const BM: u32 = 64u * GROUPS;
const BN: u32 = 64u;
const BK: u32 = 16u;
const AP: u32 = BM + 4u;
const BP: u32 = BN + 4u;
// a_s: [BK][AP] floats, b_s: [BK][BP] floats, as vec4.
var<workgroup> a_s: array<vec4<f32>, BK * AP / 4u>;
var<workgroup> b_s: array<vec4<f32>, BK * BP / 4u>;

// A[row0 + r, k] (0 outside A).
fn load_a(base: i32, r: u32, k: u32) -> f32 {
    if (r < p.m && k < p.k) {
        return f32(a[base + i32(r) * p.a_row + i32(k) * p.a_col]);
    }
    return 0.0;
}

// B[k, col] (0 outside B).
fn load_b(base: i32, k: u32, col: u32) -> f32 {
    if (col < p.n && k < p.k) {
        return f32(b[base + i32(k) * p.b_row + i32(col) * p.b_col]);
    }
    return 0.0;
}

// Row r, columns col .. col + 3 of C from their sums.
fn store_row(base: i32, r: u32, col: u32, sums: vec4<f32>) {
    if (r >= p.m) {
        return;
    }
    // unroll j 4
    if (col + {j}u < p.n) {
        let at = base + i32(r) * p.c_row + i32(col + {j}u) * p.c_col;
        var v = p.alpha * sums[{j}];
        if (p.beta != 0.0) {
            v = v + p.beta * f32(c[at]);
        }
        if (p.has_bias != 0u) {
            v = v + f32(bias[p.bias + col + {j}u]);
        }
        c[at] = T(v);
    }
    // end unroll
}

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
    // unroll g GROUPS
    // unroll i 4
    var acc{g}{i} = vec4<f32>(0.0);
    // end unroll
    // end unroll
    // This thread's loads: A's tile has 4 * GROUPS per thread, B's 4; each at (row or column, k).
    // unroll e 4
    // unroll g GROUPS
    let ia{g}{e} = lid + (4u * {g}u + {e}u) * 256u;
    let ar{g}{e} = select(ia{g}{e} % BM, ia{g}{e} / BK, a_k_major);
    let ak{g}{e} = select(ia{g}{e} / BM, ia{g}{e} % BK, a_k_major);
    let af{g}{e} = ak{g}{e} * AP + ar{g}{e};
    var ra{g}{e} = load_a(a_base, row0 + ar{g}{e}, ak{g}{e});
    // end unroll
    let ib{e} = lid + {e}u * 256u;
    let bc{e} = select(ib{e} % BN, ib{e} / BK, b_k_major);
    let bk{e} = select(ib{e} / BN, ib{e} % BK, b_k_major);
    let bf{e} = bk{e} * BP + bc{e};
    var rb{e} = load_b(b_base, bk{e}, col0 + bc{e});
    // end unroll
    for (var k0 = 0u; k0 < p.k; k0 = k0 + BK) {
        // unroll e 4
        // unroll g GROUPS
        a_s[af{g}{e} / 4u][af{g}{e} % 4u] = ra{g}{e};
        // end unroll
        b_s[bf{e} / 4u][bf{e} % 4u] = rb{e};
        // end unroll
        workgroupBarrier();
        let next = k0 + BK;
        if (next < p.k) {
            // unroll e 4
            // unroll g GROUPS
            ra{g}{e} = load_a(a_base, row0 + ar{g}{e}, next + ak{g}{e});
            // end unroll
            rb{e} = load_b(b_base, next + bk{e}, col0 + bc{e});
            // end unroll
        }
        // unroll kk 16
        {
            let bv = b_s[{kk}u * (BP / 4u) + tx];
            // unroll g GROUPS
            let av{g} = a_s[{kk}u * (AP / 4u) + {g}u * 16u + ty];
            acc{g}0 = fma(vec4<f32>(av{g}.x), bv, acc{g}0);
            acc{g}1 = fma(vec4<f32>(av{g}.y), bv, acc{g}1);
            acc{g}2 = fma(vec4<f32>(av{g}.z), bv, acc{g}2);
            acc{g}3 = fma(vec4<f32>(av{g}.w), bv, acc{g}3);
            // end unroll
        }
        // end unroll
        workgroupBarrier();
    }
    // unroll g GROUPS
    // unroll i 4
    store_row(c_base, row0 + {g}u * 64u + ty * 4u + {i}u, col0 + tx * 4u, acc{g}{i});
    // end unroll
    // end unroll
}
