//! One engine over two devices — two separately loaded CPU runtimes — with the real model: placement
//! spreads batches and favours the faster device; a device that fails mid-run with many callers in
//! flight is retired and every request still completes with its exact embeddings; when every device
//! fails, callers get a clear error and nothing hangs. Failures are injected by [`Faulty`], a test
//! double that wraps the real CPU model and fails its forwards on demand; the engine is the real one.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::time::Duration;

use braid_engine::{DeviceState, Engine, EngineConfig, EngineDevice, EngineError, Mode};
use braid_model::load::{Embedder, WorkerStream};
use braid_model::{Encoding, ModelError, ModelSpec, PackedBatch, PaddedBatch, TokenBatch};
use braid_runtime::{AllocatorStats, DType, RuntimeError};
use common::{assert_same, minilm, next, references, sentences};

/// How long a test may take before it counts as hung.
const HANG: Duration = Duration::from_secs(120);

/// What a [`Faulty`] device does when it fails.
#[derive(Clone, Copy)]
enum Failure {
    /// Its stream fails (a device error).
    Stream,
    /// It runs out of memory, whatever the batch's size.
    Memory,
}

/// The real CPU model, with forwards that fail once `fail_after` forwards have run (or from when
/// `fail_now` is set), and an optional delay per forward (a slower device).
struct Faulty {
    inner: Arc<dyn Embedder>,
    failure: Failure,
    fail_after: usize,
    fail_now: AtomicBool,
    delay: Duration,
    forwards: AtomicUsize,
}

impl Faulty {
    fn new(inner: Arc<dyn Embedder>, failure: Failure, fail_after: usize) -> Arc<Self> {
        Arc::new(Self {
            inner,
            failure,
            fail_after,
            fail_now: AtomicBool::new(false),
            delay: Duration::ZERO,
            forwards: AtomicUsize::new(0),
        })
    }

    fn slow(inner: Arc<dyn Embedder>, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner,
            failure: Failure::Stream,
            fail_after: usize::MAX,
            fail_now: AtomicBool::new(false),
            delay,
            forwards: AtomicUsize::new(0),
        })
    }
}

impl Embedder for Faulty {
    fn embed(&self, texts: &[&str]) -> braid_model::Result<Vec<Vec<f32>>> {
        let encodings = self.spec().tokenizer.encode_batch(texts)?;
        self.embed_encodings(&encodings)
    }

    fn prepare(&self, encodings: &[Encoding]) -> TokenBatch {
        self.inner.prepare(encodings)
    }

    fn embed_batch(&self, batch: &PaddedBatch) -> braid_model::Result<Vec<Vec<f32>>> {
        self.embed_prepared(&TokenBatch::Padded(batch.clone()))
    }

    fn embed_packed(&self, batch: &PackedBatch) -> braid_model::Result<Vec<Vec<f32>>> {
        self.embed_prepared(&TokenBatch::Packed(batch.clone()))
    }

    /// Every forward, padded or packed, comes through here: the failure is injected before it.
    fn embed_prepared(&self, batch: &TokenBatch) -> braid_model::Result<Vec<Vec<f32>>> {
        let n = self.forwards.fetch_add(1, Ordering::SeqCst);
        if n >= self.fail_after || self.fail_now.load(Ordering::SeqCst) {
            return Err(ModelError::Runtime(match self.failure {
                Failure::Stream => RuntimeError::StreamFailed {
                    stream: 1,
                    message: "injected stream failure".into(),
                },
                Failure::Memory => RuntimeError::DeviceOutOfMemory {
                    requested: 1 << 30,
                    detail: "injected: no memory left".into(),
                },
            }));
        }
        std::thread::sleep(self.delay);
        self.inner.embed_prepared(batch)
    }

    fn spec(&self) -> &ModelSpec {
        self.inner.spec()
    }

    fn dtype(&self) -> DType {
        self.inner.dtype()
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn device_description(&self) -> String {
        self.inner.device_description()
    }

    fn allocator_stats(&self) -> AllocatorStats {
        self.inner.allocator_stats()
    }

    fn reset_peak_stats(&self) {
        self.inner.reset_peak_stats()
    }

    fn empty_cache(&self) -> braid_model::Result<()> {
        self.inner.empty_cache()
    }

    fn worker_slots(&self) -> usize {
        self.inner.worker_slots()
    }

    fn leased_slots(&self) -> usize {
        self.inner.leased_slots()
    }

    fn use_worker_stream(&self) -> braid_model::Result<WorkerStream<'_>> {
        self.inner.use_worker_stream()
    }
}

fn batched() -> EngineConfig {
    EngineConfig {
        mode: Mode::Batched,
        ..EngineConfig::for_backend("cpu")
    }
}

fn two(first: Arc<dyn Embedder>, second: Arc<dyn Embedder>) -> Vec<EngineDevice> {
    vec![
        EngineDevice::new("cpu:0", first),
        EngineDevice::new("cpu:1", second),
    ]
}

/// `callers` threads, each `rounds` requests of 1 to 4 texts; every result that comes back is
/// checked bit for bit against `want`. Returns (requests that succeeded, errors), or panics when the
/// callers have not all returned within [`HANG`].
fn run_callers(
    engine: &Arc<Engine>,
    texts: &Arc<Vec<String>>,
    want: &Arc<Vec<Vec<f32>>>,
    callers: usize,
    rounds: usize,
) -> (usize, Vec<EngineError>) {
    let (done, results) = mpsc::channel();
    let barrier = Arc::new(Barrier::new(callers));
    for t in 0..callers {
        let (engine, texts, want, done, barrier) = (
            engine.clone(),
            texts.clone(),
            want.clone(),
            done.clone(),
            barrier.clone(),
        );
        std::thread::spawn(move || {
            let mut rng = 0x9E37_79B9 ^ (t as u64 + 1);
            barrier.wait();
            for _ in 0..rounds {
                let count = 1 + next(&mut rng) as usize % 4;
                let picks: Vec<usize> = (0..count)
                    .map(|_| next(&mut rng) as usize % texts.len())
                    .collect();
                let request: Vec<&str> = picks.iter().map(|&i| texts[i].as_str()).collect();
                let outcome = engine.embed(&request).map(|got| {
                    assert_eq!(got.len(), picks.len(), "one result per text");
                    for (&i, embedding) in picks.iter().zip(&got) {
                        assert_same(embedding, &want[i], &format!("text {i}"));
                    }
                });
                if done.send(outcome).is_err() {
                    return;
                }
            }
        });
    }
    drop(done);
    let (mut ok, mut errors) = (0, Vec::new());
    for _ in 0..callers * rounds {
        match results.recv_timeout(HANG) {
            Ok(Ok(())) => ok += 1,
            Ok(Err(error)) => errors.push(error),
            Err(e) => panic!(
                "callers hung or panicked ({e}) after {ok} results and {} errors",
                errors.len()
            ),
        }
    }
    (ok, errors)
}

fn state(engine: &Engine, index: usize) -> DeviceState {
    engine.devices()[index].clone()
}

#[test]
fn two_healthy_devices_both_take_batches_and_the_slower_takes_fewer() {
    let (_r0, model0) = minilm();
    let (_r1, model1) = minilm();
    let texts = Arc::new(sentences());
    let want = Arc::new(references(&model0, &texts));
    // Both at full speed: both get work, every result exact.
    let engine =
        Arc::new(Engine::with_devices(two(model0.clone(), model1.clone()), batched()).unwrap());
    assert_eq!(engine.device_count(), 2);
    let (ok, errors) = run_callers(&engine, &texts, &want, 16, 6);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(ok, 96);
    // Shut down first: a batch's results reach its callers just before its device's count drops.
    engine.shutdown();
    let devices = engine.devices();
    for device in &devices {
        assert!(device.healthy && device.failure.is_none(), "{device:?}");
        assert!(device.batches > 0, "placement spread the work: {devices:?}");
        assert_eq!(device.inflight_tokens, 0, "{device:?}");
    }
    assert_eq!(
        devices.iter().map(|d| d.sequences).sum::<u64>(),
        engine.stats().sequences
    );
    drop(engine);

    // Device 0 takes 500 ms longer per forward; two executors per device and few callers, so both devices often
    // have one idle: the least-queued-work rule sends most batches to device 1, which has less
    // running whenever device 0 is busy.
    let slow = Faulty::slow(model0, Duration::from_millis(500));
    let config = EngineConfig {
        executors: 2,
        ..batched()
    };
    let engine = Arc::new(Engine::with_devices(two(slow, model1), config).unwrap());
    let (ok, errors) = run_callers(&engine, &texts, &want, 4, 8);
    assert!(errors.is_empty() && ok == 32, "{errors:?}");
    engine.shutdown();
    let (slow, fast) = (state(&engine, 0), state(&engine, 1));
    eprintln!("slow device: {slow:?}\nfast device: {fast:?}");
    assert!(
        2 * fast.sequences > 3 * slow.sequences,
        "the faster device took more: slow {slow:?}, fast {fast:?}"
    );
}

#[test]
fn a_device_failing_mid_run_loses_nothing_and_is_reported() {
    let (_r0, model0) = minilm();
    let (_r1, model1) = minilm();
    let texts = Arc::new(sentences());
    let want = Arc::new(references(&model0, &texts));
    // Device 0's stream fails after 5 forwards, with 24 callers in flight.
    let faulty = Faulty::new(model0, Failure::Stream, 5);
    let engine = Arc::new(Engine::with_devices(two(faulty, model1), batched()).unwrap());
    let (ok, errors) = run_callers(&engine, &texts, &want, 24, 8);
    assert!(errors.is_empty(), "every request completes: {errors:?}");
    assert_eq!(ok, 24 * 8);
    let (failed, healthy) = (state(&engine, 0), state(&engine, 1));
    assert!(!failed.healthy, "{failed:?}");
    let reason = failed.failure.clone().unwrap();
    assert!(reason.contains("injected stream failure"), "{reason}");
    assert!(
        failed.requeued_sequences > 0,
        "its batch in flight went back to the queue: {failed:?}"
    );
    assert!(healthy.healthy && healthy.batches > 0, "{healthy:?}");
    assert_eq!(engine.healthy_devices(), 1);
    // It stays retired; the other serves on.
    let got = engine.embed(&[texts[0].as_str()]).unwrap();
    assert_same(&got[0], &want[0], "after the failure");
    assert_eq!(state(&engine, 0).batches, failed.batches);
}

#[test]
fn memory_that_splitting_does_not_cure_retires_a_device_but_never_the_last() {
    let (_r0, model0) = minilm();
    let (_r1, model1) = minilm();
    let texts = Arc::new(sentences());
    let want = Arc::new(references(&model0, &texts));
    let faulty = Faulty::new(model0.clone(), Failure::Memory, 0);
    let engine = Arc::new(Engine::with_devices(two(faulty, model1), batched()).unwrap());
    let (ok, errors) = run_callers(&engine, &texts, &want, 8, 4);
    assert!(errors.is_empty() && ok == 32, "{errors:?}");
    let failed = state(&engine, 0);
    assert!(!failed.healthy, "{failed:?}");
    assert!(
        failed
            .failure
            .unwrap()
            .contains("out of memory on a single sequence"),
        "the reason says so"
    );
    drop(engine);
    // One device out of memory: its requests fail with it, the device stays in service.
    let faulty = Faulty::new(model0, Failure::Memory, 0);
    let engine = Engine::with_devices(
        vec![EngineDevice::new(
            "cpu:0",
            faulty.clone() as Arc<dyn Embedder>,
        )],
        batched(),
    )
    .unwrap();
    let error = engine.embed(&["a", "b"]).unwrap_err();
    assert!(error.is_out_of_memory(), "{error}");
    assert!(engine.devices()[0].healthy);
}

#[test]
fn an_input_error_fails_only_its_request_and_retires_nothing() {
    let (_r0, model0) = minilm();
    let (_r1, model1) = minilm();
    let engine = Engine::with_devices(two(model0.clone(), model1), batched()).unwrap();
    let tokenizer = &model0.spec().tokenizer;
    let good = tokenizer.encode("A man is eating food.").unwrap();
    let bad = braid_model::Encoding {
        ids: vec![101, 999_999, 102],
        type_ids: vec![0; 3],
    };
    let futures: Vec<_> = (0..6)
        .map(|i| {
            let mut encodings = vec![good.clone()];
            if i == 2 {
                encodings.push(bad.clone());
            }
            engine.embed_encodings_async(encodings)
        })
        .collect();
    for (i, future) in futures.into_iter().enumerate() {
        let result = block_on(future);
        assert_eq!(result.is_err(), i == 2, "request {i}: {result:?}");
    }
    assert_eq!(engine.healthy_devices(), 2);
}

#[test]
fn when_every_device_fails_callers_get_a_clear_error_and_nothing_hangs() {
    let (_r0, model0) = minilm();
    let (_r1, model1) = minilm();
    let texts = Arc::new(sentences());
    let want = Arc::new(references(&model0, &texts));
    let (first, second) = (
        Faulty::new(model0, Failure::Stream, 3),
        Faulty::new(model1, Failure::Stream, 6),
    );
    let engine = Arc::new(Engine::with_devices(two(first, second), batched()).unwrap());
    let (ok, errors) = run_callers(&engine, &texts, &want, 16, 6);
    assert_eq!(ok + errors.len(), 96, "every call returned");
    assert!(!errors.is_empty());
    for error in &errors {
        assert!(
            matches!(error, EngineError::NoHealthyDevice { .. }),
            "{error}"
        );
        assert!(error.is_device_failure());
    }
    assert_eq!(engine.healthy_devices(), 0);
    let refused = engine.embed(&["one more"]).unwrap_err();
    let message = refused.to_string();
    assert!(
        message.contains("every device of the engine has failed")
            && message.contains("cpu:0: ")
            && message.contains("cpu:1: ")
            && message.contains("injected stream failure"),
        "{message}"
    );
    assert_eq!(engine.queued_tokens(), 0);
}

#[test]
fn direct_mode_fails_over_to_the_other_device() {
    let (_r0, model0) = minilm();
    let (_r1, model1) = minilm();
    let texts = Arc::new(sentences());
    let want = Arc::new(references(&model0, &texts));
    let faulty = Faulty::new(model0, Failure::Stream, usize::MAX);
    let config = EngineConfig {
        mode: Mode::Direct,
        ..EngineConfig::for_backend("cpu")
    };
    let engine = Arc::new(Engine::with_devices(two(faulty.clone(), model1), config).unwrap());
    let (ok, errors) = run_callers(&engine, &texts, &want, 4, 4);
    assert!(errors.is_empty() && ok == 16, "{errors:?}");
    faulty.fail_now.store(true, Ordering::SeqCst);
    let (ok, errors) = run_callers(&engine, &texts, &want, 4, 4);
    assert!(errors.is_empty() && ok == 16, "{errors:?}");
    let devices = engine.devices();
    assert!(!devices[0].healthy && devices[1].healthy, "{devices:?}");
}

#[test]
fn a_device_list_is_checked() {
    let (_r0, model0) = minilm();
    let error = Engine::with_devices(Vec::new(), batched()).err().unwrap();
    assert!(error.to_string().contains("at least one device"), "{error}");
    let error = Engine::with_devices(two(model0.clone(), model0.clone()), batched());
    assert!(error.is_ok(), "the same model twice is allowed");
    let same_name = vec![
        EngineDevice::new("cpu:0", model0.clone()),
        EngineDevice::new("cpu:0", model0),
    ];
    let error = Engine::with_devices(same_name, batched()).err().unwrap();
    assert!(error.to_string().contains("named twice"), "{error}");
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Thread(std::thread::Thread);
    impl std::task::Wake for Thread {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Thread(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}
