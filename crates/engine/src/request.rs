//! [`Request`]: one caller's texts on their way through the engine — a slot per text for its
//! embedding, the count still missing, and how the caller is told (a condvar for a blocking caller, a
//! waker for an async one) — and [`EmbedFuture`], the async caller's end.
//!
//! Each text of a request travels as its own [`Sequence`] and may land in a different batch; the
//! request completes when its last sequence is delivered, or fails at its first error (later results
//! are dropped). A caller that gives up (drops its future) marks the request cancelled: sequences not
//! yet in a batch are dropped unrun.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use braid_model::Encoding;
use parking_lot::{Condvar, Mutex};

use crate::error::EngineError;

/// One caller's request (module doc).
pub(crate) struct Request {
    state: Mutex<State>,
    done: Condvar,
    /// Set (Release) once the outcome is in `state`, so a waiter can spin on it without the lock.
    finished: AtomicBool,
    cancelled: AtomicBool,
    /// When it was accepted (for the queue-wait metric).
    pub(crate) accepted: Instant,
}

struct State {
    results: Vec<Option<Vec<f32>>>,
    missing: usize,
    outcome: Option<Result<Vec<Vec<f32>>, EngineError>>,
    waker: Option<Waker>,
}

/// One text of a request, ready for a batch.
pub(crate) struct Sequence {
    pub(crate) encoding: Encoding,
    pub(crate) request: Arc<Request>,
    /// The text's position in its request.
    pub(crate) index: usize,
    /// Submission order, engine-wide: the oldest sequence is always in the next batch.
    pub(crate) order: u64,
}

impl Sequence {
    /// Tokens (the encoding's length).
    pub(crate) fn tokens(&self) -> usize {
        self.encoding.ids.len()
    }
}

impl Request {
    /// A request for `texts` results.
    pub(crate) fn new(texts: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                results: (0..texts).map(|_| None).collect(),
                missing: texts,
                outcome: (texts == 0).then(|| Ok(Vec::new())),
                waker: None,
            }),
            done: Condvar::new(),
            finished: AtomicBool::new(texts == 0),
            cancelled: AtomicBool::new(false),
            accepted: Instant::now(),
        })
    }

    /// Whether its caller gave up.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Delivers text `index`'s embedding.
    pub(crate) fn deliver(&self, index: usize, embedding: Vec<f32>) {
        let mut state = self.state.lock();
        if state.outcome.is_some() {
            return;
        }
        if state.results[index].replace(embedding).is_some() {
            // A sequence delivered twice would be an engine bug: never hand out a duplicate.
            tracing::error!(
                index,
                "a result was delivered twice; the request fails (this is a bug)"
            );
            state.outcome = Some(Err(EngineError::Internal {
                detail: format!("text {index} of a request was delivered twice"),
            }));
        } else {
            state.missing -= 1;
            if state.missing == 0 {
                let results = std::mem::take(&mut state.results);
                state.outcome = Some(Ok(results.into_iter().flatten().collect()));
            }
        }
        self.wake(state);
    }

    /// Fails the request (its first error wins).
    pub(crate) fn fail(&self, error: EngineError) {
        let mut state = self.state.lock();
        if state.outcome.is_none() {
            state.outcome = Some(Err(error));
            self.wake(state);
        }
    }

    fn wake(&self, mut state: parking_lot::MutexGuard<'_, State>) {
        if state.outcome.is_none() {
            return;
        }
        self.finished.store(true, Ordering::Release);
        let waker = state.waker.take();
        drop(state);
        self.done.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Blocks until the request completes or fails, spinning first for up to `spin` (a thread
    /// wake-up costs tens of microseconds; the engine spins only while few callers wait).
    pub(crate) fn wait(&self, spin: Duration) -> Result<Vec<Vec<f32>>, EngineError> {
        let start = Instant::now();
        while !self.finished.load(Ordering::Acquire) && start.elapsed() < spin {
            std::hint::spin_loop();
        }
        let mut state = self.state.lock();
        loop {
            if let Some(outcome) = state.outcome.take() {
                return outcome;
            }
            self.done.wait(&mut state);
        }
    }
}

/// The async caller's end of a request: resolves to the embeddings, in input order. Dropping it before
/// it resolves cancels what has not started.
pub struct EmbedFuture {
    pub(crate) request: Option<Arc<Request>>,
    /// An error found before the request was accepted (tokenization, overload, shutdown).
    pub(crate) early: Option<EngineError>,
}

impl Future for EmbedFuture {
    type Output = Result<Vec<Vec<f32>>, EngineError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(error) = self.early.take() {
            return Poll::Ready(Err(error));
        }
        let Some(request) = self.request.as_ref() else {
            return Poll::Ready(Err(EngineError::ShutDown));
        };
        let mut state = request.state.lock();
        if let Some(outcome) = state.outcome.take() {
            drop(state);
            self.request = None;
            return Poll::Ready(outcome);
        }
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for EmbedFuture {
    fn drop(&mut self) {
        if let Some(request) = self.request.take() {
            request.cancelled.store(true, Ordering::Relaxed);
        }
    }
}
