"""Builds and loads the fused C++ CPU kernel (``csrc/*.cpp``) on first use.

The build runs once per machine (torch's extension cache, ``TORCH_EXTENSIONS_DIR`` or
``~/.cache/torch_extensions``) and never on ``import dyt_lab``: only ``unavailable_reason()``
triggers it. It registers ``torch.ops.dyt_lab_cpu.forward`` (with its autograd) and ``.backward``.
If anything is missing or the build fails, the reason is kept and the caller falls back.
Set ``DYT_LAB_NO_KERNEL=1`` to skip the kernel altogether.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path

import torch

CSRC = Path(__file__).parent / "csrc"
SOURCES = [CSRC / "dynamic_squash.cpp", CSRC / "squash_autograd.cpp"]  # + the two headers they include

# Flags per CPU capability, as PyTorch compiles its own per-capability kernels: the defines pick
# ATen's AVX2/AVX512 Vectorized<float> (and the Sleef tanh/erf that libtorch exports).
_CAPABILITY_FLAGS = {
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "AVX512": [
        "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
        "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512",
    ],
}

_state: dict[str, object] = {"tried": False, "reason": None, "build_seconds": None}
_lock = threading.Lock()  # two threads' first calls must not load the library twice


def _capability() -> str:
    """ATen's CPU capability name (AVX2, AVX512, DEFAULT, ...) on this machine."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return "DEFAULT"


def _import_cpp_extension():
    """torch.utils.cpp_extension, without its import-time note that no CUDA runtime was found.

    That note (a logger warning) is about CUDA builds and says nothing about this CPU kernel.
    """
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    return cpp_extension


def _missing_tool() -> str | None:
    """Why the build cannot start (no compiler, no ninja), or None."""
    cpp_extension = _import_cpp_extension()

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler found (looked for {compiler!r}; set CXX or install g++)"
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    missing = [p for p in (*SOURCES, CSRC / "dynamic_squash.h", CSRC / "squash_math.h") if not p.is_file()]
    if missing:
        return f"kernel source {missing[0]} is missing from the installed package (package data)"
    return None


def _build() -> None:
    """Compile (or reuse the cached build of) the kernel and load it into this process."""
    cpp_extension = _import_cpp_extension()

    capability = _capability()
    flags = _CAPABILITY_FLAGS.get(capability, [])
    start = time.perf_counter()
    # at::parallel_for is inline OpenMP code: without -fopenmp it silently runs on one thread.
    openmp = ["-fopenmp"] if "OpenMP" in torch.__config__.parallel_info() else []
    # torch rebuilds by itself when a source or a flag changes, but not when torch itself changes
    # under the same path: the name carries torch's version, and the capability so that machines
    # sharing a home folder do not share binaries. It also carries the sources' folder: two
    # checkouts (a clone beside a work tree) under one name rebuilt it in turn, 40-70 s each time,
    # and every DyT process waited on the build lock meanwhile.
    torch_version = re.sub(r"\W", "_", torch.__version__)
    checkout = hashlib.sha1(str(SOURCES[0].parent.resolve()).encode()).hexdigest()[:8]
    cpp_extension.load(
        name=f"dyt_lab_squash_{capability.lower()}_torch{torch_version}_{checkout}",
        sources=[str(p) for p in SOURCES],
        extra_cflags=["-O3", *openmp, *flags],
        extra_ldflags=openmp,
        is_python_module=False,
        verbose=False,
    )
    _state["build_seconds"] = time.perf_counter() - start


def unavailable_reason() -> str | None:
    """None once the kernel is loaded (building it on the first call), else why it cannot be."""
    with _lock:
        if not _state["tried"]:
            reason = "disabled by DYT_LAB_NO_KERNEL" if os.environ.get("DYT_LAB_NO_KERNEL") else _missing_tool()
            if reason is None:
                try:
                    _build()
                except Exception as err:  # a failed build must only cost speed, never a result
                    first_line = (str(err).strip().splitlines() or [""])[0][:200]
                    reason = f"building the C++ kernel failed ({type(err).__name__}: {first_line})"
            _state["reason"], _state["tried"] = reason, True
    return _state["reason"]  # type: ignore[return-value]


def build_seconds() -> float | None:
    """Seconds the first ``unavailable_reason()`` spent compiling or loading the kernel, if it ran."""
    return _state["build_seconds"]  # type: ignore[return-value]
