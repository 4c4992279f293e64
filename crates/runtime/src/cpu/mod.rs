//! The CPU backend: [`CpuDevice`] implements [`Device`] and [`Ops`] with host memory, executor-thread
//! streams ([`executor`]) and real kernels ([`kernels`], GEMM through the `gemm` crate).
//!
//! It behaves like a GPU on purpose: work is encoded, committed and run later on the stream's executor,
//! so the runtime's ordering, event and reuse logic is exercised in CI where there is no GPU.
//!
//! Memory is host memory from the global allocator, 256-byte aligned; a [`CpuBuffer`] is one such
//! allocation, and a view resolves to its address plus the view's offset when an op is encoded. A
//! device can be given a memory capacity ([`CpuDevice::with_memory_capacity`]), past which raw
//! allocations fail with [`RuntimeError::DeviceOutOfMemory`] as a full GPU's would.
//!
//! Intra-op threads: a kernel may use `cores / busy_streams` rayon threads, so one stream alone uses
//! the whole machine and sixteen busy streams use one core each.

mod executor;
pub mod kernels;

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub use self::executor::{CpuDownload, CpuEvent, CpuStream};
use crate::device::{DType, Device, View, ALIGNMENT};
use crate::error::{Result, RuntimeError};
use crate::ops::{
    Accumulate, Add, BiasGelu, Fill, GatherRows, Gelu, Gemm, L2Normalize, LayerNorm, MaskedSoftmax,
    MeanPool, Ops,
};

/// The CPU device. Cheap to clone.
#[derive(Clone)]
pub struct CpuDevice {
    inner: Arc<CpuInner>,
}

struct CpuInner {
    capacity: usize,
    /// Raw bytes allocated now (raw path only).
    allocated: AtomicUsize,
    /// Executors running a batch now (sizes intra-op parallelism; Relaxed).
    busy: Arc<AtomicUsize>,
    cores: usize,
}

/// One raw allocation of the CPU device: host memory, [`ALIGNMENT`]-aligned.
#[derive(Debug)]
pub struct CpuBuffer {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a `CpuBuffer` is an owned address range; the runtime orders every access to its bytes by
// stream order and events (the device contract), so handing the handle to other threads is sound.
unsafe impl Send for CpuBuffer {}
// SAFETY: as above; `&CpuBuffer` only reads the address and length.
unsafe impl Sync for CpuBuffer {}

impl CpuBuffer {
    /// The address of the first byte (for host functions that inspect device memory in tests).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Bytes allocated.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the allocation is empty (never: raw allocations have at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The host address a view starts at.
#[inline]
fn addr(view: View<'_, CpuDevice>) -> u64 {
    view.buffer.as_ptr() as u64 + view.offset as u64
}

impl Default for CpuDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuDevice {
    /// A CPU device whose capacity is the machine's memory.
    pub fn new() -> Self {
        Self::with_memory_capacity(host_memory().unwrap_or(16 << 30))
    }

    /// A CPU device that refuses raw allocations past `bytes` in total, like a GPU with that much memory.
    pub fn with_memory_capacity(bytes: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            inner: Arc::new(CpuInner {
                capacity: bytes,
                allocated: AtomicUsize::new(0),
                busy: Arc::new(AtomicUsize::new(0)),
                cores,
            }),
        }
    }

    /// Raw bytes allocated from this device right now.
    pub fn raw_allocated(&self) -> usize {
        self.inner.allocated.load(Ordering::Relaxed)
    }

    /// How many threads a kernel may use, asked when it starts on its executor (not when it is
    /// encoded): the cores shared among the executors busy at that moment.
    fn op_threads_now(&self) -> impl Fn() -> usize + Send + 'static {
        let (busy, cores) = (self.inner.busy.clone(), self.inner.cores);
        move || (cores / busy.load(Ordering::Relaxed).max(1)).max(1)
    }

    /// Encodes a host function to run on `stream`'s executor in stream order (CUDA's
    /// `cudaLaunchHostFunc`). Tests use it to check device memory from the device's point of view; a
    /// panic in it fails the stream like a faulting kernel.
    pub fn launch(&self, stream: &CpuStream, f: impl FnOnce() + Send + 'static) -> Result<()> {
        stream.kernel(f)
    }
}

/// The host's memory (Linux's `/proc/meminfo`), if it can be read. The CPU device's default capacity,
/// and the wgpu backend's (wgpu reports no GPU memory).
pub fn host_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A device f32 slice.
///
/// # Safety
/// `ptr` must address `len` f32 in live memory that no other reference aliases mutably for `'a`. The
/// runtime guarantees liveness by stream order (a block is reused or freed only after the work that
/// uses it ran), and the tensor layer never passes an output that overlaps an input.
unsafe fn f32s<'a>(ptr: u64, len: usize) -> &'a [f32] {
    // SAFETY: forwarded to the caller (see above).
    unsafe { std::slice::from_raw_parts(ptr as *const f32, len) }
}

/// A mutable device f32 slice.
///
/// # Safety
/// As [`f32s`], and no other reference to the range exists for `'a`.
unsafe fn f32s_mut<'a>(ptr: u64, len: usize) -> &'a mut [f32] {
    // SAFETY: forwarded to the caller (see above).
    unsafe { std::slice::from_raw_parts_mut(ptr as *mut f32, len) }
}

impl Device for CpuDevice {
    type Buffer = CpuBuffer;
    type Stream = CpuStream;
    type Event = CpuEvent;
    type Download = CpuDownload;

    fn backend(&self) -> &'static str {
        "cpu"
    }

    fn describe(&self) -> String {
        format!(
            "CPU, {} cores, {} MiB memory",
            self.inner.cores,
            self.inner.capacity >> 20
        )
    }

    fn memory_capacity(&self) -> usize {
        self.inner.capacity
    }

    fn alloc_raw(&self, bytes: usize) -> Result<CpuBuffer> {
        let fits = self
            .inner
            .allocated
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                a.checked_add(bytes).filter(|&n| n <= self.inner.capacity)
            })
            .is_ok();
        let refused = |why: &str| RuntimeError::DeviceOutOfMemory {
            requested: bytes,
            detail: format!("{why} (CPU device capacity {} bytes)", self.inner.capacity),
        };
        if !fits {
            return Err(refused("past the capacity"));
        }
        let Ok(layout) = Layout::from_size_align(bytes.max(1), ALIGNMENT) else {
            self.inner.allocated.fetch_sub(bytes, Ordering::Relaxed);
            return Err(refused("not a valid allocation size"));
        };
        // SAFETY: the layout has a non-zero size.
        let Some(ptr) = NonNull::new(unsafe { std::alloc::alloc(layout) }) else {
            self.inner.allocated.fetch_sub(bytes, Ordering::Relaxed);
            return Err(refused("the host allocator refused"));
        };
        Ok(CpuBuffer { ptr, len: bytes })
    }

    unsafe fn free_raw(&self, buffer: CpuBuffer) {
        let layout = Layout::from_size_align(buffer.len.max(1), ALIGNMENT)
            .expect("invariant violated: layout was valid at allocation");
        // SAFETY: the caller guarantees `buffer` came from `alloc_raw` (this layout) and is freed once
        // (it is consumed here).
        unsafe { std::alloc::dealloc(buffer.ptr.as_ptr(), layout) };
        self.inner
            .allocated
            .fetch_sub(buffer.len, Ordering::Relaxed);
    }

    fn create_stream(&self, index: usize) -> Result<CpuStream> {
        CpuStream::spawn(index, self.inner.busy.clone())
    }

    fn commit(&self, stream: &CpuStream) -> Result<()> {
        stream.commit()
    }

    fn synchronize(&self, stream: &CpuStream) -> Result<()> {
        stream.synchronize()
    }

    fn shutdown_stream(&self, stream: &CpuStream) {
        stream.shutdown();
    }

    fn create_event(&self) -> Result<CpuEvent> {
        Ok(CpuEvent::new())
    }

    fn record_event(&self, event: &CpuEvent, stream: &CpuStream) -> Result<()> {
        event.record(stream)
    }

    fn wait_event(&self, stream: &CpuStream, event: &CpuEvent) -> Result<()> {
        event.wait_on(stream)
    }

    fn query_event(&self, event: &CpuEvent) -> Result<bool> {
        Ok(event.query())
    }

    fn event_synchronize(&self, event: &CpuEvent) -> Result<()> {
        event.synchronize();
        Ok(())
    }

    fn copy_from_host(&self, stream: &CpuStream, src: &[u8], dst: View<'_, Self>) -> Result<()> {
        let staged = src.to_vec();
        let dst = addr(dst);
        stream.kernel(move || {
            // SAFETY: `dst` addresses at least `staged.len()` live bytes (caller's contract) that no
            // other pending work writes (stream order).
            unsafe { std::ptr::copy_nonoverlapping(staged.as_ptr(), dst as *mut u8, staged.len()) };
        })
    }

    fn copy_device(
        &self,
        stream: &CpuStream,
        src: View<'_, Self>,
        dst: View<'_, Self>,
    ) -> Result<()> {
        let (bytes, src, dst) = (src.len, addr(src), addr(dst));
        stream.kernel(move || {
            // SAFETY: both ranges are live device memory of `bytes` bytes; `copy` allows overlap.
            unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        })
    }

    fn download(&self, stream: &CpuStream, src: View<'_, Self>) -> Result<CpuDownload> {
        stream.download(addr(src) as usize, src.len)
    }

    fn download_ready(&self, download: &CpuDownload) -> Result<bool> {
        Ok(download.is_ready())
    }

    fn finish_download(&self, download: CpuDownload, dst: &mut [u8]) -> Result<()> {
        download.finish(dst)
    }
}

impl Ops for CpuDevice {
    fn fill(&self, stream: &CpuStream, op: &Fill<'_, Self>) -> Result<()> {
        let (dst, len, value) = (addr(op.dst), op.len, op.value);
        self.launch(stream, move || {
            // SAFETY: see `f32s_mut`; `dst` holds `len` f32.
            unsafe { f32s_mut(dst, len) }.fill(value);
        })
    }

    fn gemm(&self, stream: &CpuStream, op: &Gemm<'_, Self>) -> Result<()> {
        f32_only("gemm", op.dtype)?;
        let spec = op.spec;
        let (a, b, c) = (addr(op.a), addr(op.b), addr(op.c));
        let bias = op.bias.map(addr);
        let threads = self.op_threads_now();
        self.launch(stream, move || {
            let (a_len, b_len, c_len) = spec.extents();
            // SAFETY: see `f32s`; the extents are what the strides address (from each operand's first
            // element, checked by the tensor layer), and C does not overlap A or B.
            let (a, b, c) = unsafe { (f32s(a, a_len), f32s(b, b_len), f32s_mut(c, c_len)) };
            // SAFETY: as above; bias holds `n` f32.
            let bias = bias.map(|p| unsafe { f32s(p, spec.n) });
            kernels::gemm_f32(&spec, a, b, c, bias, threads());
        })
    }

    fn bias_gelu(&self, stream: &CpuStream, op: &BiasGelu<'_, Self>) -> Result<()> {
        f32_only("bias_gelu", op.dtype)?;
        let (x, bias, rows, cols, gelu) = (addr(op.x), addr(op.bias), op.rows, op.cols, op.gelu);
        let threads = self.op_threads_now();
        self.launch(stream, move || {
            // SAFETY: see `f32s`; x holds rows*cols f32, bias cols.
            let (x, bias) = unsafe { (f32s_mut(x, rows * cols), f32s(bias, cols)) };
            kernels::split_rows(x, cols, threads(), |_, x| match gelu {
                Gelu::Tanh => {
                    for row in x.chunks_exact_mut(cols) {
                        kernels::add_f32(row, bias);
                        kernels::gelu_tanh_f32(row);
                    }
                }
                Gelu::Erf => kernels::bias_gelu_f32(x, bias),
            });
        })
    }

    fn layer_norm(&self, stream: &CpuStream, op: &LayerNorm<'_, Self>) -> Result<()> {
        f32_only("layer_norm", op.dtype)?;
        let (x, gamma, beta, out) = (addr(op.x), addr(op.gamma), addr(op.beta), addr(op.out));
        let (bias, residual) = (op.bias.map(addr), op.residual.map(addr));
        let (rows, cols, eps) = (op.rows, op.cols, op.eps);
        let threads = self.op_threads_now();
        self.launch(stream, move || {
            let n = rows * cols;
            // SAFETY: see `f32s`; out does not overlap x or residual.
            let (x, gamma, beta, out) = unsafe {
                (
                    f32s(x, n),
                    f32s(gamma, cols),
                    f32s(beta, cols),
                    f32s_mut(out, n),
                )
            };
            // SAFETY: as above.
            let residual = residual.map(|r| unsafe { f32s(r, n) });
            // SAFETY: as above; bias holds `cols` f32.
            let bias = bias.map(|b| unsafe { f32s(b, cols) });
            kernels::split_rows(out, cols, threads(), |first, out| {
                let rows = first * cols..first * cols + out.len();
                let inputs = kernels::LayerNormInputs {
                    x: &x[rows.clone()],
                    bias,
                    residual: residual.map(|r| &r[rows]),
                    gamma,
                    beta,
                    cols,
                    eps,
                };
                kernels::layer_norm_f32(&inputs, out);
            });
        })
    }

    fn masked_softmax(&self, stream: &CpuStream, op: &MaskedSoftmax<'_, Self>) -> Result<()> {
        f32_only("masked_softmax", op.dtype)?;
        let (scores, mask) = (addr(op.scores), addr(op.mask));
        let (batch, heads, q_len, k_len, scale) =
            (op.batch, op.heads, op.q_len, op.k_len, op.scale);
        let threads = self.op_threads_now();
        self.launch(stream, move || {
            // SAFETY: see `f32s`; sizes from the shapes.
            let (scores, mask) = unsafe {
                (
                    f32s_mut(scores, batch * heads * q_len * k_len),
                    f32s(mask, batch * k_len),
                )
            };
            // Chunks of whole (sequence, head) score matrices, each with its sequence's mask.
            kernels::split_rows(scores, q_len * k_len, threads(), |first, chunk| {
                for (i, head) in chunk.chunks_exact_mut(q_len * k_len).enumerate() {
                    let b = (first + i) / heads;
                    let mask = &mask[b * k_len..(b + 1) * k_len];
                    kernels::masked_softmax_f32(head, mask, 1, 1, q_len, k_len, scale);
                }
            });
        })
    }

    fn gather_rows(&self, stream: &CpuStream, op: &GatherRows<'_, Self>) -> Result<()> {
        f32_only("gather_rows", op.dtype)?;
        let (table, ids, out) = (addr(op.table), addr(op.ids), addr(op.out));
        let (table_rows, n_ids, dim) = (op.table_rows, op.n_ids, op.dim);
        let accumulate = op.mode == Accumulate::Add;
        self.launch(stream, move || {
            // SAFETY: see `f32s`; ids are n_ids u32 (same size and alignment as f32).
            let (table, ids, out) = unsafe {
                (
                    f32s(table, table_rows * dim),
                    std::slice::from_raw_parts(ids as *const u32, n_ids),
                    f32s_mut(out, n_ids * dim),
                )
            };
            kernels::gather_rows_f32(table, ids, dim, out, accumulate);
        })
    }

    /// The provided per-sequence forms of the packed ops are the CPU's best: a launch is a closure on
    /// this stream, and no padded token is computed.
    fn prefers_packed(&self) -> bool {
        true
    }

    fn mean_pool(&self, stream: &CpuStream, op: &MeanPool<'_, Self>) -> Result<()> {
        f32_only("mean_pool", op.dtype)?;
        let (x, mask, out) = (addr(op.x), addr(op.mask), addr(op.out));
        let (batch, seq, dim) = (op.batch, op.seq, op.dim);
        self.launch(stream, move || {
            // SAFETY: see `f32s`.
            let (x, mask, out) = unsafe {
                (
                    f32s(x, batch * seq * dim),
                    f32s(mask, batch * seq),
                    f32s_mut(out, batch * dim),
                )
            };
            kernels::mean_pool_f32(x, mask, batch, seq, dim, out);
        })
    }

    fn l2_normalize(&self, stream: &CpuStream, op: &L2Normalize<'_, Self>) -> Result<()> {
        f32_only("l2_normalize", op.dtype)?;
        let (x, rows, dim) = (addr(op.x), op.rows, op.dim);
        self.launch(stream, move || {
            // SAFETY: see `f32s`.
            kernels::l2_normalize_f32(unsafe { f32s_mut(x, rows * dim) }, dim);
        })
    }

    fn add(&self, stream: &CpuStream, op: &Add<'_, Self>) -> Result<()> {
        f32_only("add", op.dtype)?;
        let (x, y, len) = (addr(op.x), addr(op.y), op.len);
        self.launch(stream, move || {
            // SAFETY: see `f32s`; x and y do not overlap.
            let (x, y) = unsafe { (f32s_mut(x, len), f32s(y, len)) };
            kernels::add_f32(x, y);
        })
    }
}

/// The CPU backend computes in f32 only: any other dtype is refused with a clear error.
fn f32_only(op: &'static str, dtype: DType) -> Result<()> {
    if dtype == DType::F32 {
        Ok(())
    } else {
        Err(RuntimeError::Unsupported {
            op,
            dtype,
            backend: "cpu",
        })
    }
}
