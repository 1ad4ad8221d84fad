"""The compiled fused LoRA kernel (`lora_kernel.c`): built once per machine, loaded with ctypes.

`scripts/install.sh` builds it (`python -m lorafleet.serve.lora_plugin.native`); if it is missing
the engine builds it at first use. The library lands in `~/.cache/lorafleet/kernels/` under a
name that hashes the source, the flags and the CPU's feature flags (it is compiled for this
CPU: `-march=native`), written to a temp file and renamed, so concurrent engines never load a
half-written file. Without a C compiler the plugin runs its pure-torch path; the engine log says
which path is active. No torch here: the build runs at install time.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("vllm.plugins.lorafleet_lora")

SOURCE = Path(__file__).with_name("lora_kernel.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-std=gnu11", "-shared", "-fPIC")
SYMBOL = "lorafleet_lora_linear"


def default_cache() -> Path:
    """~/.cache/lorafleet/kernels, or under the temp dir where there is no home (a bare service user)."""
    try:
        return Path.home() / ".cache" / "lorafleet" / "kernels"
    except RuntimeError:
        return Path(tempfile.gettempdir()) / "lorafleet-kernels"


CACHE = default_cache()
COMPILERS = ("cc", "gcc", "g++")  # Debian's g++ package brings gcc and cc with it
_i64, _ptr = ctypes.c_int64, ctypes.c_void_p
ARGTYPES = [_ptr, ctypes.c_int, _i64, _ptr, ctypes.c_int, _i64, _i64, _ptr, _i64, _ptr, _ptr, ctypes.c_int, _i64, _i64,
            _i64, _i64, _ptr, ctypes.c_float, ctypes.c_int]


class KernelBuildError(RuntimeError):
    """The kernel could not be compiled here (no compiler, or the compiler failed)."""


def compiler() -> str | None:
    """The first C compiler on PATH, None when there is none."""
    for name in COMPILERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def cpu_signature() -> str:
    """What `-march=native` depends on: the machine and its CPU feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    flags = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    return f"{platform.machine()}|{flags}"


def library_path(cache: Path = CACHE) -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + cpu_signature().encode())
    return cache / f"lora_kernel-{digest.hexdigest()[:16]}.so"


def build(target: Path) -> Path:
    """Compile the kernel to `target` (temp file + rename); raises `KernelBuildError`."""
    cc = compiler()
    if cc is None:
        raise KernelBuildError(f"no C compiler on PATH (tried {', '.join(COMPILERS)}); "
                               "install Debian's g++ (scripts/system-deps.sh)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    os.close(fd)
    lang = ["-x", "c"] if Path(cc).name.startswith(("g++", "c++")) else []
    try:
        result = subprocess.run([cc, *FLAGS, *lang, str(SOURCE), "-o", tmp], capture_output=True, text=True,
                                timeout=120)
        if result.returncode != 0:
            raise KernelBuildError(f"{cc} failed on {SOURCE}: {result.stderr.strip()[-800:]}")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def load(cache: Path = CACHE) -> ctypes.CDLL:
    """The kernel library, built first if this machine has none yet."""
    path = library_path(cache)
    if not path.exists():
        build(path)
    lib = ctypes.CDLL(str(path))
    fn = getattr(lib, SYMBOL)
    fn.argtypes = ARGTYPES
    fn.restype = ctypes.c_int
    return lib


def kernel(cache: Path = CACHE):
    """The fused op (a ctypes function), or None with a log line when only the torch path can run."""
    try:
        fn = getattr(load(cache), SYMBOL)
    except (KernelBuildError, OSError, subprocess.TimeoutExpired) as exc:
        log.warning("lorafleet LoRA plugin: compiled kernel unavailable (%s); using the pure-torch grouped ops",
                    exc)
        return None
    log.info("lorafleet LoRA plugin: compiled fused LoRA kernel active (%s)", library_path(cache))
    return fn


@functools.cache
def default_kernel():
    """`kernel()` once per process: every punica wrapper of an engine shares it (and its log line)."""
    return kernel()


def main() -> int:
    """Build the kernel now (install time); exit 0 either way, saying which path the engine will use."""
    path = library_path()
    try:
        print(f"lora kernel: {path} (already built)" if path.exists() else f"lora kernel: built {build(path)}")
    except (KernelBuildError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"lora kernel: not built ({exc}); vLLM's LoRA plugin will use its pure-torch ops", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
