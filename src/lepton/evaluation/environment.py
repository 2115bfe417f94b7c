"""Where a measurement ran: CPU, its vector/matrix extensions, threads, GPU, package versions.

Timings are only comparable between runs on the same kind of machine; `same_machine` says why two
fingerprints are not. Package versions come from installed metadata, never by importing the
package, so fingerprinting stays fast and does not pull in onnxruntime and friends.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
# Spellings in /proc/cpuinfo that differ from our key.
_FLAG_ALIASES = {"avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni"}
_PACKAGES = (
    "lepton", "torch", "transformers", "tokenizers", "numpy", "safetensors",
    "onnxruntime", "onnx", "optimum", "peft",
)  # fmt: skip
_GIT_TIMEOUT_S = 5


class Environment(BaseModel):
    cpu_model: str
    cpu_flags: dict[str, bool]  # empty where /proc/cpuinfo is not available
    cores_logical: int
    cores_physical: int | None
    torch_threads: int
    gpu: str | None
    os: str
    python: str
    packages: dict[str, str | None]  # None when the package is not installed
    lepton_commit: str | None  # "<sha>" or "<sha>-dirty"; None outside a git checkout
    seed: int | None
    hostname_hash: str  # first 12 hex chars of sha256(hostname)


def _read_cpuinfo() -> tuple[str | None, dict[str, bool], int | None]:
    """(model name, flags, physical cores) from /proc/cpuinfo; (None, {}, None) where absent."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None, {}, None
    model = None
    present: set[str] = set()
    cores: set[tuple[str, str]] = set()
    physical_id = core_id = None
    for line in text.splitlines() + [""]:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not key:  # blank line ends one logical processor's block
            if core_id is not None:
                cores.add((physical_id or "0", core_id))
            physical_id = core_id = None
        elif key == "model name" and model is None:
            model = value
        elif key == "flags" and not present:
            present = {_FLAG_ALIASES.get(flag, flag) for flag in value.split()}
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            core_id = value
    flags = {flag: flag in present for flag in _FLAGS} if present else {}
    return model, flags, (len(cores) or None)


def _package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=_GIT_TIMEOUT_S
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _lepton_commit() -> str | None:
    """HEAD of the git checkout holding lepton's source, "-dirty" if it has uncommitted changes."""
    source = Path(__file__).resolve().parent
    # An installed copy may sit in a virtualenv inside some unrelated repository: not our commit.
    if {"site-packages", "dist-packages"} & set(source.parts):
        return None
    commit = _git(["rev-parse", "HEAD"], source)
    if not commit:
        return None
    status = _git(["status", "--porcelain"], source)
    return commit + ("-dirty" if status else "")


def _gpu_name(torch) -> str | None:
    try:
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # a broken driver must not stop a CPU measurement
        return None
    return None


def fingerprint(seed: int | None = None) -> Environment:
    """Describe this machine and software stack; takes well under a second."""
    import torch  # a core dependency; needed for its thread count and the GPU

    model, flags, physical = _read_cpuinfo()
    cpu_model = model or platform.processor() or platform.machine() or "unknown"
    hostname = socket.gethostname() or platform.node()
    return Environment(
        cpu_model=cpu_model,
        cpu_flags=flags,
        cores_logical=os.cpu_count() or 1,
        cores_physical=physical,
        torch_threads=torch.get_num_threads(),
        gpu=_gpu_name(torch),
        os=platform.platform(),
        python=sys.version.split()[0],
        packages=_package_versions(),
        lepton_commit=_lepton_commit(),
        seed=seed,
        hostname_hash=hashlib.sha256(hostname.encode()).hexdigest()[:12],
    )


def int8_fast(env: Environment) -> bool:
    """True when the CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8),
    the case where dynamic int8 quantization can beat fp32 on CPU."""
    flags = env.cpu_flags
    return bool(flags.get("avx512_vnni") or flags.get("avx_vnni") or flags.get("amx_int8"))


def same_machine(a: Environment, b: Environment) -> list[str]:
    """Differences between two fingerprints that make their timings incomparable; [] if none."""
    differences = []
    if a.cpu_model != b.cpu_model:
        differences.append(f"cpu_model: {a.cpu_model!r} vs {b.cpu_model!r}")
    for flag in sorted(set(a.cpu_flags) | set(b.cpu_flags)):
        if a.cpu_flags.get(flag) != b.cpu_flags.get(flag):
            differences.append(
                f"cpu flag {flag}: {a.cpu_flags.get(flag)} vs {b.cpu_flags.get(flag)}"
            )
    if a.torch_threads != b.torch_threads:
        differences.append(f"torch_threads: {a.torch_threads} vs {b.torch_threads}")
    if a.gpu != b.gpu:
        differences.append(f"gpu: {a.gpu!r} vs {b.gpu!r}")
    for package in ("torch", "onnxruntime"):
        va, vb = a.packages.get(package), b.packages.get(package)
        if va != vb:
            differences.append(f"{package}: {va!r} vs {vb!r}")
    return differences


def _isa_summary(flags: dict[str, bool]) -> str:
    if not flags:
        return "CPU flags unknown"
    have = [
        name
        for key, name in (
            ("avx2", "AVX2"),
            ("avx512f", "AVX-512"),
            ("avx512_vnni", "AVX512-VNNI"),
            ("avx_vnni", "AVX-VNNI"),
            ("amx_int8", "AMX"),
        )
        if flags.get(key)
    ]
    missing = [
        name
        for name, keys in (
            ("AVX-512", ("avx512f",)),
            ("VNNI", ("avx512_vnni", "avx_vnni")),
            ("AMX", ("amx_tile", "amx_int8", "amx_bf16")),
        )
        if not any(flags.get(key) for key in keys)
    ]
    text = ", ".join(have) if have else "no AVX2"
    return text + (f" (no {'/'.join(missing)})" if missing else "")


def describe(env: Environment) -> str:
    """One line, such as
    "AMD EPYC 7B12, 2 cores, 2 threads, AVX2 (no AVX-512/VNNI/AMX), torch 2.13.0"."""
    physical, logical = env.cores_physical, env.cores_logical
    if physical and physical != logical:
        cores = f"{physical} core{'s' if physical != 1 else ''} ({logical} logical)"
    else:
        cores = f"{logical} core{'s' if logical != 1 else ''}"
    parts = [
        env.cpu_model,
        cores,
        f"{env.torch_threads} thread{'s' if env.torch_threads != 1 else ''}",
        _isa_summary(env.cpu_flags),
    ]
    if env.gpu:
        parts.append(env.gpu)
    parts.append(f"torch {env.packages.get('torch') or 'not installed'}")
    return ", ".join(parts)
