"""hp.info(): what this installation can run."""
import os
import platform

import torch

from .backends import triton_available, triton_interpreting
from ._ext import extension_status
from ._version import __version__


def cpu_isa():
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
              "avx512vbmi", "avx512_vpopcntdq", "amx_int8", "amx_bf16", "neon", "asimd"]
    return [f for f in wanted if f in flags] or [platform.machine()]


def cpu_model():
    """The CPU's marketing name: platform.processor() is empty on most Linux systems."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                # x86 says "model name"; some ARM kernels only give "Hardware" / "CPU part"
                if line.split(":", 1)[0].strip() in ("model name", "Hardware"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            import subprocess
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip() or platform.machine()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def info(as_dict=False):
    ext = extension_status()
    d = {
        "hotpath": __version__,
        "torch": torch.__version__,
        "cpp_extension": "built ({})".format(ext["how"]) if ext["loaded"] else f"missing ({ext['error']})",
        "cpu": cpu_model(),
        "cpu_isa": " ".join(cpu_isa()),
        "compiled_for": os.environ.get("HOTPATH_ARCH", "native"),
        "threads": torch.get_num_threads(),
        "triton": ("installed" + (" (interpreter: TRITON_INTERPRET=1)" if triton_interpreting() else ""))
        if triton_available() else "not installed",
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available",
        "backend_override": os.environ.get("HOTPATH_BACKEND", "none"),
    }
    if as_dict:
        return d
    return "\n".join(f"{k:16s} {v}" for k, v in d.items())
