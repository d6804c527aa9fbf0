"""C kernels for the memory-bound work of a decoding step on CPU: the products of a step's tokens (one per
running sequence, up to 32) with a float, INT8 or INT4 weight, and each sequence's query attending over its
KV cache (with the padding mask of a batch); and the rotary embedding of a layer's queries and keys, one
call where torch needs a dozen small ops, each of which costs tens of microseconds right after a product
has streamed a weight through the caches.

Decoding one token reads every weight once and does two flops per weight read, so its speed is the
memory bandwidth the kernel reaches. With few threads torch's one-token products fall well short of it (its
float32 matrix-vector product runs on one core), its int4 kernel is limited by instructions, and its CPU
attention over a bfloat16 cache is slower than reading that cache. These kernels stream the weight once with
SIMD loads and float32 accumulation. A batch of tokens shares each load of the weight, where torch's small-M
products cost several times what one token costs. INT8 and INT4 weights (the original's packed bytes) are
read in row tiles: four rows interleaved 64 bytes at a time, so that a tile is one sequential stream (see
`to_row_tiles`). benchmarks/quantized_kernels.py and benchmarks/step_overhead.py measure all this.

The C source, cpu_kernels.c beside this module, is compiled once per machine with the system compiler
(`cc -O3 -march=native -fopenmp`, as the original ChatGLM-6B compiled its CPU INT4 kernels, and
-ffp-contract=off, so that a multiply and an add round twice as torch's ops do; warnings on) into a cache
folder, and called through ctypes, which releases the GIL. An exported checkpoint folder carries the C
source too: transformers copies only the Python modules of a `trust_remote_code` model into its own cache,
so the model registers its folder with `add_source_folder`. Without a compiler, or on a CPU without
AVX2/FMA/F16C (or AVX-512), every product stays with torch: same answers (INT4 within its activation
rounding), slower. CHATGLM_CPU_KERNELS=0 turns them off; CHATGLM_CPU_KERNELS_MARCH=haswell (any -march)
builds for another, older CPU than this one.
"""

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile

import torch

from .cpu_features import cpu_flags

logger = logging.getLogger(__name__)

# Below these sizes the data is cache-resident, a step's time is dispatch, and torch is as fast for one
# token and one unmasked query over a float32 cache. Batches of tokens (and masked queries) go to the
# kernels at every size: torch's small-M products grow with the tokens much faster than the kernels' do.
# So do bfloat16 and float16 caches, over which torch's one-query attention is slower than the kernel even
# when short.
MIN_WEIGHT_VALUES = 1 << 16
MIN_CACHE_VALUES = 1 << 18
# K in whole INT8 blocks, the head size in whole AVX-512 vectors.
K_MULTIPLE, HEAD_DIM_MULTIPLE, MAX_HEAD_DIM = 128, 16, 256
# The most tokens of one product the kernels take, by kind of weight: a decoding step of that many sequences
# reads each weight once for all of them. Beyond, torch's matrix products are as fast or faster
# (benchmarks/quantized_kernels.py shows where they cross).
MOST_TOKENS = {"f32": 32, "f16": 32, "i8": 16, "bf16": 8, "i4": 32}


SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16", torch.uint8: "i8"}  # uint8: row tiles
FLOAT_KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # the C side's F32, F16, BF16
WEIGHT_KIND = {"f32": 0, "f16": 1, "bf16": 2, "i8": 3, "i4": 4}  # its W_F32 ... W_I4
MARCH_VARIABLE = "CHATGLM_CPU_KERNELS_MARCH"
COMPILE_FLAGS = ("-O3", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC", "-Wall", "-Wextra")
SOURCE_NAME = "cpu_kernels.c"
# where the C source is looked for: beside this module, then in the folders of models loaded from a checkpoint
_source_folders = [os.path.dirname(os.path.abspath(__file__))]


def add_source_folder(folder):
    """Also look for cpu_kernels.c in `folder`: a checkpoint folder whose code transformers copied, without the
    C source, into its module cache."""
    if folder and os.path.isdir(folder) and folder not in _source_folders:
        _source_folders.append(folder)


def source_path():
    """The C source this process compiles, or None where it is nowhere to be found."""
    paths = (os.path.join(folder, SOURCE_NAME) for folder in _source_folders)
    return next((path for path in paths if os.path.isfile(path)), None)


def _cache_dir():
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "chatglm", "cpu_kernels")


def _cpu_id():
    """What -march=native compiles for: a cache shared between machines must not mix their builds."""
    try:
        with open("/proc/cpuinfo") as info:
            return "".join(line for line in info if line.startswith(("model name", "flags")))
    except OSError:
        return platform.processor()


def _compile(compiler, flags, source, target):
    with tempfile.TemporaryDirectory() as scratch:
        built = os.path.join(scratch, "cpu_kernels.so")
        subprocess.run([compiler, *flags, source, "-o", built, "-lm"], check=True, capture_output=True,
                       text=True)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        partial = f"{target}.{os.getpid()}.tmp"
        shutil.copyfile(built, partial)
        os.replace(partial, target)  # atomic: a concurrent loader sees no half-written library


NO_COMPILER = "no C compiler (cc, gcc or $CC) on PATH; install gcc for faster CPU decoding"


def _compiler():
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def unavailable_reason():
    """Why the kernels cannot be built here, or None where they can (a build may still fail)."""
    if os.environ.get("CHATGLM_CPU_KERNELS", "1") == "0":
        return "turned off by CHATGLM_CPU_KERNELS=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not an x86-64 CPU ({platform.machine()})"
    if _compiler() is None:
        return NO_COMPILER
    if source_path() is None:
        return f"{SOURCE_NAME} is missing beside {__file__}"
    flags = cpu_flags()
    if MARCH_VARIABLE not in os.environ and flags and not {"avx2", "fma", "f16c"} <= flags:
        return "this CPU has no AVX2/FMA/F16C"
    return None


@functools.cache
def library():
    """The compiled kernels as a ctypes library, or None where they cannot be built here."""
    reason = unavailable_reason()
    if reason is not None:
        # a missing compiler is the one reason a user can fix (install gcc)
        log = logger.warning if reason == NO_COMPILER else logger.debug
        log("CPU kernels not used, torch's kernels are (slower): %s", reason)
        return None
    compiler = _compiler()
    # CHATGLM_CPU_KERNELS_MARCH builds for another (older) CPU than this one, e.g. haswell for AVX2
    flags = (*COMPILE_FLAGS, f"-march={os.environ.get(MARCH_VARIABLE, 'native')}")
    source = source_path()
    with open(source) as f:
        text = f.read()
    key = hashlib.sha256("\0".join((text, compiler, *flags, _cpu_id())).encode()).hexdigest()[:16]
    path = os.path.join(_cache_dir(), f"cpu_kernels-{key}.so")
    try:
        if not os.path.exists(path):
            _compile(compiler, flags, source, path)
        lib = ctypes.CDLL(path)
    except (OSError, subprocess.CalledProcessError) as error:
        details = getattr(error, "stderr", "") or error
        logger.warning("CPU kernels could not be built, torch's kernels are used (slower): %s", details)
        return None
    pointer, size, integer = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.linear.argtypes = [integer, pointer, integer, pointer, pointer, integer, pointer, integer, integer, pointer,
                           size, size, size, integer]
    for suffix in ("f32", "bf16", "f16"):
        getattr(lib, f"attend_{suffix}").argtypes = ([pointer, size, size] + [pointer] * 5 + [size] * 6
                                                     + [ctypes.c_float, integer])
    lib.rotate_qk.argtypes = [pointer, pointer, pointer, integer, size, size, size, integer, integer]
    for suffix in ("bf16", "f32"):
        getattr(lib, f"expand_{suffix}_tiles").argtypes = [pointer, pointer, size, size, integer, integer]
    return lib


def _inference(*tensors):
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


@functools.cache
def _bf16_batches():
    """Whether this build has bfloat16 dot products (asked once: a ctypes call costs a few microseconds)."""
    return bool(library().bf16_batches())


def _kind(dtype, int4):
    """The kernels' name for a weight: its dtype's suffix ("i8" for INT8 row tiles), or "i4" for INT4 row
    tiles (two values a byte)."""
    return "i4" if int4 else SUFFIX.get(dtype)


def most_tokens(dtype, int4=False):
    """The most tokens of a product with a ``dtype`` weight (uint8: INT8 row tiles, or INT4 ones with
    ``int4``) that the kernels take:
    MOST_TOKENS, and one for bfloat16 on a CPU without bfloat16 dot products (torch's batches are faster
    than widening every weight)."""
    if dtype == torch.bfloat16 and not _bf16_batches():
        return 1
    return MOST_TOKENS.get(_kind(dtype, int4), 0)


def takes_matmul(x, weight, int4=False):
    """Whether x [..., K] @ weight[N, K]^T is a decoding step on CPU that the kernels compute: at most
    ``most_tokens`` tokens, with a float weight, or INT8 values [N, K] or (``int4``) packed INT4 bytes
    [N, K / 2] in row tiles (`to_row_tiles`; `matmul` applies their row scales). INT4 has no torch kernel in
    that layout, so it is taken at every size."""
    columns = weight.shape[1] * (2 if int4 else 1)
    tokens = x.numel() // columns
    return (x.device.type == "cpu" and weight.device.type == "cpu" and x.shape[-1] == columns
            and x.dtype in FLOAT_KIND and weight.dtype in SUFFIX and (not int4 or weight.dtype == torch.uint8)
            and weight.is_contiguous()
            and (weight.numel() >= MIN_WEIGHT_VALUES or tokens > 1 or int4) and columns % K_MULTIPLE == 0
            and _inference(x, weight) and library() is not None
            and 1 <= tokens <= most_tokens(weight.dtype, int4))


def matmul(x, weight, scale=None, int4=False, bias=None, round_before_bias=False):
    """x [..., K] times weight [N, K]^T, plus ``bias`` [N] if given: [..., N] in x's dtype (float32, float16
    or bfloat16), summed in float32 and rounded once, as F.linear; with ``round_before_bias``, the product is
    rounded before the bias is added (as the original's quantized layers do). INT8 values and packed INT4
    bytes [N, K / 2] (``int4``), in row tiles, come with their row scales [N]. Check `takes_matmul` first. A bfloat16
    weight may take x rounded to bfloat16 (exact in a bfloat16 model; F.linear would need x in bfloat16 too)."""
    rows, columns = weight.shape[0], weight.shape[1] * (2 if int4 else 1)
    if (weight.dtype == torch.uint8) != (scale is not None):
        raise ValueError("integer weights need their row scales, a float weight has none")
    x2 = x.reshape(-1, columns).contiguous()  # [tokens, K]
    out = torch.empty(x2.shape[0], rows, dtype=x.dtype)
    if scale is not None:
        scale = (scale if scale.dtype in FLOAT_KIND else scale.float()).contiguous()
    if bias is not None:
        bias = (bias if bias.dtype in FLOAT_KIND else bias.float()).contiguous()
    library().linear(WEIGHT_KIND[_kind(weight.dtype, int4)], x2.data_ptr(), FLOAT_KIND[x.dtype], weight.data_ptr(),
                     None if scale is None else scale.data_ptr(), 0 if scale is None else FLOAT_KIND[scale.dtype],
                     None if bias is None else bias.data_ptr(), 0 if bias is None else FLOAT_KIND[bias.dtype],
                     round_before_bias, out.data_ptr(), x2.shape[0], rows, columns, torch.get_num_threads())
    return out.view(*x.shape[:-1], rows)


def expand(tiles, out, int4=False):
    """Fill ``out`` [N, K] (float32 or bfloat16) with the signed values of an integer weight in row tiles: INT8
    values [N, K] or (``int4``) packed INT4 bytes [N, K / 2] (needs the kernels: check `library()`); returns
    ``out``."""
    if (tiles.numel() * (2 if int4 else 1) != out.numel() or out.dtype not in (torch.float32, torch.bfloat16)
            or not out.is_contiguous()):
        raise ValueError("out must be a contiguous float32 or bfloat16 tensor of the weight's values")
    tiles = tiles.contiguous()
    getattr(library(), f"expand_{SUFFIX[out.dtype]}_tiles")(tiles.data_ptr(), out.data_ptr(), *tiles.shape, int4,
                                                            torch.get_num_threads())
    return out


# --- row tiles: the layout the integer kernels read (TILED in the C source) ---

TILE_ROWS, TILE_BYTES = 4, 64
TILING_STEP_BYTES = 1 << 20


def takes_row_tiles(weight, int4=False):
    """Whether the kernels take an integer weight's bytes [N, W] (INT8 values, or packed INT4 with ``int4``)
    in row tiles: K a multiple of K_MULTIPLE, so rows of whole 64-byte pieces."""
    columns = weight.shape[-1] * (2 if int4 else 1)
    return weight.dim() == 2 and weight.element_size() == 1 and columns % K_MULTIPLE == 0


def _full_tiles(rows):
    return rows - rows % TILE_ROWS


def to_row_tiles(weight):
    """The bytes of an integer weight [N, W] (INT8 values or packed INT4, contiguous) re-arranged in place
    into row tiles, returned as a uint8 view: each four rows stored as their first 64 bytes of rows 0..3,
    then their next 64 bytes, and so on, so that the kernels read one sequential stream; the last N % 4
    rows stay as they are. In place, a few tiles at a time, so that no second copy of a large model's
    weights is ever held (nor left behind in the heap)."""
    rows, width = weight.shape
    tiles = weight.view(torch.uint8)
    per_step = max(1, TILING_STEP_BYTES // (TILE_ROWS * width))
    for first in range(0, _full_tiles(rows), per_step * TILE_ROWS):
        block = tiles[first : min(first + per_step * TILE_ROWS, _full_tiles(rows))]
        rearranged = block.view(-1, TILE_ROWS, width // TILE_BYTES, TILE_BYTES).transpose(1, 2).contiguous()
        block.view(-1).copy_(rearranged.view(-1))
    return tiles


def from_row_tiles(tiles):
    """A new int8 [N, W] holding the rows of a weight in row tiles (inverse of `to_row_tiles`)."""
    rows, width = tiles.shape
    full = _full_tiles(rows)
    signed = tiles.view(torch.int8)
    out = torch.empty(rows, width, dtype=torch.int8, device=tiles.device)
    out[:full].view(-1, TILE_ROWS, width // TILE_BYTES, TILE_BYTES).copy_(
        signed[:full].view(-1, width // TILE_BYTES, TILE_ROWS, TILE_BYTES).transpose(1, 2))
    out[full:] = signed[full:]
    return out


def row_tiles_rows(tiles, ids):
    """Rows int8 [len(ids), W] of a weight in row tiles: the lookup of quantized word embeddings, which share
    their weight with the LM head."""
    rows, width = tiles.shape
    ids = ids.flatten()
    byte = torch.arange(width, device=ids.device)
    in_tile = (ids % TILE_ROWS)[:, None]
    tiled = (ids[:, None] - in_tile) * width + (byte - byte % TILE_BYTES) * TILE_ROWS + in_tile * TILE_BYTES \
        + byte % TILE_BYTES
    index = torch.where((ids < _full_tiles(rows))[:, None], tiled, ids[:, None] * width + byte)  # [ids, W]
    # index_select: advanced indexing into a source this large costs milliseconds even for one row
    return tiles.view(torch.int8).view(-1).index_select(0, index.flatten()).view(len(ids), width)


def takes_rotary(qkv, cos, sin):
    """Whether `rotate_qk` takes this fused projection output [batch, seq, heads, 3, head_dim] and its
    tables cos, sin (of [batch, seq, head_dim] values): on CPU, contiguous, all of one float dtype."""
    batch, seq, _, _, head_dim = qkv.shape
    return (qkv.device.type == "cpu" and qkv.dtype in FLOAT_KIND and cos.dtype == sin.dtype == qkv.dtype
            and qkv.is_contiguous() and cos.is_contiguous() and sin.is_contiguous()
            and cos.numel() == sin.numel() == batch * seq * head_dim
            and _inference(qkv) and library() is not None)


def rotate_qk(qkv, cos, sin, parts):
    """Rotate the queries and keys of qkv [batch, seq, heads, 3, head_dim] in place: the same numbers as
    modeling_chatglm.apply_rotary (each product, then the sum, rounded to the dtype), in one call instead
    of a dozen torch ops per layer. Check `takes_rotary` first."""
    batch, seq, heads, _, head_dim = qkv.shape
    library().rotate_qk(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), FLOAT_KIND[qkv.dtype], batch * seq, heads,
                        head_dim, parts, torch.get_num_threads())


def takes_attention(q, k, v, attention_mask):
    """Whether the kernels compute this attention: one query per head on CPU, over keys and values
    [batch, heads, L, D] of q's dtype whose rows are contiguous (a cache buffer's view is), unmasked or
    with a boolean mask [batch, 1, 1, L] (the padding of a batch)."""
    batch, _, length, head_dim = k.shape
    return (q.device.type == "cpu" and q.shape[2] == 1 and q.dtype == k.dtype == v.dtype and q.stride(3) == 1
            and (attention_mask is None or (attention_mask.dtype == torch.bool
                                            and attention_mask.shape == (batch, 1, 1, length)))
            and k.dtype in (torch.float32, torch.bfloat16, torch.float16) and k.stride() == v.stride()
            and k.stride()[2:] == (head_dim, 1) and head_dim % HEAD_DIM_MULTIPLE == 0
            and head_dim <= MAX_HEAD_DIM
            and (k.numel() >= MIN_CACHE_VALUES or attention_mask is not None or k.dtype != torch.float32)
            and _inference(q, k, v) and library() is not None)


def attend(q, k, v, scale, attention_mask=None):
    """softmax(scale * q k^T) v for q [batch, heads, 1, D] (any strides but the last), where the mask
    allows: [batch, heads, 1, D] in q's dtype."""
    batch, heads, length, head_dim = k.shape
    out = torch.empty(batch, heads, 1, head_dim, dtype=q.dtype)
    scores = torch.empty(batch * heads * length, dtype=torch.float32)
    mask = None if attention_mask is None else attention_mask.reshape(batch, length).contiguous()
    getattr(library(), f"attend_{SUFFIX[k.dtype]}")(
        q.data_ptr(), q.stride(0), q.stride(1), k.data_ptr(), v.data_ptr(), out.data_ptr(), scores.data_ptr(),
        None if mask is None else mask.data_ptr(), batch, heads, length, head_dim, k.stride(0), k.stride(1),
        scale, torch.get_num_threads())
    return out
