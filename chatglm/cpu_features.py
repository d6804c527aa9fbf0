"""What this CPU computes fast, read once at start-up, and the compute dtype each CPU product takes from it.

Without bfloat16 dot products (AVX512_BF16 or AMX), torch emulates a bfloat16 matrix product several times
slower than a float32 one, and a float16 one about as slowly: there a prompt's products run in float32, which
is exact for the integer weights and as faithful as the original's fp16. Where the CPU has them, prompts of a
bfloat16 or float16 model multiply in bfloat16 (twice the speed of float32 and half its traffic). A float32
model's products always stay float32.

    CHATGLM_CPU_PATH=bf16|fp32   force the choice (for tests and measurements)

ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA, which make torch and oneDNN behave like an older CPU, count as
this CPU's features: on an AVX-512 machine capped at AVX2 the choice is that of an AVX2 one.
"""

import functools
import logging
import os
import platform
import threading

import torch

logger = logging.getLogger(__name__)

PATH_VARIABLE = "CHATGLM_CPU_PATH"
PATHS = ("bf16", "fp32")
BF16_DOT_FLAGS = ("avx512_bf16", "amx_bf16")
# oneDNN's ISA caps that keep bfloat16 dot products (its names; ALL is no cap)
ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                    "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2",
                    "ALL")


@functools.cache
def cpu_flags():
    """The feature flags of this CPU as the kernel reports them (Linux), e.g. {"avx2", "fma", ...}; empty
    where /proc/cpuinfo is missing."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def has_bf16_dot(flags, environment=os.environ):
    """Whether bfloat16 products run natively: the CPU has bfloat16 dot products and neither torch nor oneDNN
    is capped below them."""
    torch_capped = environment.get("ATEN_CPU_CAPABILITY", "").lower() in ("avx2", "default", "avx", "none")
    onednn_cap = environment.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    return any(flag in flags for flag in BF16_DOT_FLAGS) and not torch_capped and onednn_cap in ONEDNN_BF16_ISAS


def choose_path(flags, environment=os.environ):
    """"bf16" where the CPU multiplies bfloat16 natively, else "fp32"; CHATGLM_CPU_PATH overrides."""
    forced = environment.get(PATH_VARIABLE)
    if forced:
        if forced not in PATHS:
            raise ValueError(f"{PATH_VARIABLE}={forced!r}: use one of {', '.join(PATHS)}")
        return forced
    return "bf16" if has_bf16_dot(flags, environment) else "fp32"


@functools.cache
def cpu_path():
    """This process's choice, made once (see choose_path)."""
    path = choose_path(cpu_flags())
    logger.debug("CPU path %s (%s, torch capability %s, machine %s)", path,
                 "bf16 dot products" if has_bf16_dot(cpu_flags()) else "no bf16 dot products",
                 torch.backends.cpu.get_cpu_capability(), platform.machine())
    return path


def prompt_dtype(model_dtype):
    """The dtype a CPU prompt's products compute in, for a model of `model_dtype`."""
    if model_dtype == torch.float32 or cpu_path() == "fp32":
        return torch.float32
    return torch.bfloat16

# The largest weight expanded at once: ChatGLM-6B's largest block layer. A bigger one (the LM head) is
# expanded a slice of rows at a time, or kept to the kernels.
SCRATCH_MAX_VALUES = 16384 * 4096

_scratch = threading.local()


def scratch(rows, columns, dtype):
    """A reusable [rows, columns] buffer of `dtype`, one per thread, into which prompts expand a weight to their
    compute dtype: a fresh buffer of this size costs more in page faults than the conversion that fills it."""
    size = rows * columns * dtype.itemsize
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.numel() < size:
        _scratch.buffer = None  # let the old one go before the new one is allocated
        buffer = _scratch.buffer = torch.empty(size, dtype=torch.uint8)
    return buffer[:size].view(dtype).view(rows, columns)
