"""``--batch-size auto``: find the batch size that fills the device without running out of memory.

The probe runs the loaded model on batches shaped like the features (zeros: the
memory a batch needs and the time it takes do not depend on the values), from the
backend's default batch size, doubling each step (or halving, while the default
itself runs out of memory). Each size is called once to warm up (the first call
allocates memory and, on GPUs, picks kernels) and then timed over several calls.
It stops at the first of:

- the device runs out of memory: the last size that fitted is taken;
- rows/s stop growing (less than ``MIN_GAIN`` more for twice the rows): the
  device is full, a bigger batch would only cost memory and latency;
- one call takes longer than ``MAX_CALL_S``, or the probe as a whole longer
  than ``BUDGET_S``;
- the size reaches the dataset's row count or ``MAX_ROWS``.

No probe row is written anywhere. A later out-of-memory error during the run
(real data can need more memory than zeros, e.g. for variable-length inputs) is
handled by the pipeline: the batch is halved and retried.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable


from .errors import ModelError
from .features import zero_feeds

MAX_ROWS = 1 << 20
MIN_GAIN = 0.10
MAX_CALL_S = 2.0
BUDGET_S = 20.0
#: Each size is timed over at least this long (or MAX_TIMED_CALLS calls).
MIN_TIMED_S = 0.05
MAX_TIMED_CALLS = 20
#: The pipeline's own cost per batch (Python, Arrow slicing, queues), added to each
#: call's time so that tiny batches are not chosen for a model call that is fast alone.
PER_BATCH_S = 0.0005


@dataclass
class Probe:
    """What the probe tried and why it stopped (``describe()`` goes to --dry-run, the summary and the report)."""

    chosen: int
    reason: str
    tried: list[tuple[int, float | None]] = field(default_factory=list)  # (rows, rows/s or None for OOM)

    def describe(self) -> str:
        steps = ", ".join(f"{n:,}: {'OOM' if r is None else f'{r:,.0f} rows/s'}" for n, r in self.tried)
        return f"auto: {self.reason} (probed {steps})"


def probe_batch_size(
    predict: Callable[[dict[str, Any]], Any],
    make_feeds: Callable[[int], dict[str, Any]],
    is_oom: Callable[[BaseException], bool],
    *,
    start: int = 256,
    max_rows: int = MAX_ROWS,
    min_gain: float = MIN_GAIN,
    max_call_s: float = MAX_CALL_S,
    budget_s: float = BUDGET_S,
    release: Callable[[], None] | None = None,
    per_batch_s: float = PER_BATCH_S,
    cap_why: str = "the largest size probed",
    clock: Callable[[], float] = time.perf_counter,
) -> Probe:
    """Double the batch from ``start`` until memory, speed or time says stop; see the module doc."""
    start = max(1, min(start, max_rows))
    t_begin = clock()
    tried: list[tuple[int, float | None]] = []
    best, best_rate = None, 0.0
    n = start
    while True:
        feeds = make_feeds(n)
        try:
            predict(feeds)  # warm-up: allocation, kernel choice
            calls, t0 = 0, clock()
            while True:  # time at least MIN_TIMED_S (tiny batches are noisy one by one)
                predict(feeds)
                calls += 1
                seconds = max(clock() - t0, 1e-9)
                if seconds >= MIN_TIMED_S or calls >= MAX_TIMED_CALLS:
                    break
            seconds /= calls
        except Exception as exc:  # noqa: BLE001 - anything but OOM is the model's own error
            feeds = None
            _out_of_memory(exc, is_oom, release, tried, n)
            if best is None:
                if n > 1:  # the starting size does not fit: come down until one does
                    n //= 2
                    continue
                raise ModelError(
                    "--batch-size auto: the model runs out of device memory even on 1 row; "
                    "use a device with more memory, or --device cpu"
                ) from None
            best = _confirm(predict, make_feeds, is_oom, best, release, tried)
            return Probe(best, f"{best:,} rows ({n:,} ran out of device memory)", tried)
        rate = n / (seconds + per_batch_s)
        if best is None and tried and tried[-1][1] is None:
            tried.append((n, rate))
            n = _confirm(predict, make_feeds, is_oom, n, release, tried)
            return Probe(n, f"{n:,} rows (larger batches ran out of device memory)", tried)
        tried.append((n, rate))
        if best is not None and rate < best_rate * (1 + min_gain):
            return Probe(best, f"{best:,} rows (rows/s grew less than {min_gain:.0%} at {n:,})", tried)
        best, best_rate = n, rate
        if n >= max_rows:
            return Probe(best, f"{best:,} rows ({cap_why})", tried)
        if seconds > max_call_s:
            return Probe(best, f"{best:,} rows (one call took {seconds:.1f} s; larger batches were not probed)", tried)
        if clock() - t_begin > budget_s:
            return Probe(best, f"{best:,} rows (the {budget_s:g} s probe budget ran out)", tried)
        n = min(n * 2, max_rows)


def _confirm(predict, make_feeds, is_oom, n: int, release, tried: list) -> int:
    """Right after an out-of-memory error the allocator is at its most fragmented:
    run the chosen size twice more there, halving it while it fails."""
    while n > 1:
        try:
            feeds = make_feeds(n)
            predict(feeds)
            predict(feeds)
            return n
        except Exception as exc:  # noqa: BLE001
            feeds = None
            _out_of_memory(exc, is_oom, release, tried, n)
            n //= 2
    return n


def _out_of_memory(exc: BaseException, is_oom, release, tried: list, n: int) -> None:
    """Re-raise anything but an out-of-memory error; else free what the model
    holds and record that ``n`` rows did not fit."""
    if not is_oom(exc):
        raise exc
    if release is not None:
        release()
    tried.append((n, None))


def choose_batch_size(plan) -> tuple[int, str]:
    """The batch size for ``--batch-size auto`` and how it was found."""
    backend = plan.backend
    cap, cap_why = MAX_ROWS, "the largest size probed"
    if plan.rows_total and plan.rows_total < MAX_ROWS:
        cap = 1 << max(0, int(plan.rows_total - 1).bit_length())  # the next power of two
        cap_why = f"the whole dataset, {plan.rows_total:,} rows, in one batch"
    probe = probe_batch_size(
        backend.predict,
        lambda n: zero_feeds(plan.features, n),
        backend.is_out_of_memory,
        start=min(type(backend).default_batch_size, cap),
        max_rows=cap,
        release=getattr(backend, "release_memory", None),
        cap_why=cap_why,
    )
    return probe.chosen, probe.describe()
