//! [`WgpuEvent`]: the last queue submission of the stream it was recorded on.
//!
//! Recording commits the stream (the contract: an event never waits on work nobody submitted) and keeps
//! that submission; the event is complete when the queue has finished it. A stream that had submitted
//! nothing yet gives an event that is complete at once, as is a never-recorded event. Querying polls the
//! device without blocking; synchronizing is `Device::poll` waiting for that submission index.

use std::sync::Arc;

use braid_runtime::Result;
use parking_lot::Mutex;

use crate::device::{Shared, Submitted};

/// A native event of one [`crate::WgpuDevice`].
pub struct WgpuEvent {
    shared: Arc<Shared>,
    last: Mutex<Option<Submitted>>,
}

impl WgpuEvent {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            last: Mutex::new(None),
        }
    }

    /// Remembers `submitted` (the recording stream's last submission, if any) as what to wait for.
    pub(crate) fn record(&self, submitted: Option<Submitted>) {
        *self.last.lock() = submitted;
    }

    /// Whether the recorded submission has completed (never blocks).
    pub(crate) fn query(&self) -> Result<bool> {
        let Some(seq) = self.last.lock().as_ref().map(|s| s.seq) else {
            return Ok(true);
        };
        self.shared.is_complete(seq)
    }

    /// Blocks until the recorded submission has completed; reports a failure of the device's work.
    pub(crate) fn synchronize(&self) -> Result<()> {
        let last = self.last.lock().clone();
        match last {
            None => self.shared.check(0),
            // The event belongs to no stream of its own; the failure is reported as the default stream's.
            Some(submitted) => self.shared.wait(&submitted, 0),
        }
    }
}
