//! [`Block`]: one raw allocation (a backend buffer) and everything needed to reuse or free it.
//!
//! A block carries its own metadata — the backend buffer, size, class, the stream it was last used on
//! (by index in the allocator's stream pool) and the events that must complete before another stream
//! may reuse it — so freeing needs no global pointer map (fix 1).
//!
//! # Stream-ordered reuse
//!
//! A block freed on stream S is reusable at once by later work on S (stream order protects it). Another
//! stream T may take it in one of two ways:
//!
//! - The block carries events (`pending`): T takes it only when every `(stream, event)` either is on T
//!   or has completed. Thread-cache flushes and buffers marked with `record_stream` publish blocks this
//!   way (one event per stream that used them, recorded at that moment).
//! - The block carries no event (a plain free on S, the common case): T takes it at once and makes its
//!   own work wait, device-side, for an event recorded on S at that moment ([`Block::adopt`] says so).
//!   That event covers S's work up to the free and possibly a little more — safe, and it costs an
//!   event only when a block really changes streams, never on the free itself.
//!
//! Blocks in a thread cache, small or large, have no pending events: they are on the cache's home
//! stream.

use std::sync::Arc;

use super::size_class::SizeClass;
use crate::device::Device;
use crate::error::Result;
use crate::stream::Event;

pub(crate) struct Block<D: Device> {
    /// The raw allocation (freed with `Device::free_raw` only; a dropped block leaks it).
    pub(crate) raw: D::Buffer,
    /// Rounded size: what the raw allocation holds.
    pub(crate) size: usize,
    /// The size class (`size == class.size()`): which shared pool and thread-cache list take it.
    pub(crate) class: SizeClass,
    /// The index of the stream of the last allocation; where a same-stream free is safe without an event.
    pub(crate) stream: u32,
    /// Work that must finish before a stream other than the one named (by index) may reuse the block.
    pub(crate) pending: Vec<(u32, Arc<Event<D>>)>,
}

impl<D: Device> Block<D> {
    /// Reusable by `stream` without a device call: every pending event is on `stream` or known complete.
    #[inline]
    pub(crate) fn ready_known(&self, stream: u32) -> bool {
        self.pending
            .iter()
            .all(|(s, e)| *s == stream || e.is_known_complete())
    }

    /// Reusable by `stream`, asking the device about events not yet known complete. Never call this
    /// under a pool lock: it may make device calls.
    pub(crate) fn ready_query(&self, stream: u32) -> bool {
        // A failed query (device error) counts as "not ready": the block stays cached, and the error
        // surfaces on the stream's own next sync.
        self.pending
            .iter()
            .all(|(s, e)| *s == stream || e.query().unwrap_or(false))
    }

    /// Waits (host) until every pending event has completed. Used before a raw free.
    pub(crate) fn wait_idle(&self) -> Result<()> {
        for (_, e) in &self.pending {
            e.synchronize()?;
        }
        Ok(())
    }

    /// Hands the block to `stream`. Pending events no longer matter (the caller checked them); a block
    /// freed without an event on another stream comes back with that stream in `after`: the caller must
    /// order `stream` after it before using the block (module doc).
    #[inline]
    pub(crate) fn adopt(mut self, stream: u32) -> Adopted<D> {
        let after = (self.pending.is_empty() && self.stream != stream).then_some(self.stream);
        self.pending.clear();
        self.stream = stream;
        Adopted { block: self, after }
    }
}

/// A block taken from a shared pool for a new stream (see [`Block::adopt`]).
pub(crate) struct Adopted<D: Device> {
    pub(crate) block: Block<D>,
    /// The stream (index) whose work the new stream must wait for before touching the block.
    pub(crate) after: Option<u32>,
}
