"""Recording cost relative to a plain forward pass, against the TransformerLens route, and HDF5 share.

    python benchmarks/bench_record.py [--quick] [--model PATH]

All timings of one table are taken in one process, alternating between the variants, and
compared by their medians (the machine is shared and noisy). Variants, on the same batch of
task prompts (10 relevant + 40 distractor examples, 50 appended masks):

- plain: ``model(ids, attention_mask)`` under no_grad, SDPA attention;
- attention+lens and attention+lens+gradients: ``record_batch`` (everything the store gets);
- pattern route: the same attention quantities from ``run_with_cache`` of every layer's pattern;
- TransformerLens: a TransformerBridge (``boot_native``, bidirectional) of the same shape, plain
  forward and ``run_with_cache`` of all attention patterns.

Then a full ``record`` run, timing the writer's calls, gives the share of time spent writing HDF5.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def median_times(runs: dict, repeats: int) -> dict:
    """Return name -> median seconds, running the callables in turns after one warm-up each."""
    times = {name: [] for name in runs}
    for run in runs.values():
        run()
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and rows")
    parser.add_argument("--model", default=None,
                        help="checkpoint to measure (default: a random llada checkpoint of the medium preset)")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    from transformer_lens.model_bridge import TransformerBridge

    from mdlm_interp import load_model
    from mdlm_interp.batching import collate
    from mdlm_interp.models.random_checkpoint import write_random_checkpoint
    from mdlm_interp.record import RecordConfig, record, record_batch, subject_from
    from mdlm_interp.store import writer as store_writer
    from mdlm_interp.tasks import PromptConfig, sample_prompt, single_token_words, tokenize_prompt, tokenizer_corpus

    tmp = Path(tempfile.mkdtemp())
    lm = load_model(args.model or write_random_checkpoint("llada", tmp / "medium", tokenizer_corpus(), preset="medium"))
    subject = subject_from(lm, None, None, None, False, False)
    words = single_token_words(lm.tokenizer)
    batch = [tokenize_prompt(sample_prompt(PromptConfig("adjective+largest"), seed=i, words=words), lm.tokenizer,
                             mask_token_id=lm.mask_token_id, masks=50) for i in range(args.batch_size)]
    padded = collate(batch, lm.spec.prediction_offset)
    ids, attention_mask, layout = padded.input_ids, padded.attention_mask, padded.layout
    cfg = lm.config
    bridge = TransformerBridge.boot_native({
        "d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_head": cfg.d_head,
        "d_mlp": cfg.d_mlp, "d_vocab": cfg.d_vocab, "n_ctx": 2048, "attention_dir": "bidirectional", "seed": 0,
        "act_fn": "silu", "normalization_type": "RMS", "positional_embedding_type": "rotary",
        "rotary_dim": cfg.d_head, "gated_mlp": True})
    patterns = lambda name: name.endswith("hook_pattern")  # noqa: E731

    def pattern_route():
        with torch.no_grad():
            _, cache = lm.model.run_with_cache(ids, attention_mask=attention_mask, names_filter=patterns)
            for layer in range(cfg.n_layers):
                pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
                (pattern * layout.masks[:, None, None, :]).sum(-1)

    def bridge_cache():
        with torch.no_grad():
            bridge.run_with_cache(ids, names_filter=patterns)

    runs = {
        "plain": lambda: torch.no_grad()(lm.model)(ids, attention_mask),
        "attention+lens": lambda: record_batch(subject, batch, RecordConfig(record=("attention", "lens"))),
        "attention+lens+gradients": lambda: record_batch(subject, batch, RecordConfig()),
        "pattern route (run_with_cache)": pattern_route,
        "TL bridge plain": lambda: torch.no_grad()(bridge)(ids),
        "TL bridge run_with_cache(patterns)": bridge_cache,
    }
    medians = median_times(runs, repeats=3 if args.quick else 8)
    print(f"model {args.model or 'random llada (medium preset)'}: {cfg.n_layers} layers, d_model {cfg.d_model}, "
          f"{sum(p.numel() for p in lm.model.parameters()) / 1e6:.1f}M parameters; batch {ids.shape[0]} x "
          f"{ids.shape[1]} tokens (50 masks), {torch.get_num_threads()} threads")
    for name, seconds in medians.items():
        print(f"  {name:<36} {seconds * 1e3:8.1f} ms   {seconds / medians['plain']:.2f}x plain")
    print(f"  TL route / ours (attention+lens): "
          f"{medians['TL bridge run_with_cache(patterns)'] / medians['attention+lens']:.2f}x")

    spent = {"write": 0.0}
    for method in ("append", "finish"):
        original = getattr(store_writer.StoreWriter, method)

        def timed(self, *a, _original=original, **k):
            start = time.perf_counter()
            try:
                return _original(self, *a, **k)
            finally:
                spent["write"] += time.perf_counter() - start

        setattr(store_writer.StoreWriter, method, timed)
    start = time.perf_counter()
    record(lm, out=tmp / "bench.h5", tasks=["adjective+largest", "verb+smallest"], masks=[50], n=8 if args.quick else 32,
           batch_size=args.batch_size, progress=False)
    total = time.perf_counter() - start
    print(f"full record run: {total:.1f} s, HDF5 writing {spent['write']:.2f} s = {100 * spent['write'] / total:.1f}%")


if __name__ == "__main__":
    sys.exit(main())
