//! [`Queue`]: where callers' sequences wait, and how a batch is formed from them.
//!
//! Two parts, so that submitting never takes a lock another caller holds:
//!
//! - **Inbox**: a lock-free queue (crossbeam's `SegQueue`) callers push to, with a token count for the
//!   backpressure bound. Submitting is a push and two atomic adds; an executor is woken only if one is
//!   asleep (see [`Queue::submit`]).
//! - **Pending**: the sequences an executor has moved out of the inbox, behind a mutex that only
//!   executors take, once per batch. [`Pending::take_batch`] forms the batch: always the oldest
//!   sequence (nobody starves), then sequences of similar length — shorter ones first, then longer
//!   ones, none padded to more than twice its length — until the next would pass the padded-token
//!   budget or the size limit. Sequences of very different lengths wait for a batch of their own (the
//!   next free executor takes it) rather than be padded — except in a small batch (under an eighth
//!   of the budget), where a forward costs the same whatever its shape and one batch beats two.
//!
//! A device that fails hands the sequences of its batches in flight back ([`Queue::requeue`]): they
//! keep their submission order (so they are the oldest and go first) and are counted in the queued
//! tokens again, past the bound if need be (they were accepted once; they are not refused now).
//!
//! # Waking executors
//!
//! The inbox's length is announced on a [`Doorbell`]: an executor with nothing to do sleeps on it, and
//! a submitter rings it after pushing, taking a lock only when some executor sleeps (the doorbell's
//! module says why no wake-up is lost; a loom model checks it).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_queue::SegQueue;
use parking_lot::Mutex;

use crate::doorbell::Doorbell;
use crate::error::EngineError;
use crate::request::Sequence;

/// The inbox, the pending set and the executors' wake-up (module doc).
pub(crate) struct Queue {
    inbox: SegQueue<Sequence>,
    /// Counts the sequences in the inbox and wakes executors (see "Waking executors").
    doorbell: Doorbell,
    /// Tokens accepted and not yet taken into a batch (inbox and pending).
    queued_tokens: AtomicUsize,
    max_queued_tokens: usize,
    next_order: AtomicU64,
    pub(crate) pending: Mutex<Pending>,
}

/// Sequences moved out of the inbox, waiting for a batch (executors only), and how many executors of
/// each device are idle (changed under the same lock: placement reads it there).
#[derive(Default)]
pub(crate) struct Pending {
    sequences: Vec<Sequence>,
    /// Per device: executors that found nothing to take and have not looked again since.
    pub(crate) idle: Vec<usize>,
}

impl Queue {
    /// A queue for the executors of `devices` devices.
    pub(crate) fn new(max_queued_tokens: usize, devices: usize) -> Self {
        Self {
            inbox: SegQueue::new(),
            doorbell: Doorbell::new(),
            queued_tokens: AtomicUsize::new(0),
            max_queued_tokens,
            next_order: AtomicU64::new(0),
            pending: Mutex::new(Pending {
                sequences: Vec::new(),
                idle: vec![0; devices],
            }),
        }
    }

    /// Tokens waiting (a snapshot).
    pub(crate) fn queued_tokens(&self) -> usize {
        self.queued_tokens.load(Ordering::Relaxed)
    }

    /// Accepts a request's sequences, all or none: [`EngineError::Overloaded`] when its tokens would
    /// pass the bound (a request larger than the whole bound is accepted into an empty queue, so
    /// every request can run). Wakes a sleeping executor.
    pub(crate) fn submit(&self, sequences: Vec<Sequence>) -> Result<(), EngineError> {
        let tokens: usize = sequences.iter().map(Sequence::tokens).sum();
        let limit = self.max_queued_tokens;
        self.queued_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                (queued == 0 || queued + tokens <= limit).then_some(queued + tokens)
            })
            .map_err(|queued| EngineError::Overloaded {
                queued,
                requested: tokens,
                limit,
            })?;
        let count = sequences.len();
        for mut sequence in sequences {
            sequence.order = self.next_order.fetch_add(1, Ordering::Relaxed);
            self.inbox.push(sequence);
        }
        metrics::gauge!("braid_engine_queued_tokens").set(self.queued_tokens() as f64);
        self.doorbell.ring(count);
        Ok(())
    }

    /// Hands back the sequences of a batch a failed device did not finish (module doc): no bound,
    /// their order kept. Wakes a sleeping executor.
    pub(crate) fn requeue(&self, sequences: Vec<Sequence>) {
        let tokens: usize = sequences.iter().map(Sequence::tokens).sum();
        let count = sequences.len();
        let queued = self.queued_tokens.fetch_add(tokens, Ordering::Relaxed) + tokens;
        for sequence in sequences {
            self.inbox.push(sequence);
        }
        metrics::gauge!("braid_engine_queued_tokens").set(queued as f64);
        self.doorbell.ring(count);
    }

    /// Spins (no system call) for up to `limit` while the inbox is empty and `stop()` is false;
    /// whether to look for work now. An executor does this before it sleeps, so a caller that
    /// submits right after its last result does not pay a thread wake-up.
    pub(crate) fn spin_for_work(&self, limit: Duration, stop: impl Fn() -> bool) -> bool {
        let start = std::time::Instant::now();
        while self.inbox_is_empty() && !stop() {
            if start.elapsed() >= limit {
                return false;
            }
            std::hint::spin_loop();
        }
        true
    }

    /// Whether the inbox is empty.
    pub(crate) fn inbox_is_empty(&self) -> bool {
        self.doorbell.is_quiet()
    }

    /// Moves every sequence in the inbox to `pending`.
    pub(crate) fn drain_inbox(&self, pending: &mut Pending) {
        while let Some(sequence) = self.inbox.pop() {
            self.doorbell.took_one();
            pending.sequences.push(sequence);
        }
    }

    /// Counts `tokens` as taken out of the queue (batched, or dropped because their caller gave up).
    pub(crate) fn taken(&self, tokens: usize) {
        let left = self.queued_tokens.fetch_sub(tokens, Ordering::Relaxed) - tokens;
        metrics::gauge!("braid_engine_queued_tokens").set(left as f64);
    }

    /// Sleeps until a submit wakes it, `timeout` passes, or `stop()` is true (no wake-up is lost).
    pub(crate) fn sleep(&self, timeout: Duration, stop: impl Fn() -> bool) {
        self.doorbell.sleep(timeout, stop);
    }

    /// Wakes every sleeping executor (shutdown).
    pub(crate) fn wake_all(&self) {
        self.doorbell.wake_all();
    }
}

impl Pending {
    /// Sequences waiting.
    pub(crate) fn len(&self) -> usize {
        self.sequences.len()
    }

    /// Puts a batch back (an executor left it for another device, see `executor`'s placement).
    pub(crate) fn put_back(&mut self, batch: Vec<Sequence>) {
        self.sequences.extend(batch);
    }

    /// Takes every pending sequence (every device has failed: they are failed).
    pub(crate) fn take_all(&mut self) -> Vec<Sequence> {
        std::mem::take(&mut self.sequences)
    }

    /// Removes the sequences whose caller gave up; returns their tokens.
    pub(crate) fn drop_cancelled(&mut self) -> usize {
        let mut tokens = 0;
        self.sequences.retain(|s| {
            let keep = !s.request.is_cancelled();
            if !keep {
                tokens += s.tokens();
            }
            keep
        });
        tokens
    }

    /// The submission time of the oldest sequence's request, if any is waiting.
    pub(crate) fn oldest_accepted(&self) -> Option<std::time::Instant> {
        self.sequences.iter().map(|s| s.request.accepted).min()
    }

    /// Padded tokens a batch of everything pending would have (for `max_wait`).
    pub(crate) fn padded_tokens(&self) -> usize {
        let longest = self
            .sequences
            .iter()
            .map(Sequence::tokens)
            .max()
            .unwrap_or(0);
        longest * self.sequences.len()
    }

    /// Takes the next batch (module doc): the oldest sequence and its neighbours in length, within
    /// `max_tokens` padded tokens and `max_size` sequences. Empty when nothing is pending.
    pub(crate) fn take_batch(&mut self, max_tokens: usize, max_size: usize) -> Vec<Sequence> {
        if self.sequences.is_empty() {
            return Vec::new();
        }
        self.sequences.sort_by_key(|s| (s.tokens(), s.order));
        let oldest = (0..self.sequences.len())
            .min_by_key(|&i| self.sequences[i].order)
            .expect("not empty");
        let tokens = |i: usize| self.sequences[i].tokens();
        let fits =
            |count: usize, longest: usize| count <= max_size && count * longest <= max_tokens;
        // Below an eighth of the budget a forward costs about the same whatever its size (launches,
        // not arithmetic, bound it), so padding is free there and no length is kept apart.
        let small = |count: usize, longest: usize| count * longest <= max_tokens / 8;
        let (mut lo, mut hi) = (oldest, oldest + 1);
        let mut longest = tokens(oldest);
        loop {
            let count = hi - lo + 1;
            // Shorter neighbours cost no padding of the others; take them while they would not be
            // padded to more than twice their length.
            if lo > 0
                && fits(count, longest)
                && (tokens(lo - 1) * 2 >= longest || small(count, longest))
            {
                lo -= 1;
            } else if hi < self.sequences.len()
                && fits(count, tokens(hi))
                && (tokens(lo) * 2 >= tokens(hi) || small(count, tokens(hi)))
            {
                longest = tokens(hi);
                hi += 1;
            } else {
                break;
            }
        }
        self.sequences.drain(lo..hi).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Request;
    use braid_model::Encoding;

    fn sequence(tokens: usize, order: u64) -> Sequence {
        Sequence {
            encoding: Encoding {
                ids: vec![1; tokens],
                type_ids: vec![0; tokens],
            },
            request: Request::new(1),
            index: 0,
            order,
        }
    }

    fn pending(lengths: &[usize]) -> Pending {
        Pending {
            sequences: lengths
                .iter()
                .enumerate()
                .map(|(i, &t)| sequence(t, i as u64))
                .collect(),
            idle: vec![0],
        }
    }

    fn lengths(batch: &[Sequence]) -> Vec<usize> {
        batch.iter().map(Sequence::tokens).collect()
    }

    #[test]
    fn a_batch_holds_the_oldest_and_its_neighbours_in_length_within_the_budget() {
        // Oldest is the 40-token one; budget 4 x 40 tokens.
        let mut p = pending(&[40, 10, 200, 38, 41, 35, 12]);
        let batch = p.take_batch(160, 64);
        assert!(batch.iter().any(|s| s.order == 0), "the oldest is in");
        // 38 and 35 (padded to at most twice their length); the 41-token one would make it
        // 4 x 41 = 164 > 160; 12 and 10 would be padded past twice their length: a batch of their own.
        assert_eq!(lengths(&batch), vec![35, 38, 40]);
        assert_eq!(p.len(), 4);
        // Then the oldest left (10 tokens) with what is within twice its length, and so on.
        assert_eq!(lengths(&p.take_batch(160, 64)), vec![10, 12]);
        assert_eq!(lengths(&p.take_batch(160, 64)), vec![200]);
        assert_eq!(lengths(&p.take_batch(160, 64)), vec![41]);
    }

    #[test]
    fn a_small_batch_keeps_different_lengths_together() {
        // Under an eighth of the budget (128 of 1024 tokens) lengths are not kept apart.
        let mut p = pending(&[40, 10, 12, 100]);
        assert_eq!(lengths(&p.take_batch(1024, 64)), vec![10, 12, 40]);
        assert_eq!(lengths(&p.take_batch(1024, 64)), vec![100]);
    }

    #[test]
    fn the_size_limit_and_a_sequence_longer_than_the_budget() {
        let mut p = pending(&[10; 10]);
        assert_eq!(p.take_batch(10_000, 4).len(), 4);
        let mut p = pending(&[500]);
        assert_eq!(
            p.take_batch(100, 4).len(),
            1,
            "a lone long sequence still runs"
        );
    }

    #[test]
    fn every_sequence_is_taken_exactly_once() {
        let lengths_in: Vec<usize> = (0..500).map(|i| 3 + (i * 37) % 120).collect();
        let mut p = pending(&lengths_in);
        let mut seen = Vec::new();
        while p.len() > 0 {
            let batch = p.take_batch(1024, 32);
            assert!(!batch.is_empty());
            let longest = batch.iter().map(Sequence::tokens).max().unwrap();
            assert!(batch.len() == 1 || batch.len() * longest <= 1024);
            seen.extend(batch.iter().map(|s| s.order));
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..500).collect::<Vec<u64>>());
    }

    #[test]
    fn overload_refuses_a_request_whole_and_accepts_any_request_into_an_empty_queue() {
        let queue = Queue::new(100, 1);
        queue.submit(vec![sequence(60, 0)]).unwrap();
        let err = queue
            .submit(vec![sequence(30, 0), sequence(30, 0)])
            .unwrap_err();
        assert!(matches!(
            err,
            EngineError::Overloaded {
                queued: 60,
                requested: 60,
                limit: 100
            }
        ));
        assert_eq!(queue.queued_tokens(), 60);
        let mut pending = queue.pending.lock();
        queue.drain_inbox(&mut pending);
        let batch = pending.take_batch(1000, 10);
        queue.taken(batch.iter().map(Sequence::tokens).sum());
        drop(pending);
        queue.submit(vec![sequence(500, 0)]).unwrap();
        assert_eq!(queue.queued_tokens(), 500);
    }
}
