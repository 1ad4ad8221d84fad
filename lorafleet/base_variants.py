"""Base variants: the full-precision base and its dequantised-nf4 twin, the base a QLoRA adapter was
trained against.

A QLoRA run trains its adapter on nf4-rounded weights; served on the full-precision base the adapter
answers differently (docs/benchmarks.md). The twin is a plain HF folder holding exactly the weights
the QLoRA load computes with (each Linear weight quantised by bitsandbytes as `load_nf4` does, then
dequantised), so any engine can serve it.

Where twins live: `<data-dir>/base/<base folder name>-nf4/`, beside the embedded base, whatever
folder the base itself is in (a user's base may sit on a read-only mount). The twin's manifest
records the base it was made from (path and weights sha256); a twin of another base under the same
name is refused, not reused.

torch/transformers/bitsandbytes are imported inside functions: serve imports this module.
"""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from lorafleet.base_model import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    BaseManifest,
    DerivedFrom,
    _version,
    inspect_base,
    read_manifest,
    verify_prepared,
)
from lorafleet.card import AdapterCard, TrainedOn
from lorafleet.errors import BaseModelError
from lorafleet.fsutil import atomic_write_json, replace_dir, sha256_file

FULL = "full"
NF4 = "nf4"
VARIANTS = (FULL, NF4)
# The QLoRA load's quantisation (train/model.py loads through nf4_config, so they cannot drift apart).
NF4_SETTINGS: dict[str, Any] = {"quant_type": "nf4", "double_quant": True, "compute_dtype": "float32",
                                "blocksize": 64}
# vLLM's own in-flight bitsandbytes load (nf4, double quant) of the original base: the matched base on GPU.
# Older vLLMs also need the load format named; newer ones accept it (and infer it).
VLLM_BNB_ARGS = ["--quantization", "bitsandbytes", "--load-format", "bitsandbytes"]
INSTALL_BNB = "pip install bitsandbytes (it comes with `make install`, the train extra)"


class ServingBase(BaseModel):
    """Where to serve (and check) one adapter: the base variant it was trained on."""

    model_config = ConfigDict(extra="forbid")

    variant: str
    path: Path  # the folder vLLM loads
    vllm_args: list[str] = []  # extra vLLM arguments for this variant (GPU: bitsandbytes)
    hf_path: Path  # the folder HF + PEFT loads to compute what the adapter was trained on


def twin_dir(data_dir: Path, base: Path, variant: str = NF4) -> Path:
    """Where the `variant` twin of `base` lives (see the module docstring)."""
    return Path(data_dir) / "base" / f"{Path(base).resolve().name}-{variant}"


def base_digest(folder: Path) -> str | None:
    """The identity of a base's weights: the manifest's sha256, else model.safetensors' own, else a sha256
    over the shards' hashes (a sharded HF folder); None when there is no safetensors file."""
    import hashlib

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is not None:
        return manifest.weights_sha256
    if (folder / WEIGHTS_FILE).is_file():
        return sha256_file(folder / WEIGHTS_FILE)
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        return None
    h = hashlib.sha256()
    for shard in shards:
        h.update(f"{shard.name}:{sha256_file(shard)}\n".encode())
    return h.hexdigest()


def nf4_config(compute_dtype: str = "float32") -> Any:
    """The BitsAndBytesConfig of a QLoRA load: nf4, double quantisation, fp32 compute (bf16 on a GPU
    with it, for training only: the twin is always written from the fp32-compute load)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=getattr(torch, compute_dtype))


def load_nf4(base: Path, compute_dtype: str = "float32") -> Any:
    """The base loaded as QLoRA training loads it (before prepare_model_for_kbit_training). The
    weights are read in float32 whatever `compute_dtype`, so the nf4 codes match the twin's."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base, quantization_config=nf4_config(compute_dtype),
                                                dtype=torch.float32)


def check_quantisable(base: Path) -> None:
    """Refuse, before loading anything, a base bitsandbytes cannot quantise to nf4."""
    config = json.loads((Path(base) / "config.json").read_text(encoding="utf-8"))
    quant = config.get("quantization_config")
    if quant:
        method = quant.get("quant_method") or quant.get("quantization_method") or "an unknown method"
        raise BaseModelError(f"{base}: already quantised ({method}, config.json quantization_config); "
                             "bitsandbytes nf4 quantises full-precision weights only",
                             hint="prepare the twin from the unquantised base it was made from")
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken install raises anything
        raise BaseModelError(f"bitsandbytes cannot be imported ({exc.__class__.__name__}), so no nf4 variant",
                             hint=INSTALL_BNB) from None


def prepare_nf4(base: Path, out: Path, *, force: bool = False) -> BaseManifest:
    """Write the dequantised-nf4 twin of `base` into `out` (temp folder + rename); idempotent."""
    base, out = Path(base).resolve(), Path(out)
    info = inspect_base(base)
    check_quantisable(base)
    digest = base_digest(base)
    if out.exists() and not force:
        reused = reusable_twin(out, base, digest)
        if reused is not None:
            return reused
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        parameters, dtype = _write_twin(base, tmp)
        manifest = BaseManifest(
            model_id=info.model_id, variant=NF4, weights_sha256=sha256_file(tmp / WEIGHTS_FILE),
            parameters=parameters, dtype=dtype, architecture=info.architecture,
            created_at=datetime.now(UTC), derived_from=DerivedFrom(path=str(base), weights_sha256=digest),
            quantization=dict(NF4_SETTINGS),
            library_versions={p: _version(p) for p in ("torch", "transformers", "bitsandbytes")},
        )
        atomic_write_json(tmp / MANIFEST_FILE, manifest)
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def reusable_twin(out: Path, base: Path, digest: str | None) -> BaseManifest | None:
    """The manifest of a verified twin of this very base in `out`, None when `out` is empty;
    BaseModelError when `out` holds something else (another base's twin, stale weights, a folder)."""
    if not any(out.iterdir()):
        return None
    manifest = verify_prepared(out)
    if manifest is None or manifest.variant != NF4 or manifest.derived_from is None:
        raise BaseModelError(f"{out}: exists but is no nf4 twin (no nf4 {MANIFEST_FILE})",
                             hint="choose another --out or pass --force to replace it")
    made_from = manifest.derived_from
    if made_from.path != str(base):
        raise BaseModelError(f"{out}: holds the nf4 twin of another base ({made_from.path})",
                             hint="pass --out with a folder of its own for this base")
    if made_from.weights_sha256 != digest:
        raise BaseModelError(f"{out}: made from other weights of {base} (sha256 {str(made_from.weights_sha256)[:12]}…, "
                             f"now {str(digest)[:12]}…)",
                             hint="the base changed; rerun `lorafleet base prepare --variant nf4 --force`")
    return manifest


def _write_twin(base: Path, dest: Path) -> tuple[int, str]:
    """Quantise as the QLoRA load does, dequantise every Linear4bit weight, save a plain HF folder;
    (parameters, the dtype it is stored in)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        quantised = load_nf4(base)
    except Exception as exc:  # noqa: BLE001 - transformers/bitsandbytes raise many types
        raise BaseModelError(f"{base}: bitsandbytes could not quantise it to nf4 "
                             f"({exc.__class__.__name__}: {str(exc)[:160]})",
                             hint=f"check the base loads with transformers; {INSTALL_BNB}") from None
    state = dequantised_state(quantised)
    dtype = lossless_dtype(state, stored_dtype(base))
    state = {k: v.to(dtype) for k, v in state.items()}
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing = set(plain.state_dict()) - set(state)
    if missing:
        raise BaseModelError(f"{base}: the nf4 load lacks {len(missing)} weight(s), e.g. {sorted(missing)[0]}",
                             hint="this architecture is not supported for an nf4 twin")
    plain.load_state_dict({k: state[k] for k in plain.state_dict()}, strict=True, assign=True)
    plain.tie_weights()
    plain.generation_config = quantised.generation_config
    # One file: the manifest hashes it, and vLLM reads it like any folder.
    plain.save_pretrained(dest, safe_serialization=True, max_shard_size="10000GB")
    AutoTokenizer.from_pretrained(base).save_pretrained(dest)
    return int(sum(p.numel() for p in plain.parameters())), str(dtype).removeprefix("torch.")


def stored_dtype(base: Path) -> Any:
    """The dtype the base's config.json says its weights are stored in (float32 when it says none)."""
    import torch

    config = json.loads((Path(base) / "config.json").read_text(encoding="utf-8"))
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    found = getattr(torch, name, None)
    return found if isinstance(found, torch.dtype) and found.is_floating_point else torch.float32


def lossless_dtype(state: dict[str, Any], preferred: Any) -> Any:
    """`preferred` (the base's own dtype) when every tensor survives the round trip through it exactly,
    else float32: the twin then differs from the base by the nf4 rounding only, and is served alike."""
    import torch

    for tensor in state.values():
        if tensor.is_floating_point() and not torch.equal(tensor.to(preferred).to(tensor.dtype), tensor):
            return torch.float32
    return preferred


def dequantised_state(model: Any) -> dict[str, Any]:
    """A plain state dict of a bitsandbytes-4bit model: each Linear4bit weight through
    bitsandbytes.functional.dequantize_4bit (what its forward multiplies by), the rest as loaded."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    state: dict[str, Any] = {}
    quantised = 0
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, bnb.nn.Linear4bit):
            quantised += 1
            weight = module.weight
            if getattr(weight.quant_state, "packing_format_for_cpu", False):
                # bitsandbytes repacks the codes in place at the first no-grad CPU forward (AVX512-BF16)
                raise BaseModelError(f"{name}: the nf4 weights were repacked by a forward pass",
                                     hint="dequantise a freshly loaded model (load_nf4)")
            # What training multiplies by (MatMul4Bit): dequantised, then cast to the compute dtype.
            state[f"{prefix}weight"] = dequantize_4bit(weight.data, weight.quant_state).to(
                module.compute_dtype or weight.quant_state.dtype).contiguous()
            if module.bias is not None:
                state[f"{prefix}bias"] = module.bias.data
            continue
        for pname, param in module.named_parameters(recurse=False):
            state.setdefault(f"{prefix}{pname}", param.data)
        for bname, buf in module.named_buffers(recurse=False):
            if bname not in module._non_persistent_buffers_set:
                state.setdefault(f"{prefix}{bname}", buf)
    if not quantised:
        raise BaseModelError(f"{type(model).__name__}: no Linear layer that bitsandbytes quantised to nf4",
                             hint="an nf4 twin needs a base built from nn.Linear layers")
    return state


def variants_of(base: Path, data_dir: Path) -> list[tuple[str, Path, BaseManifest]]:
    """The twins under `<data-dir>/base` made from `base` (variant, folder, manifest)."""
    base = Path(base).resolve()
    found = []
    for manifest_path in sorted((Path(data_dir) / "base").glob(f"*/{MANIFEST_FILE}")):
        try:
            manifest = read_manifest(manifest_path.parent)
        except BaseModelError:
            continue
        if manifest and manifest.derived_from and manifest.derived_from.path == str(base):
            found.append((manifest.variant, manifest_path.parent, manifest))
    return found


def ensure_nf4(base: Path, data_dir: Path) -> tuple[Path, BaseManifest]:
    """The nf4 twin of `base` in its place under the data dir, written when missing."""
    out = twin_dir(data_dir, base)
    return out, prepare_nf4(base, out)


def trained_on(base: Path, *, qlora: bool, data_dir: Path) -> TrainedOn:
    """What a run's card records: the nf4 twin for QLoRA (written if missing), else the base as it is."""
    if qlora:
        twin, manifest = ensure_nf4(base, data_dir)
        return TrainedOn(variant=NF4, path=str(twin.resolve()), weights_sha256=manifest.weights_sha256)
    return TrainedOn(variant=FULL, path=str(Path(base).resolve()), weights_sha256=base_digest(base))


def folder_variant(folder: Path, *, weights_sha256: str | None = None) -> TrainedOn:
    """What an adapter checked on `folder` was trained on (an imported one: `adapters import`): the nf4 twin
    when the folder is one (its manifest says so), else the base as it is; `weights_sha256` when known."""
    folder = Path(folder).resolve()
    manifest = read_manifest(folder)
    if manifest is not None and manifest.variant == NF4:
        return TrainedOn(variant=NF4, path=str(folder), weights_sha256=manifest.weights_sha256)
    return TrainedOn(variant=FULL, path=str(folder), weights_sha256=weights_sha256 or base_digest(folder))


def is_nf4_twin(folder: Path) -> bool:
    """Does `folder` hold an nf4 twin (a readable manifest saying so)?"""
    try:
        manifest = read_manifest(folder) if (Path(folder) / "config.json").is_file() else None
    except BaseModelError:
        return False
    return manifest is not None and manifest.variant == NF4


def variant_of(card: AdapterCard) -> str:
    """The base variant an adapter must be served on: its card's trained_on, or nf4 for a QLoRA card
    written before trained_on existed."""
    if card.trained_on is not None:
        return card.trained_on.variant
    return NF4 if (card.lora.quantization or "").lower() == NF4 else FULL


EngineKind = Literal["cpu", "gpu"]


def serving_base(card: AdapterCard, *, base: Path, data_dir: Path, engine: EngineKind = "cpu") -> ServingBase:
    """Where to serve `card` and check its fidelity: the full base, or for nf4 the twin (CPU) or vLLM's
    bitsandbytes load of the original base (GPU). `base` is the gateway's full-precision base.
    BaseModelError when the nf4 twin is missing (`base prepare --variant nf4` writes it)."""
    variant = variant_of(card)
    base = Path(base).resolve()
    if variant == FULL:
        return ServingBase(variant=FULL, path=base, hf_path=base)
    if variant != NF4:
        raise BaseModelError(f"adapter {card.served_name}: unknown base variant {variant!r} on its card",
                             hint=f"known variants: {', '.join(VARIANTS)}")
    twin = nf4_twin_for(card, base=base, data_dir=data_dir)
    if engine == "gpu":
        return ServingBase(variant=NF4, path=base, vllm_args=list(VLLM_BNB_ARGS), hf_path=twin)
    return ServingBase(variant=NF4, path=twin, hf_path=twin)


def nf4_twin_for(card: AdapterCard, *, base: Path, data_dir: Path) -> Path:
    """The twin folder the adapter was trained on: the card's path when it is still there, else this
    base's twin under the data dir."""
    candidates = []
    if card.trained_on is not None and card.trained_on.path:
        candidates.append(Path(card.trained_on.path))
    candidates.append(twin_dir(data_dir, base))
    for folder in candidates:
        if (folder / "config.json").is_file():
            return folder
    raise BaseModelError(f"adapter {card.served_name} was trained on the nf4 variant, and no nf4 twin of "
                         f"{base} exists ({candidates[-1]})",
                         hint=f"run `lorafleet base prepare --variant nf4 --base {base}`")
