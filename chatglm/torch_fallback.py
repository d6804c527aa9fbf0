"""torch's CPU weight-only kernels: what quantized layers compute with where the C kernels of cpu_kernels cannot
be built (no compiler, not x86-64, CHATGLM_CPU_KERNELS=0). INT8 weights stay in the checkpoint layout for
`torch._weight_int8pack_mm`; INT4 weights are re-packed once into the layout of torch's CPU int4 kernel
(`Int4CpuLayout`), which depends on the CPU. Both kernels take bfloat16 activations (with float32 ones they are
many times slower) and are given unit scales: they return the integer products, and the layers apply the fp16
row scales afterwards.
"""

import functools
from typing import NamedTuple

import torch

WEIGHT_ONLY_DTYPE = torch.bfloat16
KERNEL_ALIGNMENT = 64


class Int4CpuLayout(NamedTuple):
    """How `torch._convert_weight_to_int4pack_for_cpu` arranges rows: blocks of `rows` output rows; in a
    block, byte (k, j) holds row j's value in its low nibble and row j + rows/2 (or, when `paired`,
    rows 2j and 2j + 1) in its high nibble, as value + 8. Depends on the CPU (AVX512: 64, AVX2: 32)."""
    rows: int
    paired: bool


CANDIDATE_INT4_LAYOUTS = (Int4CpuLayout(64, False), Int4CpuLayout(32, False), Int4CpuLayout(32, True))


def _split_block_rows(t, layout):
    """The rows of each block of t [N, C] that go to low and to high nibbles: two [N / rows, rows / 2, C]."""
    half = layout.rows // 2
    if layout.paired:
        blocks = t.view(-1, half, 2, t.shape[-1])
        return blocks[:, :, 0], blocks[:, :, 1]
    blocks = t.view(-1, 2, half, t.shape[-1])
    return blocks[:, 0], blocks[:, 1]


def _tail_layout(rows, layout):
    """Rows past the last full block form one smaller block, which the kernel packs in pairs."""
    return Int4CpuLayout(rows % layout.rows, True)


def _blocks_to_kernel(packed, layout):
    low_rows, high_rows = _split_block_rows(packed.view(torch.uint8), layout)  # [blocks, rows / 2, K / 2]
    # Each original byte holds columns 2j (high nibble) and 2j + 1 (low nibble); ^ 0x88 adds 8 to both.
    even = ((low_rows >> 4) | (high_rows & 0xF0)) ^ 0x88
    odd = ((low_rows & 0x0F) | (high_rows << 4)) ^ 0x88
    blocks = torch.stack((even, odd), dim=-1).flatten(-2)  # [blocks, rows / 2, K]
    return blocks.transpose(1, 2).contiguous().view(packed.shape[0], -1)  # [blocks, K, rows / 2] -> [N, K / 2]


def _blocks_from_kernel(kernel_bytes, layout):
    rows, in_features = kernel_bytes.shape[0], kernel_bytes.shape[1] * 2
    blocks = kernel_bytes.view(-1, in_features, layout.rows // 2).transpose(1, 2)  # [blocks, rows / 2, K]
    columns = blocks.reshape(blocks.shape[0], blocks.shape[1], -1, 2) ^ 0x88  # [blocks, rows / 2, K / 2, 2]
    even, odd = columns[..., 0], columns[..., 1]
    packed = torch.empty(rows, in_features // 2, dtype=torch.uint8, device=kernel_bytes.device)
    low_rows, high_rows = _split_block_rows(packed, layout)
    low_rows.copy_((even << 4) | (odd & 0x0F))
    high_rows.copy_((even & 0xF0) | (odd >> 4))
    return packed.view(torch.int8)


def to_int4_cpu_layout(packed, layout):
    """Kernel bytes uint8 [N, K / 2] from the original's packed int8 [N, K / 2]."""
    full = packed.shape[0] - packed.shape[0] % layout.rows
    if full == packed.shape[0]:
        return _blocks_to_kernel(packed, layout)
    parts = (_blocks_to_kernel(packed[:full], layout),
             _blocks_to_kernel(packed[full:], _tail_layout(len(packed), layout)))
    return torch.cat([part.flatten() for part in parts]).view(packed.shape)


def from_int4_cpu_layout(kernel_bytes, layout):
    """The original's packed int8 [N, K / 2] from kernel bytes [N, K / 2] (inverse of to_int4_cpu_layout)."""
    rows, width = kernel_bytes.shape
    full = rows - rows % layout.rows
    if full == rows:
        return _blocks_from_kernel(kernel_bytes, layout)
    flat = kernel_bytes.flatten()
    return torch.cat((_blocks_from_kernel(flat[: full * width].view(full, width), layout),
                      _blocks_from_kernel(flat[full * width :].view(rows - full, width), _tail_layout(rows, layout))))


def int4_cpu_layout_rows(kernel_bytes, layout, row_ids):
    """Signed values int8 [*row_ids.shape, K] of some rows of a weight in kernel bytes [N, K / 2]: the
    lookup of quantized word embeddings that share their weight with the LM head."""
    rows, in_features = kernel_bytes.shape[0], kernel_bytes.shape[1] * 2
    full = rows - rows % layout.rows
    ids = row_ids.flatten()
    in_tail = ids >= full
    block_rows = torch.where(in_tail, rows - full, layout.rows)
    paired = in_tail | layout.paired
    position = torch.where(in_tail, ids - full, ids % layout.rows)  # row within its block
    half = block_rows // 2
    column = torch.where(paired, position // 2, position % half)  # byte within the block's k-th run
    high = torch.where(paired, position % 2 == 1, position >= half)
    block_start = (ids - position) * (in_features // 2)
    k = torch.arange(in_features, device=ids.device)
    index = block_start[:, None] + k * half[:, None] + column[:, None]  # [ids, K]
    # index_select: advanced indexing into a source this large costs milliseconds even for one row
    values = kernel_bytes.view(-1).index_select(0, index.flatten()).view(index.shape)
    values = torch.where(high[:, None], values >> 4, values & 0x0F).to(torch.int8) - 8
    return values.view(*row_ids.shape, in_features)


@functools.cache
def int4_cpu_layout():
    """The layout this torch build and CPU use, found by packing a probe with torch's own converter;
    None where the int4 CPU kernel is missing or packs some other way."""
    from .quantization import pack_int4  # the checkpoint format (quantization imports this module)

    if not hasattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu"):
        return None
    values = torch.randint(-8, 8, (144, 64), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    try:
        expected = torch.ops.aten._convert_weight_to_int4pack_for_cpu((values + 8).to(torch.int32), 1)
    except RuntimeError:
        return None
    for layout in CANDIDATE_INT4_LAYOUTS:
        if torch.equal(to_int4_cpu_layout(pack_int4(values), layout), expected):
            return layout
    return None


def int4_kernel_group_size(in_features):
    """The largest group size the int4 kernel takes that divides in_features, or None."""
    return next((size for size in (256, 128, 64, 32) if in_features % size == 0), None)


@functools.cache
def _unit_group_scales(in_features, out_features, group_size):
    """Scales 1 and zeros 0 [in / group, out, 2] for the int4 kernel: it then returns exact integer dot
    products (up to bfloat16 output rounding) and the fp16 row scales are applied afterwards."""
    unit = torch.zeros(in_features // group_size, out_features, 2, dtype=WEIGHT_ONLY_DTYPE)
    unit[..., 0] = 1
    return unit


@functools.cache
def unit_row_scales(out_features, dtype=WEIGHT_ONLY_DTYPE):
    return torch.ones(out_features, dtype=dtype)


def is_aligned(t):
    return t.is_contiguous() and t.data_ptr() % KERNEL_ALIGNMENT == 0


def aligned(t):
    """t itself, or a contiguous copy in fresh (aligned) memory: torch's weight-only kernels crash on
    operands that do not start on a 64-byte boundary, as tensors memory-mapped from safetensors may not."""
    return t if is_aligned(t) else t.clone(memory_format=torch.contiguous_format)


def int4_cpu_layout_values(kernel_bytes, layout, out):
    """Fill `out` [N, K] (any float dtype) with the signed values of a weight in kernel bytes [N, K / 2], N a
    whole number of blocks; returns `out`."""
    # Kernel bytes [blocks, K, rows / 2]: low nibbles are the block's first half of rows (or even rows), high
    # nibbles the second half (odd rows); values are stored + 8.
    blocks = kernel_bytes.view(-1, out.shape[1], layout.rows // 2)
    low_rows, high_rows = _split_block_rows(out, layout)  # [blocks, rows / 2, K]
    low_rows.copy_((blocks & 0x0F).transpose(1, 2))
    high_rows.copy_((blocks >> 4).transpose(1, 2))
    return out.sub_(8)


def int8_matmul(tokens, weight):
    """tokens [n, K] times INT8 values [N, K] (aligned), unscaled: [n, N] bfloat16."""
    return torch._weight_int8pack_mm(aligned(tokens.to(WEIGHT_ONLY_DTYPE)), weight, unit_row_scales(weight.shape[0]))


def int4_matmul(tokens, kernel_bytes):
    """tokens [n, K] times an INT4 weight in kernel bytes [N, K / 2], unscaled: [n, N] bfloat16."""
    out_features, in_features = kernel_bytes.shape[0], kernel_bytes.shape[1] * 2
    group_size = int4_kernel_group_size(in_features)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(aligned(tokens.to(WEIGHT_ONLY_DTYPE)), kernel_bytes, group_size,
                                                      _unit_group_scales(in_features, out_features, group_size))
