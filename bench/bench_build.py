"""Benchmark `trm build-dataset` on the seed subsets: wall time and peak RSS of the whole process tree.

    .venv/bin/python bench/bench_build.py                      # num_aug 10, 100 and 1000 (1000 writes ~9 GB!)
    .venv/bin/python bench/bench_build.py --num-aug 10 100     # the quick cases only
    .venv/bin/python bench/bench_build.py --tmp-dir /scratch --workers 2

Builds `--subsets training2 evaluation2 concept --test-set-name evaluation2` from ../shared/arc-agi/arc-agi (or
--input-file-prefix, or $TRM_SHARED_DIR/arc-agi/arc-agi) into a temporary folder that is deleted after each case.
CPU s is user + sys time of the build and its workers. Peak RSS is the largest sum of resident memory over the build process and all its descendants, sampled every
20 ms from /proc (Linux). Ratios compare with the reference builder measured on the same kind of machine
(2 cores): 6.5 s / 314 MiB at num_aug 10 and 686 s / 22 GiB at num_aug 1000 (spec section 4); the target for
num_aug 1000 is <= 60 s and < 1.5 GiB. The load average is printed because the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRM_SHARED_DIR", ROOT.parent / "shared"))
GIB, MIB = 1024**3, 1024**2
# num_aug -> (seconds, bytes) of the reference builder
REFERENCE = {10: (6.5, 314 * MIB), 1000: (686.0, 22 * GIB)}
TARGET = {1000: (60.0, 1.5 * GIB)}
PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree_rss(root: int) -> int:
    """Resident bytes of `root` and every descendant (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
        stack.extend(children.get(pid, []))
    return total


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_case(prefix: str, num_aug: int, tmp_root: Path, workers: int | None) -> tuple[float, int, float, str]:
    out = Path(tempfile.mkdtemp(prefix=f"bench-build-{num_aug}-", dir=tmp_root)) / "ds"
    cmd = [sys.executable, "-m", "trm.data.build", "--input-file-prefix", prefix, "--output-dir", str(out),
           "--subsets", "training2", "evaluation2", "concept", "--test-set-name", "evaluation2",
           "--num-aug", str(num_aug), "--quiet"]
    if workers:
        cmd += ["--workers", str(workers)]
    peak = 0
    try:
        cpu0 = _children_cpu()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT)
        done = threading.Event()

        def sample():
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _tree_rss(proc.pid))
                done.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        seconds = time.perf_counter() - start
        cpu = _children_cpu() - cpu0  # user + sys of the build and its workers
        done.set()
        sampler.join()
        if code != 0:
            raise SystemExit(f"build failed with exit code {code}: {' '.join(cmd)}")
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        rows = sum((p.stat().st_size - 128) // 900 for p in out.glob("*/all__inputs.npy"))
        return seconds, peak, cpu, f"{rows} rows, {size / GIB:.2f} GiB on disk"
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-aug", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--input-file-prefix", default=str(SHARED / "arc-agi" / "arc-agi"))
    p.add_argument("--tmp-dir", default=None, help="where the temporary datasets go (default: system temp)")
    p.add_argument("--workers", type=int, default=None)
    args = p.parse_args(argv)
    if not Path(f"{args.input_file_prefix}_training2_challenges.json").is_file():
        print(f"skip: no ARC files at {args.input_file_prefix}_*.json (set --input-file-prefix or TRM_SHARED_DIR)")
        return 0
    tmp_root = Path(args.tmp_dir or tempfile.gettempdir())
    print(f"cores usable: {len(os.sched_getaffinity(0))}, load average before: {os.getloadavg()}")
    print(f"{'num_aug':>7} {'seconds':>8} {'CPU s':>7} {'peak RSS':>10} {'x faster':>9} {'x less mem':>10}  output")
    for num_aug in args.num_aug:
        seconds, peak, cpu, what = run_case(args.input_file_prefix, num_aug, tmp_root, args.workers)
        ref = REFERENCE.get(num_aug)
        speed = f"{ref[0] / seconds:9.1f}" if ref else f"{'n/a':>9}"
        mem = f"{ref[1] / peak:10.1f}" if ref else f"{'n/a':>10}"
        print(f"{num_aug:>7} {seconds:8.1f} {cpu:7.1f} {peak / MIB:7.0f} MiB {speed} {mem}  {what}", flush=True)
        if num_aug in TARGET:
            t, m = TARGET[num_aug]
            verdict = "meets" if seconds <= t and peak < m else "MISSES"
            print(f"        target <= {t:.0f} s and < {m / GIB:.1f} GiB: {verdict}")
    print(f"load average after: {os.getloadavg()} (other jobs on a shared machine inflate the times;")
    print(" CPU s = user + sys of the build's processes, which other jobs inflate much less than wall time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
