//! The loading seam (`braid_model::load`) on the CPU: a model loaded through it computes exactly what
//! `BertModel` computes, reports its facts, hands out and takes back worker streams, and refuses bad
//! options (a CUDA device without a driver, too many callers, f16 on the CPU) with clear errors.
//! Needs all-MiniLM-L6-v2 (fails with how to fetch it when absent).

mod common;

use std::sync::Arc;

use braid_cuda::CudaDevice;
use braid_model::load::{load, DeviceChoice, Embedder, LoadOptions};
use braid_model::{pad_batch, BertModel};
use braid_runtime::cpu::CpuDevice;
use braid_runtime::{DType, Runtime, RuntimeConfig};
use common::minilm_dir;

const TEXTS: [&str; 4] = [
    "A man is eating food.",
    "",
    "Ünïcödé and 中文 and 🙂",
    "The quick brown fox jumps over the lazy dog, again and again and again.",
];

fn cpu_options() -> LoadOptions {
    LoadOptions {
        device: DeviceChoice::Cpu,
        ..LoadOptions::new(minilm_dir().path())
    }
}

#[test]
fn the_seam_computes_what_bert_model_computes_bit_for_bit() {
    let embedder = load(&cpu_options()).unwrap();
    let direct = BertModel::load(
        Arc::new(Runtime::new(CpuDevice::new(), RuntimeConfig::default()).unwrap()),
        &minilm_dir(),
        DType::F32,
    )
    .unwrap();

    let expected = direct.embed(&TEXTS).unwrap();
    assert_eq!(embedder.embed(&TEXTS).unwrap(), expected);

    // Pre-tokenized and padded inputs give the same vectors.
    let encodings = embedder.spec().tokenizer.encode_batch(&TEXTS).unwrap();
    assert_eq!(embedder.embed_encodings(&encodings).unwrap(), expected);
    let padded = pad_batch(&encodings, embedder.spec().config.pad_token_id);
    assert_eq!(embedder.embed_batch(&padded).unwrap(), expected);
    assert!(embedder.embed(&[]).unwrap().is_empty());
}

#[test]
fn the_seam_reports_the_model_and_the_device() {
    let embedder = load(&LoadOptions {
        callers: 40,
        ..cpu_options()
    })
    .unwrap();
    assert_eq!(embedder.dim(), 384);
    assert_eq!(embedder.max_seq_length(), 256);
    assert_eq!(embedder.dtype(), DType::F32);
    assert_eq!(embedder.backend(), "cpu");
    assert!(!embedder.device_description().is_empty());
    assert!(embedder.worker_slots() >= 40, "{}", embedder.worker_slots());

    // Statistics move with work, and the peak restarts from what is held.
    embedder.embed(&TEXTS).unwrap();
    let stats = embedder.allocator_stats();
    assert!(
        stats.allocs > 0 && stats.peak_reserved_bytes > 0,
        "{stats:?}"
    );
    embedder.reset_peak_stats();
    assert!(embedder.allocator_stats().peak_reserved_bytes <= stats.peak_reserved_bytes);
    embedder.empty_cache().unwrap();

    // `auto` is the CPU exactly when no CUDA device is found.
    if !CudaDevice::is_available() {
        let auto = load(&LoadOptions::new(minilm_dir().path())).unwrap();
        assert_eq!(auto.backend(), "cpu");
    }
}

#[test]
fn threads_lease_worker_streams_through_the_seam_and_give_them_back() {
    let embedder: Arc<dyn Embedder> = load(&LoadOptions {
        callers: 3,
        ..cpu_options()
    })
    .unwrap();
    // This thread leases a slot of its own with its first embed, kept until it exits.
    let expected = embedder.embed(&TEXTS[..1]).unwrap();
    let ours = embedder.leased_slots();
    assert_eq!(ours, 1);
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let embedder = embedder.clone();
            std::thread::spawn(move || embedder.embed(&TEXTS[..1]).unwrap())
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().unwrap(), expected);
    }

    let check = embedder.clone();
    std::thread::spawn(move || {
        assert_eq!(
            check.leased_slots(),
            ours,
            "exited threads returned their slots"
        );
        {
            let stream = check.use_worker_stream().unwrap();
            assert!((1..=check.worker_slots()).contains(&stream.index()));
            assert_eq!(check.leased_slots(), ours + 1);
            assert_eq!(check.embed(&TEXTS[..1]).unwrap(), expected);
            assert_eq!(
                check.leased_slots(),
                ours + 1,
                "the embed used the leased stream"
            );
        }
        assert_eq!(
            check.leased_slots(),
            ours,
            "dropping the guard returns the slot"
        );
    })
    .join()
    .unwrap();
}

#[test]
fn cuda_without_a_usable_device_is_a_clear_error() {
    // Without a driver, device 0 is unusable; with one, the first ordinal past the last device is.
    let ordinal = CudaDevice::device_count();
    let error = load(&LoadOptions {
        device: DeviceChoice::Cuda { ordinal },
        ..cpu_options()
    })
    .err()
    .expect("no such CUDA device");
    let message = error.to_string();
    assert!(
        message.contains("CUDA") && (message.contains("driver") || message.contains("device")),
        "{message}"
    );
}

#[test]
fn bad_options_are_refused_with_what_is_allowed() {
    for callers in [0, 65] {
        let message = load(&LoadOptions {
            callers,
            ..cpu_options()
        })
        .err()
        .expect("callers out of range")
        .to_string();
        assert!(
            message.contains(&callers.to_string()) && message.contains("at most 64"),
            "{message}"
        );
    }

    let message = load(&LoadOptions {
        dtype: DType::F16,
        ..cpu_options()
    })
    .err()
    .expect("f16 on the CPU")
    .to_string();
    assert!(
        message.contains("f16") && message.contains("cpu"),
        "{message}"
    );

    let missing = std::env::temp_dir().join("braid-load-test-no-such-model");
    let message = load(&LoadOptions::new(&missing))
        .err()
        .expect("no model there")
        .to_string();
    assert!(
        message.contains("no-such-model") && message.contains("braid fetch-model"),
        "{message}"
    );
}
