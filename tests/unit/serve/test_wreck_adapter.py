"""scripts/wreck_adapter.py (the demo's degraded canary): lora_B replaced by seeded noise, the rest kept."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

REPO = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("wreck_adapter", REPO / "scripts" / "wreck_adapter.py")
wa = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wa)
A = "base_model.model.layers.0.self_attn.q_proj.lora_A.weight"
B = "base_model.model.layers.0.self_attn.q_proj.lora_B.weight"


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / wa.CONFIG).write_text('{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}')
    save_file({A: np.ones((4, 16), np.float32), B: np.zeros((16, 4), np.float32)}, str(src / wa.WEIGHTS))
    return src


def test_lora_b_becomes_seeded_noise_and_lora_a_and_config_stay(adapter: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert wa.wreck(adapter, out, scale=0.2, seed=1) == 1
    tensors = load_file(str(out / wa.WEIGHTS))
    assert np.array_equal(tensors[A], np.ones((4, 16), np.float32))
    assert tensors[B].shape == (16, 4) and tensors[B].dtype == np.float32
    assert 0.1 < float(tensors[B].std()) < 0.3
    assert (out / wa.CONFIG).read_text() == (adapter / wa.CONFIG).read_text()
    again = tmp_path / "again"
    wa.wreck(adapter, again, scale=0.2, seed=1)
    assert np.array_equal(load_file(str(again / wa.WEIGHTS))[B], tensors[B])  # seeded: the demo is reproducible


def test_a_folder_that_is_not_a_lora_adapter_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "plain"
    src.mkdir()
    (src / wa.CONFIG).write_text("{}")
    save_file({"w": np.zeros((2, 2), np.float32)}, str(src / wa.WEIGHTS))
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "wreck_adapter.py"), str(src),
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 1 and "no lora_B tensors" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
