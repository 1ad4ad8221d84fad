"""`python benchmarks/profile_gateway.py [-m lorafleet] ARGS…` runs `lorafleet ARGS…` under cProfile with a CPU-time
clock and writes the stats to $LORAFLEET_BENCH_PROFILE when it exits (benchmarks/hop.py --profile).

A CPU clock, not wall time: on a shared machine a wall clock charges the gateway for every moment
another process (vLLM, the client) ran while it waited."""

from __future__ import annotations

import cProfile
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lorafleet.serve.app  # noqa: E402, F401 - imported before profiling starts

from lorafleet.cli.main import main  # noqa: E402

profile = cProfile.Profile(time.process_time)
profile.enable()
try:
    args = sys.argv[1:]
    main(args[2:] if args[:2] == ["-m", "lorafleet"] else args)
except SystemExit:
    pass
finally:
    profile.disable()
    profile.dump_stats(os.environ["LORAFLEET_BENCH_PROFILE"])
