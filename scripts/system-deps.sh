#!/usr/bin/env bash
# Debian packages the tests need: chromium (browser tests), PostgreSQL (database tests) and Prometheus
# (prometheus + promtool: alert-rule tests and the scrape integration test), and g++ (brings gcc/cc) for the
# LoRA plugin's compiled kernel (serve/lora_plugin/lora_kernel.c; without it the plugin's torch ops run).
# Installs only what is missing; skips quietly where we are not root (say so).
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need+=(prometheus)
command -v cc >/dev/null 2>&1 || need+=(g++)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: missing ${need[*]}; install them with: sudo apt-get install ${need[*]}" >&2
  exit 0
fi
echo "system-deps: installing ${need[*]} (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The tests start their own Prometheus; Debian's package also enables a system one on :9090, which would
# clash with the compose stack's port: stop it where systemd runs (a container has none).
if [[ " ${need[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
