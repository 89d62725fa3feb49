"""The machine's memory, refusing work that cannot fit in it before allocating anything, and the
largest batch that fits (``--batch-size auto``)."""

import os

from mdlm_interp.errors import UsageError


def machine_memory_bytes() -> int:
    """Return the machine's physical memory in bytes (``os.sysconf``; 2**63 where it cannot be read)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**63


def check_fits(what: str, nbytes: float) -> None:
    """Raise a one-line ``UsageError`` when ``nbytes`` (the memory ``what`` would take) exceeds the machine's
    physical memory; return None otherwise."""
    total = machine_memory_bytes()
    if nbytes > total:
        raise UsageError(f"{what} would take about {nbytes / 2**30:,.1f} GiB, more than this machine's "
                         f"{total / 2**30:,.1f} GiB of memory")


# --batch-size auto takes at most this share of the free memory: the rest is head room for what the
# estimate leaves out (allocator fragmentation and caching, the CUDA context, tokenizer and store buffers,
# another process starting on the machine).
SAFETY_MARGIN = 0.25
MAX_AUTO_BATCH = 64  # beyond this the batch no longer speeds anything up and a killed run loses more


def free_memory_bytes(device: str = "cpu") -> int:
    """Return the memory free for new tensors on ``device`` in bytes: the GPU's free memory
    (``torch.cuda.mem_get_info``) for a CUDA device, else the machine's available memory (MemAvailable of
    /proc/meminfo, or the physical memory where that cannot be read)."""
    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return machine_memory_bytes()


def activation_bytes_per_prompt(*, tokens: int, d_model: int, d_mlp: int, n_heads: int, n_kv_heads: int,
                                d_head: int, n_layers: int, d_vocab: int, dtype_bytes: int, needs_grad: bool,
                                logit_rows: int | None = None) -> int:
    """Return an upper estimate of the activation memory of one prompt of ``tokens`` tokens in bytes.

    Without a graph, only one block's tensors live at a time: the residual stream and its norms, the
    queries, keys and values, one attention pattern in float32 (as a kernel without a fused path holds
    it), the MLP's three hidden tensors; plus the logits (``logit_rows`` rows read in float32, or
    None: every token's, in the model's dtype). With ``needs_grad`` (embedding gradients, attribution
    patching) every block keeps about that much for the backward pass, so the estimate grows with
    ``n_layers``. benchmarks/bench_real_width.py compares it with measured peaks (1.2-2.9x above them
    at LLaDA-8B's and Dream-7B's widths).
    """
    kv = n_kv_heads * d_head
    block = tokens * dtype_bytes * (6 * d_model + 2 * kv + n_heads * d_head + 3 * d_mlp)
    block += n_heads * tokens * tokens * 4
    logits = tokens * d_vocab * dtype_bytes if logit_rows is None else logit_rows * d_vocab * 4
    return int(block * (n_layers if needs_grad else 0) + block + logits)


def auto_batch_size(free_bytes: int, bytes_per_prompt: int, *, margin: float = SAFETY_MARGIN,
                    most: int = MAX_AUTO_BATCH) -> int:
    """Return the largest batch (at least 1, at most ``most``) whose estimated activations,
    ``bytes_per_prompt`` each, fit in ``(1 - margin)`` of ``free_bytes`` (measured with the model loaded).
    Raises ``UsageError`` when not even one prompt fits."""
    usable = free_bytes * (1 - margin)
    if bytes_per_prompt > usable:
        raise UsageError(f"one prompt needs about {bytes_per_prompt / 2**30:,.2f} GiB but only "
                         f"{usable / 2**30:,.2f} GiB of the free {free_bytes / 2**30:,.2f} GiB may be used "
                         f"({margin:.0%} kept free); use a smaller model dtype or fewer masks")
    return int(max(1, min(most, usable // max(bytes_per_prompt, 1))))
