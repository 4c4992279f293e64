//! Captured graphs on a [`Runtime`]: record a piece of device work once, replay it with one launch.
//!
//! At batch 1 a forward is dozens of small kernels, and launching them one by one costs more host
//! time than they take on the device. A backend that can capture ([`Device::supports_capture`]: CUDA
//! graphs) records the work once; each later run is one launch of the recorded graph. Backends that
//! cannot answer `false` to [`Runtime::supports_graphs`], and callers take their plain path.
//!
//! # How a graph is made and used
//!
//! 1. [`Runtime::graph_pool`] makes a [`GraphPool`] for the current stream: the private memory of the
//!    graphs that stream will replay.
//! 2. [`Runtime::with_pool`] runs the work once, uncaptured, with this thread's allocations routed to
//!    the pool: that fills it (and makes ready whatever the first run of each op creates lazily:
//!    kernels, library handles, heuristics). Tensors the graph will keep (its inputs) are allocated
//!    from the pool the same way.
//! 3. [`Runtime::capture`] records the same work on the current stream's capture partner
//!    ([`crate::StreamPool::capture_stream`]: a stream where nothing runs and which no other thread
//!    touches), with allocations routed to the pool; a request the pool cannot serve is an error then,
//!    so a capture never allocates device memory.
//! 4. [`Runtime::replay`] launches the graph on the stream it was made for. Between replays the caller
//!    writes new inputs into the graph's input tensors and reads its outputs, in stream order.
//!
//! # Rules
//!
//! - A graph replays only on its pool's stream, so two replays of it (or of two graphs sharing the
//!   pool) never overlap: they share one set of addresses.
//! - What the graph reads must outlive it: weights, its input and output tensors, its pool. Drop a
//!   graph before them (work already launched finishes; the backend frees the executable after it).
//! - Captures on one runtime are serialised (a lock taken only while capturing, never per replay).
//! - While capturing, the work must not read from or write to the host, wait on events or synchronise
//!   (copies from the host would be recorded with their staging address); upload before, download
//!   after.

use crate::alloc::GraphPool;
use crate::device::{Device, DeviceGraph};
use crate::error::{Result, RuntimeError};
use crate::runtime::Runtime;
use crate::stream::Stream;

/// A captured graph, replayable on the stream it was made for ([`Runtime::replay`]).
pub struct Graph<D: Device> {
    exec: Box<dyn DeviceGraph<D>>,
    /// The stream (index) it replays on: its pool's.
    stream: u32,
}

impl<D: Device> Graph<D> {
    /// The index of the stream the graph replays on.
    pub fn stream_index(&self) -> usize {
        self.stream as usize
    }
}

impl<D: Device> std::fmt::Debug for Graph<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Graph(stream {})", self.stream)
    }
}

impl<D: Device> Runtime<D> {
    /// Whether the device can capture graphs (CUDA: yes; the CPU and wgpu backends: no).
    pub fn supports_graphs(&self) -> bool {
        self.device().supports_capture()
    }

    /// A private memory pool for graphs replayed on the current stream (module doc, step 1).
    pub fn graph_pool(&self) -> Result<GraphPool<D>> {
        self.allocator().graph_pool(self.current_stream()?)
    }

    /// Runs `f` uncaptured with this thread's allocations and frees routed to `pool` (module doc,
    /// step 2). The current stream must be the pool's.
    pub fn with_pool<T>(&self, pool: &GraphPool<D>, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.pool_stream(pool)?;
        let _route = pool.route(false)?;
        f()
    }

    /// Records the work `f` encodes into a graph (module doc, step 3) and returns it with `f`'s value
    /// (typically the output tensor the graph writes, which the caller keeps with the graph). The
    /// current stream must be `pool`'s; `f` runs with the capture stream current and its allocations
    /// routed to `pool`. If `f` fails, the capture is ended and `f`'s error returned.
    pub fn capture<T>(
        &self,
        pool: &GraphPool<D>,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<(Graph<D>, T)> {
        if !self.supports_graphs() {
            return Err(RuntimeError::Device(format!(
                "the {} backend cannot capture graphs",
                self.device().backend()
            )));
        }
        let stream = self.pool_stream(pool)?;
        let capture = self.streams().capture_stream(stream)?;
        let raw = capture.raw()?;
        let _serial = self.capture_lock().lock();
        let _current = self.streams().set_current_stream(capture)?;
        let route = pool.route(true)?;
        self.device().begin_capture(raw)?;
        let value = f();
        let ended = self.device().end_capture(raw);
        drop(route);
        let value = value?;
        let exec = ended?;
        Ok((
            Graph {
                exec,
                stream: stream.index() as u32,
            },
            value,
        ))
    }

    /// Launches `graph` on the current stream, which must be the one it was made for.
    pub fn replay(&self, graph: &Graph<D>) -> Result<()> {
        let stream = self.current_stream()?;
        if stream.index() != graph.stream_index() {
            return Err(wrong_stream(stream, graph.stream_index()));
        }
        graph.exec.launch(stream.raw()?)?;
        stream.encoded()
    }

    /// The current stream, checked to be `pool`'s.
    fn pool_stream(&self, pool: &GraphPool<D>) -> Result<Stream<'_, D>> {
        let stream = self.current_stream()?;
        if stream.index() != pool.stream_index() {
            return Err(wrong_stream(stream, pool.stream_index()));
        }
        Ok(stream)
    }
}

fn wrong_stream<D: Device>(stream: Stream<'_, D>, wanted: usize) -> RuntimeError {
    RuntimeError::InvalidConfig {
        name: "current stream for a graph",
        value: format!("{stream:?}, the graph's stream is {wanted}"),
        allowed: "the stream the graph (and its memory pool) was made for",
    }
}
