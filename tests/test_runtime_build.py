"""The llama.cpp build is portable: explicit CPU flags, never GGML_NATIVE, never AMX (scripts/llama-wheel)."""

from __future__ import annotations

import json
import os
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "llama-wheel"


def _flags(level: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MEMBRANE_LLAMA_CPU", None)
    if level:
        env["MEMBRANE_LLAMA_CPU"] = level
    out = subprocess.run(["bash", str(SCRIPT), "flags"], env=env, check=True, capture_output=True, text=True).stdout
    fields = dict(line.split("=", 1) for line in out.splitlines())
    args = dict(arg[2:].split("=", 1) for arg in fields["CMAKE_ARGS"].split())
    return {"level": fields["level"], **args}


def _cpu_flags() -> set[str]:
    return set(Path("/proc/cpuinfo").read_text().split())


@pytest.mark.parametrize("level", [None, "avx512", "avx2", "sse42"])
def test_flags_never_native_never_amx(level: str | None) -> None:
    """Every level turns GGML_NATIVE and all three AMX kernels off explicitly."""
    flags = _flags(level)
    assert flags["GGML_NATIVE"] == "OFF"
    assert flags["GGML_AMX_TILE"] == flags["GGML_AMX_INT8"] == flags["GGML_AMX_BF16"] == "OFF"


def test_levels_use_only_their_vector_units() -> None:
    """avx2 leaves AVX-512 off, sse42 leaves AVX and AVX2 off, avx512 turns AVX-512 on."""
    assert _flags("avx2")["GGML_AVX2"] == "ON" and _flags("avx2")["GGML_AVX512"] == "OFF"
    sse = _flags("sse42")
    assert sse["GGML_AVX"] == sse["GGML_AVX2"] == sse["GGML_FMA"] == "OFF" and sse["GGML_SSE42"] == "ON"
    assert _flags("avx512")["GGML_AVX512"] == "ON"


def test_detected_level_fits_this_cpu() -> None:
    """The level picked from /proc/cpuinfo uses no instruction set this CPU lacks."""
    flags, cpu = _flags(), _cpu_flags()
    if flags["GGML_AVX512"] == "ON":
        assert {"avx512f", "avx512bw", "avx512vl"} <= cpu
    if flags.get("GGML_AVX2") == "ON":
        assert {"avx2", "fma", "f16c"} <= cpu


def test_unknown_level_is_refused() -> None:
    """A typo in MEMBRANE_LLAMA_CPU is an error naming the valid levels, not a silent default."""
    env = dict(os.environ, MEMBRANE_LLAMA_CPU="avx9000")
    done = subprocess.run(["bash", str(SCRIPT), "flags"], env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "avx512, avx2 or sse42" in done.stderr


def test_installed_llama_cpp_is_the_portable_wheel() -> None:
    """The llama-cpp-python in this environment was installed from scripts/llama-wheel's flag-keyed folder,
    not from a wheel pip built natively and cached by version."""
    try:
        dist = metadata.distribution("llama_cpp_python")
    except metadata.PackageNotFoundError:
        pytest.fail("llama-cpp-python is not installed: run `make venv`")
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    url = direct_url.get("url", "")
    assert "/membrane/wheels/llama-cpp-python-" in url, (
        f"llama-cpp-python came from {url or 'an index'}; "
        "reinstall it with scripts/llama-wheel install .venv/bin/python"
    )


def test_compiled_features_exclude_amx_and_fit_this_cpu() -> None:
    """llama.cpp's own system info shows no AMX kernels and no AVX-512 on a CPU without it."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    assert "AMX" not in info, info
    if "avx512f" not in _cpu_flags():
        assert "AVX512 = 1" not in info, info
