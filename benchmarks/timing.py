"""Round-robin timing shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def round_robin_medians(
    runners: dict[str, Callable[[int], None]],
    steps: int,
    repeats: int,
    warmup: int = 2,
) -> dict[str, float]:
  """Median over `repeats` of the mean seconds per step, for each runner.

  A runner `run(n)` takes n steps and waits for them to finish. The runners
  take turns within each repeat, so load from other processes hits all of
  them alike; compare ratios from one call, not absolute times.
  """
  for run in runners.values():
    run(warmup)
  times = {name: [] for name in runners}
  for _ in range(repeats):
    for name, run in runners.items():
      start = time.perf_counter()
      run(steps)
      times[name].append((time.perf_counter() - start) / steps)
  return {name: statistics.median(t) for name, t in times.items()}
