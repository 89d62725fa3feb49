"""Recording against TransformerLens and nnsight: one markdown table, measured side by side in one run.

    python benchmarks/bench_interp.py [--quick] [--device cpu|cuda] [--repeats N] [--threads N]

Models: a random LLaDA-shaped checkpoint of the ``medium`` preset (~30M parameters) and one of ~100M
parameters (d_model 768, 12 layers, d_mlp 2560: GPT-2 small's size). Inputs: task prompts of 10
relevant + D distractor examples followed by n masks (the answer slot and n - 1 masks after it).
Variants, on the same batch, timed in turns and compared by their medians (the machine may be shared):

- plain: ``model(ids, attention_mask)`` under no_grad (SDPA attention);
- record attention+lens / record +gradients: ``record_batch``, everything a store row gets
  (attention mass to masks and relevant examples from the answer and context, the logit lens at
  every layer, the prediction; then also per-token gradient norms of the answer logit);
- TransformerLens: a ``TransformerBridge`` of the same shape (``boot_native``: RMSNorm, rotary,
  gated SiLU MLP, bidirectional) whose ``run_with_cache`` caches every layer's attention pattern
  and residual stream, reduced to the same quantities; +gradients adds a backward pass from the
  answer logit to the embeddings;
- nnsight: ``NNsight(lm.model)`` saving the same activations (every pattern and residual stream)
  inside a trace, reduced to the same quantities.

Peak memory is the process's resident memory above its level before the call (sampled every
millisecond; run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors go back to the system,
as ``make bench`` does), or ``torch.cuda.max_memory_allocated`` on a GPU. The last rows time a
full ``record`` run into HDF5 and give the share of its time spent writing the store.
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

HUNDRED_M = dict(d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, d_mlp=2560, max_seq_len=2048)


class PeakMemory:
    """Context manager measuring the peak memory (MB) used above the level at entry: RSS on CPU
    (sampled every millisecond), allocated memory on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = 0.0

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base = self.highest = self.rss()
        self.running = True

        def sample():
            while self.running:
                self.highest = max(self.highest, self.rss())
                time.sleep(0.001)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
            return
        self.running = False
        self.thread.join()
        self.peak_mb = (max(self.highest, self.rss()) - self.base) / 2**20


def measure(runs: dict, repeats: int, device: torch.device) -> dict:
    """Return name -> (median seconds, peak MB) of each callable, run in turns after one warm-up each."""
    times = {name: [] for name in runs}
    peaks = {}
    for name, run in runs.items():
        with PeakMemory(device) as peak:
            run()
        peaks[name] = peak.peak_mb
    for _ in range(repeats):
        for name, run in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), peaks[name]) for name in runs}


def explicit_patterns(model):
    """Context in which the hooked decoder computes attention patterns (tools without TransformerLens
    hooks, such as nnsight, see them only then)."""
    if hasattr(model, "explicit_attention"):
        return model.explicit_attention()
    return model.hooks(fwd_hooks=[(lambda name: name.endswith("hook_pattern"), lambda x, hook: x)])


def reduce_like_the_store(patterns: list, resids: list, layout, unembed) -> list:
    """Reduce cached activations to what a store row holds: per layer and head the attention mass
    from the readout to the masks and to the relevant examples and from context positions to the
    masks (mean), and per residual stream the lens p(answer), rank and entropy. Returns the tensors."""
    rows = layout.rows
    out = []
    for pattern in patterns:  # [batch, head, query, key]
        from_readout = pattern[rows, :, layout.readout]  # [batch, head, key]
        out.append((from_readout * layout.masks[:, None]).sum(-1))
        out.append((from_readout * layout.relevant[:, None]).sum(-1))
        to_masks = (pattern * layout.masks[:, None, None]).sum(-1)  # [batch, head, query]
        context = layout.context[:, None].float()
        out.append((to_masks * context).sum(-1) / context.sum(-1).clamp(min=1))
    for resid in resids:  # [batch, pos, d_model]
        logp = unembed(resid[rows, layout.readout]).log_softmax(-1)
        answer = logp[rows, layout.answer_ids]
        out += [answer.exp(), (logp > answer[:, None]).sum(-1), -(logp.exp() * logp).sum(-1)]
    return out


def variants(lm, batch, device, with_bridge: bool) -> dict:
    """Return name -> zero-argument callable for every variant on this model and batch."""
    from mdlm_interp.batching import collate
    from mdlm_interp.record import RecordConfig, record_batch, subject_from

    subject = subject_from(lm, None, None, None, False, False)
    padded = collate(batch, lm.spec.prediction_offset, device=device)
    ids, mask, layout = padded.input_ids, padded.attention_mask_if_padded, padded.layout
    model = lm.model
    n_layers = lm.config.n_layers
    lens_config = RecordConfig(record=("attention", "lens"), n_relevant=10)
    full_config = RecordConfig(n_relevant=10)

    def ours_unembed(x):
        return model.unembed(model.ln_final(x))

    runs = {
        "plain forward": lambda: torch.no_grad()(model)(ids, attention_mask=mask),
        "record attention+lens": lambda: record_batch(subject, batch, lens_config),
        "record +gradients": lambda: record_batch(subject, batch, full_config),
    }
    if with_bridge:
        from transformer_lens.model_bridge import TransformerBridge

        cfg = lm.config
        bridge = TransformerBridge.boot_native({
            "d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_head": cfg.d_head,
            "d_mlp": cfg.d_mlp, "d_vocab": cfg.d_vocab, "n_ctx": cfg.max_seq_len, "attention_dir": "bidirectional",
            "seed": 0, "act_fn": "silu", "normalization_type": "RMS", "positional_embedding_type": "rotary",
            "rotary_dim": cfg.d_head, "gated_mlp": True}, device=str(device))
        names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
        resid_names = ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]

        def bridge_unembed(x):
            return bridge.unembed(bridge.ln_final(x))

        def bridge_cached(gradients: bool):
            with torch.set_grad_enabled(gradients):
                embedded = {}

                def leaf(x, hook):
                    embedded["x"] = x.detach().requires_grad_(True)
                    return embedded["x"]

                hooks = [("hook_embed", leaf)] if gradients else []
                with bridge.hooks(fwd_hooks=hooks):
                    logits, cache = bridge.run_with_cache(ids, names_filter=lambda n: n in names or n in resid_names)
                reduce_like_the_store([cache[n] for n in names], [cache[n] for n in resid_names], layout,
                                      bridge_unembed)
                if gradients:
                    logits[layout.rows, layout.readout, layout.answer_ids].sum().backward()
                    embedded["x"].grad.norm(dim=-1)

        runs["TransformerLens bridge run_with_cache, attention+lens"] = lambda: bridge_cached(False)
        runs["TransformerLens bridge run_with_cache, +gradients"] = lambda: bridge_cached(True)

        from nnsight import NNsight

        traced = NNsight(model)

        def nnsight_saved():
            patterns, resids = [], []
            with torch.no_grad(), explicit_patterns(model):
                with traced.trace(ids, attention_mask=mask):
                    resids.append(traced.blocks[0].hook_resid_pre.output.save())
                    for layer in range(n_layers):
                        patterns.append(traced.blocks[layer].attn.hook_pattern.output.save())
                        resids.append(traced.blocks[layer].hook_resid_post.output.save())
                reduce_like_the_store(patterns, resids, layout, ours_unembed)

        runs["nnsight NNsight(lm.model) .save(), attention+lens"] = nnsight_saved
    return runs


def prompts(lm, n: int, masks: int, n_distractor: int) -> list:
    from mdlm_interp.tasks import PromptConfig, sample_prompt, single_token_words, tokenize_prompt

    words = single_token_words(lm.tokenizer)
    return [tokenize_prompt(sample_prompt(PromptConfig("adjective+largest", 10, n_distractor), seed=i, words=words),
                            lm.tokenizer, mask_token_id=lm.mask_token_id, masks=masks) for i in range(n)]


def hdf5_share(lm, out: Path, rows_per_task: int, batch_size: int) -> tuple[float, float]:
    """Return (seconds of a full ``record`` run, share of them spent in the store writer)."""
    from mdlm_interp.record import record
    from mdlm_interp.store import writer as store_writer

    spent = [0.0]
    originals = {}
    for method in ("append", "finish"):
        originals[method] = original = getattr(store_writer.StoreWriter, method)

        def timed(self, *args, _original=original, **kwargs):
            start = time.perf_counter()
            try:
                return _original(self, *args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start

        setattr(store_writer.StoreWriter, method, timed)
    try:
        start = time.perf_counter()
        record(lm, out=out, tasks=["adjective+largest", "verb+smallest"], masks=[50], n=rows_per_task,
               batch_size=batch_size, progress=False, overwrite=out.exists())
        total = time.perf_counter() - start
    finally:
        for method, original in originals.items():
            setattr(store_writer.StoreWriter, method, original)
    return total, spent[0] / total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one repeat, fewer settings (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per variant (default 3, quick 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--sweep-only", action="store_true",
                        help="only the cost against mask count and sequence length (and the HDF5 share)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: a shared machine disturbs one thread least)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from mdlm_interp import load_model
    from mdlm_interp.models.random_checkpoint import write_random_checkpoint
    from mdlm_interp.tasks import tokenizer_corpus

    device = torch.device(args.device)
    repeats = args.repeats or (1 if args.quick else 5)
    tmp = Path(tempfile.mkdtemp())
    corpus = tokenizer_corpus()
    models = {
        "medium (LLaDA-shaped)": write_random_checkpoint("llada", tmp / "medium", corpus, preset="medium"),
        "~100M (LLaDA-shaped)": write_random_checkpoint("llada", tmp / "100m", corpus, preset="medium",
                                                        overrides=HUNDRED_M),
    }
    # (model, batch, masks, distractors, compare with TransformerLens and nnsight)
    settings = [] if args.sweep_only else [("medium (LLaDA-shaped)", 2, 50, 40, True),
                                           ("~100M (LLaDA-shaped)", 1, 50, 40, True)]
    if args.sweep_only or not args.quick:
        settings += [("medium (LLaDA-shaped)", 2, masks, distractors, False)
                     for masks, distractors in ((1, 40), (200, 40), (50, 10), (50, 100))]
    cpu = platform.processor() or platform.machine()
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
    print(f"Measured on {where}; torch {torch.__version__}; medians of {repeats} runs after a warm-up.\n")
    header = ("model", "batch x tokens", "masks", "variant", "ms", "vs plain", "peak MB")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|", flush=True)

    def row(*cells):  # rows are printed as they are measured: a long run shows its table so far
        print("| " + " | ".join(str(cell) for cell in cells) + " |", flush=True)

    for name, batch_size, masks, distractors, compare in settings:
        lm = load_model(models[name], device=device)
        params = sum(p.numel() for p in lm.model.parameters()) / 1e6
        batch = prompts(lm, batch_size, masks, distractors)
        tokens = max(len(tp.input_ids) for tp in batch)
        results = measure(variants(lm, batch, device, compare), repeats, device)
        plain = results["plain forward"][0]
        for variant, (seconds, peak) in results.items():
            row(f"{name}, {params:.0f}M", f"{batch_size} x {tokens}", masks, variant, f"{seconds * 1e3:.0f}",
                f"{seconds / plain:.2f}x", f"{peak:.0f}")
    lm = load_model(models["medium (LLaDA-shaped)"], device=device)
    per_task = 4 if args.quick else 32
    total, share = hdf5_share(lm, tmp / "bench.h5", per_task, 4)
    row(f"medium (LLaDA-shaped), {sum(p.numel() for p in lm.model.parameters()) / 1e6:.0f}M", "4 x prompts", 50,
        f"full `record` run of {2 * per_task} rows into HDF5", f"{total * 1e3:.0f}",
        f"HDF5 writing {100 * share:.2f}% of it", "-")
    return 0


if __name__ == "__main__":
    sys.exit(main())
