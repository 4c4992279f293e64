"""Helpers shared by braid's anchor scripts (scripts/anchors/*.py); not run on its own.

Each anchor imports this module from its own folder, so copy it along with them (scripts/gpu-run.sh
pack does). What it holds:

- MINILM_SHAPE: the BertConfig arguments of all-MiniLM-L6-v2 (random weights are enough for timing);
- env_float / env_int: knobs read from the environment (DUR, REPS, SEQ, ...);
- emit: append a row, print it as one JSON line, rewrite $OUT/<name>.json (a list of rows, indent 1)
  so that a run cut short still leaves its figures;
- gpu_line / cpu_line: the device, driver and library versions, printed to stderr before a run;
- drive: N caller threads in a closed loop, timed in REPS back-to-back windows of DUR seconds each:
  sequences/s is the median window (min and max beside it), latency percentiles over every call;
- windows: the same for one caller in the calling thread.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

MINILM_SHAPE = dict(
    vocab_size=30522,
    hidden_size=384,
    num_hidden_layers=6,
    num_attention_heads=12,
    intermediate_size=1536,
    max_position_embeddings=512,
    hidden_act="gelu",
)


def env_float(name, default):
    return float(os.environ.get(name, default))


def env_int(name, default):
    return int(os.environ.get(name, default))


def out_file(name):
    return os.path.join(os.environ.get("OUT", "."), name)


def emit(rows, row, name):
    """Record one result row: stdout as a JSON line, and the whole list so far in $OUT/name."""
    rows.append(row)
    print(json.dumps(row), flush=True)
    with open(out_file(name), "w") as f:
        json.dump(rows, f, indent=1)


def _driver_version():
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        return out[0] if out else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown (no nvidia-smi)"


def gpu_line():
    """'NAME, N GiB, compute capability X.Y, driver D; torch T (CUDA C)'; exits without a CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        sys.exit("this anchor needs a CUDA GPU: torch.cuda.is_available() is False")
    p = torch.cuda.get_device_properties(0)
    return (
        f"{p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}, "
        f"driver {_driver_version()}; torch {torch.__version__} (CUDA {torch.version.cuda})"
    )


def cpu_line():
    """'MODEL, N cores; Python V' from /proc/cpuinfo where there is one."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}"


def describe(*lines):
    for line in lines:
        print(f"# {line}", file=sys.stderr, flush=True)


def _percentile(sorted_xs, q):
    return sorted_xs[min(len(sorted_xs) - 1, int(q * len(sorted_xs)))]


def drive(threads, batch, worker, seconds, reps):
    """Time `threads` callers, each running `worker(i, run)`.

    A worker sets itself up (inputs, stream, warm-up calls), then calls run(step): run waits until
    every caller is ready, then calls step() in a loop until the timing is over, counting `batch`
    sequences and one latency per call. The main thread times `reps` back-to-back windows of
    `seconds`. Returns seq_per_s (median window), seq_per_s_min, seq_per_s_max, p50_ms, p99_ms, reps.
    """
    counts = [0] * threads
    lats = [[] for _ in range(threads)]
    stop = threading.Event()
    ready = threading.Barrier(threads + 1)
    errors = []

    def run_loop(i, step):
        ready.wait()
        n, lat = 0, lats[i]
        while not stop.is_set():
            t0 = time.perf_counter()
            step()
            lat.append(time.perf_counter() - t0)
            n += batch
            counts[i] = n

    def body(i):
        try:
            worker(i, lambda step: run_loop(i, step))
        except BaseException as e:  # a failing caller must not leave the others at the barrier
            errors.append(e)
            ready.abort()
            stop.set()

    ts = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(threads)]
    for t in ts:
        t.start()
    rates = []
    try:
        ready.wait()
        for _ in range(reps):
            c0, t0 = sum(counts), time.perf_counter()
            time.sleep(seconds)
            c1, t1 = sum(counts), time.perf_counter()
            rates.append((c1 - c0) / (t1 - t0))
    except threading.BrokenBarrierError:
        pass
    stop.set()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    all_lats = sorted(x for l in lats for x in l)
    return dict(
        seq_per_s=round(statistics.median(rates), 1),
        seq_per_s_min=round(min(rates), 1),
        seq_per_s_max=round(max(rates), 1),
        p50_ms=_percentile(all_lats, 0.5) * 1e3,
        p99_ms=_percentile(all_lats, 0.99) * 1e3,
        reps=reps,
    )


def windows(step, per_step, seconds, reps):
    """One caller in this thread: `reps` windows, each calling step() until `seconds` have passed.

    Returns seq_per_s (median window, `per_step` sequences a call), seq_per_s_min, seq_per_s_max, reps.
    """
    rates = []
    for _ in range(reps):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            step()
            n += per_step
        rates.append(n / (time.perf_counter() - t0))
    return dict(
        seq_per_s=round(statistics.median(rates), 1),
        seq_per_s_min=round(min(rates), 1),
        seq_per_s_max=round(max(rates), 1),
        reps=reps,
    )
