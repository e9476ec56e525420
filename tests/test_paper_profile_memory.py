"""benchmarks/paper_profile.py measures a chapter's host memory from outside: forked workers that share
the kernel's pages must not count them once each (05's renderer forks one worker per core)."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark_script import load

CHILD = """
import os, sys, time
buf = bytearray(300 * 2**20)
buf[::4096] = b"x" * len(buf[::4096])  # touch every page: 300 MiB resident
for _ in range(4):
    if os.fork() == 0:  # workers share the parent's pages, copy-on-write
        time.sleep(30); os._exit(0)
print("ready", flush=True)
time.sleep(30)
"""


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="PSS needs Linux's smaps_rollup")
def test_the_sampled_peak_counts_pages_shared_with_forked_workers_once():
    pp = load("paper_profile")
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        sampler = pp._RssSampler(period=0.05)
        sampler.start()
        time.sleep(0.5)
        sampler.stop.set()
        sampler.join()
        mib = sampler.peak / 2**20
        # one parent and four workers each show ~300 MiB of RSS (1.5 GiB summed); shared, they hold ~300
        assert 250 < mib < 600, mib
    finally:
        subprocess.run(["pkill", "-P", str(proc.pid)], check=False)
        proc.kill()
        proc.wait()
