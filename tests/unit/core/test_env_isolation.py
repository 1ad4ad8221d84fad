"""The machine's own LORAFLEET_* variables never reach a unit test (tests/unit/conftest.py): with
LORAFLEET_ENGINE=gpu in the environment, a unit test of the CPU variant child failed."""

from __future__ import annotations

import os
import subprocess
import sys

from lorafleet.config import Settings
from tests.fixtures.models import REPO
from tests.unit.conftest import KEEP


def test_no_lorafleet_variable_but_the_tests_own_is_set() -> None:
    assert [n for n in os.environ if n.startswith("LORAFLEET_") and n not in KEEP] == []
    assert Settings().engine == "cpu"


def test_repro_lorafleet_engine_gpu_in_the_environment_does_not_change_unit_tests() -> None:
    env = {**os.environ, "LORAFLEET_ENGINE": "gpu", "LORAFLEET_DATA_DIR": "/nonexistent"}
    probe = f"{__file__}::test_no_lorafleet_variable_but_the_tests_own_is_set"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", probe], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:]
