//! The CPU backend: [`CpuDevice`] implements [`Device`] and [`Ops`] with host memory, executor-thread
//! streams ([`executor`]) and real kernels ([`kernels`], GEMM through the `gemm` crate).
//!
//! It behaves like a GPU on purpose: work is encoded, committed and run later on the stream's executor,
//! so the runtime's ordering, event and reuse logic is exercised in CI where there is no GPU.
//!
//! Memory is host memory from the global allocator, 256-byte aligned. A device can be given a memory
//! capacity ([`CpuDevice::with_memory_capacity`]), past which raw allocations fail with
//! [`RuntimeError::OutOfMemory`] as a full GPU's would.
//!
//! Intra-op threads: a kernel may use `cores / busy_streams` rayon threads, so one stream alone uses
//! the whole machine and sixteen busy streams use one core each.

mod executor;
pub mod kernels;

use std::alloc::Layout;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub use self::executor::{CpuEvent, CpuStream};
use crate::ops::{GemmSpec, Ops};
use crate::{AllocatorStats, DType, Device, DevicePtr, Result, RuntimeError, ALIGNMENT};

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

impl Default for CpuDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuDevice {
    /// A CPU device whose capacity is the machine's memory.
    pub fn new() -> Self {
        Self::with_memory_capacity(physical_memory())
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

    /// Threads a kernel starting now may use.
    fn op_threads(busy: &AtomicUsize, cores: usize) -> usize {
        (cores / busy.load(Ordering::Relaxed).max(1)).max(1)
    }

    /// Encodes a host function to run on `stream`'s executor in stream order (CUDA's
    /// `cudaLaunchHostFunc`). Tests use it to check device memory from the device's point of view; a
    /// panic in it fails the stream like a faulting kernel.
    pub fn launch(&self, stream: &CpuStream, f: impl FnOnce() + Send + 'static) -> Result<()> {
        stream.kernel(f)
    }
}

fn physical_memory() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(16 << 30)
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
    type Stream = CpuStream;
    type Event = CpuEvent;

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

    fn alloc_raw(&self, bytes: usize) -> Result<DevicePtr> {
        let fits = self
            .inner
            .allocated
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                a.checked_add(bytes).filter(|&n| n <= self.inner.capacity)
            })
            .is_ok();
        let oom = || RuntimeError::OutOfMemory {
            requested: bytes,
            limit: format!("device capacity {} bytes", self.inner.capacity),
            stats: Box::new(AllocatorStats::default()),
        };
        if !fits {
            return Err(oom());
        }
        let layout = Layout::from_size_align(bytes.max(1), ALIGNMENT).map_err(|_| oom())?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            self.inner.allocated.fetch_sub(bytes, Ordering::Relaxed);
            return Err(oom());
        }
        Ok(DevicePtr(ptr as u64))
    }

    unsafe fn free_raw(&self, ptr: DevicePtr, bytes: usize) {
        let layout = Layout::from_size_align(bytes.max(1), ALIGNMENT)
            .expect("invariant violated: layout was valid at allocation");
        // SAFETY: the caller guarantees `ptr` came from `alloc_raw(bytes)` (this layout) and is freed once.
        unsafe { std::alloc::dealloc(ptr.0 as *mut u8, layout) };
        self.inner.allocated.fetch_sub(bytes, Ordering::Relaxed);
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

    fn copy_from_host(&self, stream: &CpuStream, src: &[u8], dst: DevicePtr) -> Result<()> {
        let staged = src.to_vec();
        stream.kernel(move || {
            // SAFETY: `dst` addresses at least `staged.len()` live bytes (caller's contract) that no
            // other pending work writes (stream order).
            unsafe {
                std::ptr::copy_nonoverlapping(staged.as_ptr(), dst.0 as *mut u8, staged.len())
            };
        })
    }

    fn copy_to_host(&self, stream: &CpuStream, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        let (host, len) = (dst.as_mut_ptr() as usize, dst.len());
        stream.kernel(move || {
            // SAFETY: `host` is `dst`, borrowed mutably until `synchronize` below returns, which is after
            // this command ran; `src` addresses `len` live bytes.
            unsafe { std::ptr::copy_nonoverlapping(src.0 as *const u8, host as *mut u8, len) };
        })?;
        stream.synchronize()
    }

    fn copy_device(
        &self,
        stream: &CpuStream,
        src: DevicePtr,
        dst: DevicePtr,
        bytes: usize,
    ) -> Result<()> {
        stream.kernel(move || {
            // SAFETY: both ranges are live device memory of `bytes` bytes; `copy` allows overlap.
            unsafe { std::ptr::copy(src.0 as *const u8, dst.0 as *mut u8, bytes) };
        })
    }
}

impl Ops for CpuDevice {
    fn fill(&self, stream: &CpuStream, dst: DevicePtr, len: usize, value: f32) -> Result<()> {
        self.launch(stream, move || {
            // SAFETY: see `f32s_mut`; `dst` holds `len` f32.
            unsafe { f32s_mut(dst.0, len) }.fill(value);
        })
    }

    fn gemm(
        &self,
        stream: &CpuStream,
        dtype: DType,
        spec: &GemmSpec,
        a: DevicePtr,
        b: DevicePtr,
        c: DevicePtr,
        bias: Option<DevicePtr>,
    ) -> Result<()> {
        f32_only("gemm", dtype)?;
        // The kernel sees each operand from its first element: fold the offsets into the pointers.
        let mut spec = *spec;
        let [a, b, c] = [(a, &mut spec.a), (b, &mut spec.b), (c, &mut spec.c)]
            .map(|(ptr, s)| ptr.offset(std::mem::take(&mut s.offset) * std::mem::size_of::<f32>()));
        let (busy, cores) = (self.inner.busy.clone(), self.inner.cores);
        self.launch(stream, move || {
            let (a_len, b_len, c_len) = spec.extents();
            // SAFETY: see `f32s`; the extents are what the strides address (from each operand's first
            // element, checked by the tensor layer), and C does not overlap A or B.
            let (a, b, c) = unsafe { (f32s(a.0, a_len), f32s(b.0, b_len), f32s_mut(c.0, c_len)) };
            // SAFETY: as above; bias holds `n` f32.
            let bias = bias.map(|p| unsafe { f32s(p.0, spec.n) });
            kernels::gemm_f32(&spec, a, b, c, bias, Self::op_threads(&busy, cores));
        })
    }

    fn bias_gelu(
        &self,
        stream: &CpuStream,
        dtype: DType,
        x: DevicePtr,
        bias: DevicePtr,
        rows: usize,
        cols: usize,
        tanh: bool,
    ) -> Result<()> {
        f32_only("bias_gelu", dtype)?;
        self.launch(stream, move || {
            // SAFETY: see `f32s`; x holds rows*cols f32, bias cols.
            let (x, bias) = unsafe { (f32s_mut(x.0, rows * cols), f32s(bias.0, cols)) };
            if tanh {
                for row in x.chunks_exact_mut(cols) {
                    kernels::add_f32(row, bias);
                    kernels::gelu_tanh_f32(row);
                }
            } else {
                kernels::bias_gelu_f32(x, bias);
            }
        })
    }

    fn layer_norm(
        &self,
        stream: &CpuStream,
        dtype: DType,
        x: DevicePtr,
        bias: Option<DevicePtr>,
        residual: Option<DevicePtr>,
        gamma: DevicePtr,
        beta: DevicePtr,
        out: DevicePtr,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        f32_only("layer_norm", dtype)?;
        self.launch(stream, move || {
            let n = rows * cols;
            // SAFETY: see `f32s`; out does not overlap x or residual.
            let (x, gamma, beta, out) = unsafe {
                (
                    f32s(x.0, n),
                    f32s(gamma.0, cols),
                    f32s(beta.0, cols),
                    f32s_mut(out.0, n),
                )
            };
            // SAFETY: as above.
            let residual = residual.map(|r| unsafe { f32s(r.0, n) });
            // SAFETY: as above; bias holds `cols` f32.
            let bias = bias.map(|b| unsafe { f32s(b.0, cols) });
            kernels::layer_norm_f32(x, bias, residual, gamma, beta, out, cols, eps);
        })
    }

    fn masked_softmax(
        &self,
        stream: &CpuStream,
        dtype: DType,
        scores: DevicePtr,
        mask: DevicePtr,
        batch: usize,
        heads: usize,
        q_len: usize,
        k_len: usize,
        scale: f32,
    ) -> Result<()> {
        f32_only("masked_softmax", dtype)?;
        self.launch(stream, move || {
            // SAFETY: see `f32s`; sizes from the shapes.
            let (scores, mask) = unsafe {
                (
                    f32s_mut(scores.0, batch * heads * q_len * k_len),
                    f32s(mask.0, batch * k_len),
                )
            };
            kernels::masked_softmax_f32(scores, mask, batch, heads, q_len, k_len, scale);
        })
    }

    fn gather_rows(
        &self,
        stream: &CpuStream,
        dtype: DType,
        table: DevicePtr,
        table_rows: usize,
        ids: DevicePtr,
        n_ids: usize,
        dim: usize,
        out: DevicePtr,
        accumulate: bool,
    ) -> Result<()> {
        f32_only("gather_rows", dtype)?;
        self.launch(stream, move || {
            // SAFETY: see `f32s`; ids are n_ids u32 (same size and alignment as f32).
            let (table, ids, out) = unsafe {
                (
                    f32s(table.0, table_rows * dim),
                    std::slice::from_raw_parts(ids.0 as *const u32, n_ids),
                    f32s_mut(out.0, n_ids * dim),
                )
            };
            kernels::gather_rows_f32(table, ids, dim, out, accumulate);
        })
    }

    fn mean_pool(
        &self,
        stream: &CpuStream,
        dtype: DType,
        x: DevicePtr,
        mask: DevicePtr,
        batch: usize,
        seq: usize,
        dim: usize,
        out: DevicePtr,
    ) -> Result<()> {
        f32_only("mean_pool", dtype)?;
        self.launch(stream, move || {
            // SAFETY: see `f32s`.
            let (x, mask, out) = unsafe {
                (
                    f32s(x.0, batch * seq * dim),
                    f32s(mask.0, batch * seq),
                    f32s_mut(out.0, batch * dim),
                )
            };
            kernels::mean_pool_f32(x, mask, batch, seq, dim, out);
        })
    }

    fn l2_normalize(
        &self,
        stream: &CpuStream,
        dtype: DType,
        x: DevicePtr,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        f32_only("l2_normalize", dtype)?;
        self.launch(stream, move || {
            // SAFETY: see `f32s`.
            kernels::l2_normalize_f32(unsafe { f32s_mut(x.0, rows * dim) }, dim);
        })
    }

    fn add(
        &self,
        stream: &CpuStream,
        dtype: DType,
        x: DevicePtr,
        y: DevicePtr,
        len: usize,
    ) -> Result<()> {
        f32_only("add", dtype)?;
        self.launch(stream, move || {
            // SAFETY: see `f32s`; x and y do not overlap.
            let (x, y) = unsafe { (f32s_mut(x.0, len), f32s(y.0, len)) };
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
