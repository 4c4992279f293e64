//! [`CudaGraph`]: a captured CUDA graph, instantiated (`cuGraphExec`), replayed with one
//! `cuGraphLaunch` on any stream of its context — the backend half of `braid_runtime::graph`.
//!
//! # What it owns and promises
//!
//! - Capture: [`crate::CudaStream`] begins it (after making the stream's cuBLAS and cuBLASLt handles,
//!   which would otherwise be made inside the capture) in `CU_STREAM_CAPTURE_MODE_THREAD_LOCAL`, so a
//!   call on the capturing thread that is unsafe during a capture fails instead of breaking it, and
//!   other threads' work is not restricted. Ending it instantiates the recorded graph and destroys the
//!   graph template at once: only the executable is kept.
//! - The executable holds the context (so it is destroyed in it) and nothing else of braid's; the
//!   memory it names belongs to the runtime's graph pool and tensors, which the runtime keeps alive
//!   for as long as the graph.
//! - Dropping it destroys the executable (`cuGraphExecDestroy`; a launch still running completes
//!   first, the driver frees it afterwards) and counts it down in [`crate::live_objects`].
//! - cuBLAS inside a capture: CUDA 12.2 and later allocate a handle's workspace stream-ordered there
//!   (memory nodes of the graph), so a capture makes no `cuMemAlloc` of its own.

use std::sync::Arc;

use braid_runtime::device::DeviceGraph;
use braid_runtime::Result;
use cudarc::driver::{result, sys};

use crate::context::Context;
use crate::device::CudaDevice;
use crate::stream::CudaStream;
use crate::{error, live};

/// An instantiated CUDA graph. See the module doc.
pub struct CudaGraph {
    exec: sys::CUgraphExec,
    context: Arc<Context>,
}

// SAFETY: a `CUgraphExec` is a driver handle usable from any thread; launching one from two threads at
// once is allowed by the driver (the runtime keeps each graph's launches on one stream anyway).
unsafe impl Send for CudaGraph {}
// SAFETY: as for `Send`: `launch` only reads the handle.
unsafe impl Sync for CudaGraph {}

impl CudaGraph {
    /// Instantiates `graph` (just captured) and destroys the template (the context is current).
    pub(crate) fn instantiate(graph: sys::CUgraph, context: Arc<Context>) -> Result<Self> {
        // SAFETY: `graph` is a valid graph from `cuStreamEndCapture`, owned here.
        let exec = unsafe { result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) };
        // SAFETY: `graph` is valid and destroyed once; the executable (if any) does not need it.
        if let Err(e) = unsafe { result::graph::destroy(graph) } {
            tracing::warn!(error = %error::describe(e), "cuGraphDestroy failed");
        }
        let exec = exec.map_err(|e| error::device("cuGraphInstantiateWithFlags", e))?;
        live::GRAPHS.up();
        Ok(Self { exec, context })
    }
}

impl DeviceGraph<CudaDevice> for CudaGraph {
    fn launch(&self, stream: &CudaStream) -> Result<()> {
        stream.with_raw(|raw| {
            // SAFETY: `exec` is live until `self` drops; `raw` is a live stream of the same context,
            // which is current (`with_raw`).
            unsafe { result::graph::launch(self.exec, raw) }
                .map_err(|e| error::device("cuGraphLaunch", e))
        })
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        if let Err(e) = self.context.bind() {
            tracing::warn!(error = %e, "binding the CUDA context to destroy a graph failed");
        }
        // SAFETY: `exec` came from `cuGraphInstantiateWithFlags`, is destroyed once (here), in its
        // context; the driver lets launches in flight complete.
        if let Err(e) = unsafe { result::graph::exec_destroy(self.exec) } {
            tracing::warn!(error = %error::describe(e), "cuGraphExecDestroy failed");
        }
        live::GRAPHS.down();
    }
}
