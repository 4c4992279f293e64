// C = alpha * A.B + beta * C (+ bias[n] on every row) for products with few rows (a batch of one or a
// few sentences), the same parameters and operands as gemm.wgsl. A tiled kernel gives such products a
// handful of workgroups, each walking all of K with a barrier per step (latency-bound); here each
// workgroup takes 16 rows x 8 columns and splits K over 32 lanes per column, every lane walking its
// share with independent loads and no barrier, then the 32 partial sums of each output are added in
// a fixed order (deterministic). Lanes read neighbouring k, so a weight stored k-contiguous (a linear
// layer's) is read in whole 128-byte lines. Rows past m are clamped to row m - 1 and discarded.
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

const ROWS: u32 = 16u;
const COLS: u32 = 8u;
const LANES: u32 = 32u;
// partial[lane * ROWS * COLS + (output ^ lane)]: the XOR spreads both the writes (one output, 32
// lanes) and the reads (32 outputs, one lane) over all 32 banks.
var<workgroup> partial: array<f32, ROWS * COLS * LANES>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = wid.y * ROWS;
    let lane = lid % LANES;
    let col = lid / LANES;
    let outer = i32(wid.z / p.inner);
    let inner = i32(wid.z % p.inner);
    let a_base = i32(p.a) + outer * p.a_outer + inner * p.a_inner;
    let b_base = i32(p.b) + outer * p.b_outer + inner * p.b_inner;
    let c_base = i32(p.c) + outer * p.c_outer + inner * p.c_inner;
    let n = min(wid.x * COLS + col, p.n - 1u);
    let b_at = b_base + i32(n) * p.b_col;
    var a_at: array<i32, ROWS>;
    for (var i = 0u; i < ROWS; i = i + 1u) {
        a_at[i] = a_base + i32(min(row0 + i, p.m - 1u)) * p.a_row;
    }
    var acc: array<f32, ROWS>;
    for (var i = 0u; i < ROWS; i = i + 1u) {
        acc[i] = 0.0;
    }
    for (var k = lane; k < p.k; k = k + LANES) {
        let bv = f32(b[b_at + i32(k) * p.b_row]);
        let ka = i32(k) * p.a_col;
        for (var i = 0u; i < ROWS; i = i + 1u) {
            acc[i] = acc[i] + f32(a[a_at[i] + ka]) * bv;
        }
    }
    for (var i = 0u; i < ROWS; i = i + 1u) {
        partial[lane * ROWS * COLS + ((i * COLS + col) ^ lane)] = acc[i];
    }
    workgroupBarrier();
    if (lid < ROWS * COLS) {
        var sum = 0.0;
        for (var l = 0u; l < LANES; l = l + 1u) {
            sum = sum + partial[l * ROWS * COLS + (lid ^ l)];
        }
        let r = row0 + lid / COLS;
        let cn = wid.x * COLS + lid % COLS;
        if (r < p.m && cn < p.n) {
            let at = c_base + i32(r) * p.c_row + i32(cn) * p.c_col;
            var v = p.alpha * sum;
            if (p.beta != 0.0) {
                v = v + p.beta * f32(c[at]);
            }
            if (p.has_bias != 0u) {
                v = v + f32(bias[p.bias + cn]);
            }
            c[at] = T(v);
        }
    }
}
