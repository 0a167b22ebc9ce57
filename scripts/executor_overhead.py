"""What Ray costs over the local executor: per trivial task, at start-up, and on a whole suite.

    python scripts/executor_overhead.py                       # trivial tasks + the smoke suite both ways
    python scripts/executor_overhead.py --suite suites/mnist.yaml
    python scripts/executor_overhead.py --tasks 500 --no-suite

Trivial tasks measure the executor alone (scheduling, argument and result transfer): the same
function, which does nothing, runs through LocalExecutor and through a local RayExecutor with one
CPU per task. The suite runs measure the whole command (``bench run --quiet``, as a user times it)
with each executor, one run each, so on a busy machine read them as one sample, not a benchmark.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.executors import LocalExecutor, RayExecutor, Shared  # noqa: E402 (after the path insert)


def nothing(spec: int, shared: object) -> int:
    return spec


def per_task(executor, n: int) -> float:
    """Seconds per task over ``n`` trivial tasks (after one warm-up batch that starts the workers)."""
    executor.run_all(nothing, list(range(4)), lambda s, r: None, Shared())
    t0 = time.perf_counter()
    executor.run_all(nothing, list(range(n)), lambda s, r: None, Shared())
    return (time.perf_counter() - t0) / n


def suite_seconds(suite: str, executor: str) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "bench", "run", suite, "--quiet", "--executor", executor,
                        "--out", str(Path(tmp) / "run")], cwd=ROOT, check=True, capture_output=True)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--suite", default="suites/smoke.yaml")
    ap.add_argument("--no-suite", action="store_true", help="only the trivial tasks")
    args = ap.parse_args()

    local = per_task(LocalExecutor(threads=1), args.tasks)
    t0 = time.perf_counter()
    ray_ex = RayExecutor(num_cpus=1, device="cpu", quiet=True)
    start = time.perf_counter() - t0
    remote = per_task(ray_ex, args.tasks)
    ray_ex.close()
    print(f"trivial task, {args.tasks} of them: local {local * 1e3:.3f} ms/task, ray {remote * 1e3:.2f} ms/task "
          f"({ray_ex.slots} at once); starting the local Ray instance: {start:.1f} s")
    if not args.no_suite:
        for name in ("local", "ray"):
            print(f"{args.suite} with --executor {name}: {suite_seconds(args.suite, name):.1f} s wall", flush=True)


if __name__ == "__main__":
    main()
