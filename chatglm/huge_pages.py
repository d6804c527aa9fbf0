"""Back a CPU model's weights with 2 MB pages (Linux transparent huge pages).

A decoding step streams every weight once. In the default 4 KB pages that is a TLB miss every 4 KB, and a
page walk each time (two nested ones in a virtual machine); in 2 MB pages, one per 2 MB, so a step that is
bound by memory bandwidth gets faster.

`collapse` asks the kernel to move each large tensor's pages into huge pages in place (MADV_COLLAPSE,
Linux 6.1 or later, with transparent huge pages set to "madvise" or "always"), so no second copy of a
weight is ever held. It costs time once, at loading: several seconds per GB on a virtual machine whose host
backs each fresh 2 MB region 4 KB at a time; where memory is not handed out lazily, about a copy of the
weights. Elsewhere, and with CHATGLM_HUGE_PAGES=0, it does nothing.
"""

import ctypes
import errno
import functools
import logging
import os
import sys

logger = logging.getLogger(__name__)

HUGE_PAGE = 2 << 20
MADV_COLLAPSE = 25


@functools.cache
def _madvise():
    """libc's madvise, or None where this is not Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise


def collapse_weights(module):
    """`collapse` the CPU parameters and buffers of `module`."""
    return collapse([*module.parameters(), *module.buffers()])


def collapse(tensors):
    """Move the pages of the CPU `tensors` of at least 2 MB into huge pages, in place (the whole 2 MB pages
    inside each tensor). Returns the bytes moved; 0 where the system cannot."""
    madvise = _madvise()
    if madvise is None or os.environ.get("CHATGLM_HUGE_PAGES", "1") == "0":
        return 0
    seen, moved = set(), 0
    for tensor in tensors:
        if tensor.device.type != "cpu" or tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        start = -(-tensor.data_ptr() // HUGE_PAGE) * HUGE_PAGE
        end = (tensor.data_ptr() + tensor.numel() * tensor.element_size()) // HUGE_PAGE * HUGE_PAGE
        if end <= start:
            continue
        if madvise(start, end - start, MADV_COLLAPSE) == 0:
            moved += end - start
            continue
        error = ctypes.get_errno()
        if error in (errno.EINVAL, errno.EPERM):  # no MADV_COLLAPSE here (older kernel, huge pages off)
            logger.debug("huge pages unavailable (%s): weights stay in 4 KB pages", os.strerror(error))
            return moved
        # EAGAIN, ENOMEM: no free 2 MB page just now; this tensor stays in 4 KB pages
    return moved
