"""The lean loss (LM head on the scored positions only) under DDP: two CPU processes (gloo, torchrun), the model in
accelerate's DDP wrapper. The loss must run through the wrapper's forward (that is what syncs the gradients) and
give the full forward's gradients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lorafleet.serve.vllm_child import free_port

from tests.unit.train.helpers import REPO

WORKER = Path(__file__).with_name("ddp_lean_worker.py")


@pytest.fixture(scope="module")
def ddp_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("ddp-lean") / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(WORKER), str(tiny_model), str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_repro_lean_loss_runs_under_ddp(ddp_run: dict) -> None:
    assert ddp_run["wrapped_in_ddp"]
    # The head saw only the scored positions (one call), not every padded position as the full forward does.
    assert ddp_run["lean_head_rows"] == [ddp_run["scored"]]
    assert ddp_run["scored"] < ddp_run["padded_positions"]
    assert ddp_run["full_head_rows"] == [ddp_run["padded_positions"]]


def test_lean_gradients_under_ddp_equal_the_full_forwards(ddp_run: dict) -> None:
    assert ddp_run["lean_loss"] == pytest.approx(ddp_run["full_loss"], rel=1e-5)
    assert ddp_run["grads"] > 0 and ddp_run["max_grad"] > 0
    assert ddp_run["max_grad_diff"] <= 1e-4 * ddp_run["max_grad"] + 1e-6
    # All-reduced: both ranks hold the same gradients although their batches differ.
    assert ddp_run["max_rank_diff"] <= 1e-6 * max(1.0, ddp_run["max_grad"])
