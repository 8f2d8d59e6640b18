"""What is installed and where code can run: the facts lesson 00 shows a learner."""

from __future__ import annotations

import importlib.metadata
import os
import platform

import torch


def version_of(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def triton_mode() -> str:
    """How a Triton kernel defined now would run here."""
    if version_of("triton") is None:
        return "not at all: Triton is not installed"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "through the interpreter, on the CPU"
    if torch.cuda.is_available():
        return "compiled, on the GPU"
    return "not yet: no GPU, and TRITON_INTERPRET=1 is not set"


def describe() -> dict[str, str]:
    """A table of the facts that decide what runs where."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "torch": torch.__version__,
        "CPU threads torch uses": str(torch.get_num_threads()),
        "GPU": gpu,
        "triton": version_of("triton") or "not installed",
        "Triton kernels run": triton_mode(),
        "kdlearn": version_of("kdlearn") or "not installed",
    }
