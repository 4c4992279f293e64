//! [`CpuStream`] and [`CpuEvent`]: a stream is an executor thread that runs committed command buffers
//! in order, so the CPU backend behaves like a GPU — the host encodes, the "device" runs later — and
//! ordering and reuse bugs show up in CI.
//!
//! # How work flows
//!
//! Encoding pushes a command into the stream's open command buffer (a `Vec` behind the stream's own
//! mutex: uncontended unless the stream is shared under the `share` policy). `commit` hands the buffer
//! to the executor over a channel and starts a new one. The executor runs buffers in commit order and
//! counts them done; `synchronize` commits and waits for that count.
//!
//! A panicking kernel (a caller bug caught too late) marks the stream failed: later kernels on it are
//! skipped, event signals still run (so no waiter hangs), and every later sync reports the failure.
//!
//! # Events
//!
//! A [`CpuEvent`] holds the one-shot signal of its latest record. Recording makes a new signal and
//! encodes a command that sets it; query and host synchronize look at the latest record's signal; a
//! stream waiting on an event encodes a command that blocks its executor (not the host) on the signal
//! it saw at encode time. Each record has its own signal because, as in CUDA, a pooled event is
//! re-recorded on other streams while an earlier record may still be pending: a shared "highest
//! generation done" counter let a later record on a fast stream release a wait on an earlier record on
//! a slow one (found by the cross-stream stress test on CI).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};

use crate::error::{Result, RuntimeError};

/// One unit of encoded work.
pub(crate) enum Command {
    /// A kernel or copy; skipped once the stream has failed.
    Kernel(Box<dyn FnOnce() + Send>),
    /// An event signal or wait; always runs, so waiters never hang on a failed stream.
    Signal(Box<dyn FnOnce() + Send>),
}

enum Message {
    Run(Vec<Command>),
    Shutdown,
}

/// Completion state shared by a stream's encoder side and its executor thread.
struct Progress {
    /// Batches executed; guarded so `synchronize` can wait on `advanced`.
    done: Mutex<u64>,
    advanced: Condvar,
    /// The first kernel panic's message, if any.
    failure: Mutex<Option<String>>,
    failed: AtomicBool,
}

/// A CPU stream: an executor thread and the open command buffer feeding it.
pub struct CpuStream {
    index: usize,
    open: Mutex<Vec<Command>>,
    sender: Sender<Message>,
    /// Batches committed (written under `open`'s lock, so commit order is send order).
    committed: AtomicU64,
    progress: Arc<Progress>,
    executor: Mutex<Option<JoinHandle<()>>>,
    /// Set by `shutdown`; encoding afterwards fails.
    shut_down: AtomicBool,
}

impl CpuStream {
    pub(crate) fn spawn(index: usize, busy: Arc<AtomicUsize>) -> Result<Self> {
        let (sender, receiver) = crossbeam_channel::unbounded();
        let progress = Arc::new(Progress {
            done: Mutex::new(0),
            advanced: Condvar::new(),
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
        });
        let executor = std::thread::Builder::new()
            .name(format!("braid-cpu-stream-{index}"))
            .spawn({
                let progress = progress.clone();
                move || run_executor(receiver, progress, busy)
            })
            .map_err(|e| {
                RuntimeError::Device(format!(
                    "cannot start the executor thread of stream {index}: {e}"
                ))
            })?;
        Ok(Self {
            index,
            open: Mutex::new(Vec::new()),
            sender,
            committed: AtomicU64::new(0),
            progress,
            executor: Mutex::new(Some(executor)),
            shut_down: AtomicBool::new(false),
        })
    }

    /// Appends a command to the open command buffer.
    pub(crate) fn encode(&self, command: Command) -> Result<()> {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(RuntimeError::Dropped {
                what: format!("stream {}", self.index),
                owner: "stream pool",
            });
        }
        self.open.lock().push(command);
        Ok(())
    }

    /// Encodes a kernel.
    pub(crate) fn kernel(&self, f: impl FnOnce() + Send + 'static) -> Result<()> {
        self.encode(Command::Kernel(Box::new(f)))
    }

    /// Hands the open command buffer to the executor.
    pub(crate) fn commit(&self) -> Result<()> {
        let mut open = self.open.lock();
        if open.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut *open);
        self.sender
            .send(Message::Run(batch))
            .map_err(|_| RuntimeError::Dropped {
                what: format!("stream {}", self.index),
                owner: "stream pool",
            })?;
        // Relaxed: read by `synchronize` on this or another thread after it takes `open` (commit) —
        // the mutex orders it.
        self.committed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Commits and waits until everything committed has run; reports a kernel failure.
    pub(crate) fn synchronize(&self) -> Result<()> {
        self.commit()?;
        let target = {
            let _open = self.open.lock();
            self.committed.load(Ordering::Relaxed)
        };
        let mut done = self.progress.done.lock();
        // After a shutdown this still ends: the executor drains every batch before it stops.
        while *done < target {
            self.progress.advanced.wait(&mut done);
        }
        drop(done);
        self.check()
    }

    /// The stream's failure, if a kernel on it panicked.
    pub(crate) fn check(&self) -> Result<()> {
        if self.progress.failed.load(Ordering::Acquire) {
            let message = self.progress.failure.lock().clone().unwrap_or_default();
            return Err(RuntimeError::StreamFailed {
                stream: self.index,
                message,
            });
        }
        Ok(())
    }

    /// Drains, stops the executor thread and refuses later work.
    pub(crate) fn shutdown(&self) {
        let _ = self.commit();
        self.shut_down.store(true, Ordering::Release);
        let _ = self.sender.send(Message::Shutdown);
        if let Some(handle) = self.executor.lock().take() {
            let _ = handle.join();
        }
        self.progress.advanced.notify_all();
    }
}

fn run_executor(receiver: Receiver<Message>, progress: Arc<Progress>, busy: Arc<AtomicUsize>) {
    while let Ok(Message::Run(batch)) = receiver.recv() {
        // Relaxed: `busy` only sizes intra-op parallelism.
        busy.fetch_add(1, Ordering::Relaxed);
        for command in batch {
            match command {
                Command::Signal(f) => f(),
                Command::Kernel(f) => {
                    if progress.failed.load(Ordering::Relaxed) {
                        continue;
                    }
                    if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
                        let message = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "kernel panicked".into());
                        *progress.failure.lock() = Some(message);
                        progress.failed.store(true, Ordering::Release);
                    }
                }
            }
        }
        busy.fetch_sub(1, Ordering::Relaxed);
        *progress.done.lock() += 1;
        progress.advanced.notify_all();
    }
}

/// A device-to-host copy in flight on a CPU stream: the staging bytes, filled by the stream's executor
/// in stream order (or the stream's failure), and the signal that they are there.
pub struct CpuDownload {
    stream: usize,
    slot: Arc<DownloadSlot>,
}

struct DownloadSlot {
    /// `None` until the executor reached the copy; then the bytes, or the failure of earlier work.
    staged: Mutex<Option<std::result::Result<Vec<u8>, String>>>,
    ready: Condvar,
}

impl CpuStream {
    /// Encodes a copy of `len` bytes at host address `src` into staging memory, in stream order, and
    /// commits. The copy runs as a signal (even on a failed stream) so that a waiter never hangs; on a
    /// failed stream it records the failure instead of bytes.
    pub(crate) fn download(&self, src: usize, len: usize) -> Result<CpuDownload> {
        let slot = Arc::new(DownloadSlot {
            staged: Mutex::new(None),
            ready: Condvar::new(),
        });
        let (on_executor, progress) = (slot.clone(), self.progress.clone());
        self.encode(Command::Signal(Box::new(move || {
            let staged = if progress.failed.load(Ordering::Acquire) {
                Err(progress.failure.lock().clone().unwrap_or_default())
            } else {
                // SAFETY: `src` addresses `len` live bytes (the caller's contract) that stream order
                // keeps alive and unwritten until this command has run.
                Ok(unsafe { std::slice::from_raw_parts(src as *const u8, len) }.to_vec())
            };
            *on_executor.staged.lock() = Some(staged);
            on_executor.ready.notify_all();
        })))?;
        self.commit()?;
        Ok(CpuDownload {
            stream: self.index,
            slot,
        })
    }
}

impl CpuDownload {
    /// Whether the executor has reached the copy.
    pub(crate) fn is_ready(&self) -> bool {
        self.slot.staged.lock().is_some()
    }

    /// Waits for the copy and writes the bytes into `dst`.
    pub(crate) fn finish(self, dst: &mut [u8]) -> Result<()> {
        let mut guard = self.slot.staged.lock();
        let staged = loop {
            match guard.take() {
                Some(staged) => break staged,
                None => self.slot.ready.wait(&mut guard),
            }
        };
        match staged {
            Ok(bytes) => {
                dst.copy_from_slice(&bytes[..dst.len()]);
                Ok(())
            }
            Err(message) => Err(RuntimeError::StreamFailed {
                stream: self.stream,
                message,
            }),
        }
    }
}

/// A CPU event: the latest record's one-shot signal (module doc).
pub struct CpuEvent {
    /// The signal of the most recent `record`; `None` before the first (a never-recorded event is
    /// complete, as in CUDA).
    latest: Mutex<Option<Arc<RecordSignal>>>,
}

/// The completion of one `record`: set once by the recording stream's executor.
struct RecordSignal {
    done: Mutex<bool>,
    signalled: Condvar,
}

impl RecordSignal {
    fn set(&self) {
        *self.done.lock() = true;
        self.signalled.notify_all();
    }

    fn is_set(&self) -> bool {
        *self.done.lock()
    }

    fn wait(&self) {
        let mut done = self.done.lock();
        while !*done {
            self.signalled.wait(&mut done);
        }
    }
}

impl CpuEvent {
    pub(crate) fn new() -> Self {
        Self {
            latest: Mutex::new(None),
        }
    }

    fn latest(&self) -> Option<Arc<RecordSignal>> {
        self.latest.lock().clone()
    }

    pub(crate) fn record(&self, stream: &CpuStream) -> Result<()> {
        let signal = Arc::new(RecordSignal {
            done: Mutex::new(false),
            signalled: Condvar::new(),
        });
        let on_executor = signal.clone();
        stream.encode(Command::Signal(Box::new(move || on_executor.set())))?;
        *self.latest.lock() = Some(signal);
        stream.commit()
    }

    pub(crate) fn query(&self) -> bool {
        self.latest().is_none_or(|s| s.is_set())
    }

    pub(crate) fn synchronize(&self) {
        if let Some(signal) = self.latest() {
            signal.wait();
        }
    }

    /// Makes `stream`'s later work wait (on its executor) for the record made before this call; a later
    /// re-record of the event does not change what this wait waits for.
    pub(crate) fn wait_on(&self, stream: &CpuStream) -> Result<()> {
        let Some(signal) = self.latest() else {
            return Ok(());
        };
        stream.encode(Command::Signal(Box::new(move || signal.wait())))
    }
}
