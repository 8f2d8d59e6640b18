"""What is installed and where code can run: the facts lesson 00 shows a learner."""

from __future__ import annotations

import importlib.metadata
import os
import platform

import torch

# When TRITON_INTERPRET must be set, in the words lesson 00 and kdlearn.kernels use too. The facts
# behind it: triton.jit looks at triton.knobs.runtime.interpret, which reads the environment, at the
# moment it decorates a function, and makes an interpreted kernel or a compiled one for good; kdlearn
# imports its kernel modules (and Triton) only inside the first call that runs a kernel.
TRITON_INTERPRET_RULE = (
    "Triton reads TRITON_INTERPRET when @triton.jit defines a kernel; kdlearn defines its own kernels when "
    "one is first called (importing kdlearn imports neither Triton nor a kernel), so set TRITON_INTERPRET=1 "
    "before you define a kernel or first call one of kdlearn's; setting it before importing kdlearn, at the "
    "top of a notebook or script, is always early enough."
)


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


def triton_advice() -> str | None:
    """What to do so that Triton kernels can run here (the TRITON_INTERPRET rule), or None when a
    kernel defined now would already run, or Triton is not installed at all."""
    if version_of("triton") is None or os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available():
        return None
    return "To run Triton kernels on this CPU, switch the interpreter on. " + TRITON_INTERPRET_RULE


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
