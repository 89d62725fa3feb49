"""What reading attention patterns costs through each route: our hooks, nnsight, the explicit path.

    python benchmarks/bench_interop.py [--quick]

All timings in one process, alternating between the variants, compared by their medians, on a random
llada checkpoint of the medium preset (batch 2 x 256 tokens, float32, no_grad):

- plain: ``model(ids)``, the fused attention kernel (the default; ``record`` runs this path);
- explicit path: ``model(ids)`` inside ``model.explicit_attention()``, every pattern computed;
- run_with_cache(patterns): TransformerLens' route, every layer's ``hook_pattern`` cached;
- nnsight, nothing saved: ``NNsight(model).trace(ids)``, the wrapper's own cost;
- nnsight(patterns): every layer's ``hook_pattern`` saved, inside ``explicit_attention()``.
"""

import argparse
import tempfile
from pathlib import Path

import torch
from timing import median_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()

    from nnsight import NNsight

    from mdlm_interp import load_model
    from mdlm_interp.models.random_checkpoint import write_random_checkpoint
    from mdlm_interp.tasks import tokenizer_corpus

    with tempfile.TemporaryDirectory() as tmp:
        lm = load_model(write_random_checkpoint("llada", Path(tmp) / "medium", tokenizer_corpus(), preset="medium"))
    model, cfg = lm.model, lm.config
    ids = torch.randint(0, cfg.d_vocab, (2, 256), generator=torch.Generator().manual_seed(0))
    traced = NNsight(model)
    patterns = [f"blocks.{layer}.attn.hook_pattern" for layer in range(cfg.n_layers)]

    def explicit():
        with model.explicit_attention():
            model(ids)

    def nnsight_plain():
        with traced.trace(ids):
            traced.output.save()

    def nnsight_patterns():
        saved = []
        with model.explicit_attention(), traced.trace(ids):
            for block in traced.blocks:
                saved.append(block.attn.hook_pattern.output.save())
        assert len(saved) == cfg.n_layers

    runs = {
        "plain": lambda: model(ids),
        "explicit path": explicit,
        "run_with_cache(patterns)": lambda: model.run_with_cache(ids, names_filter=patterns),
        "nnsight, nothing saved": nnsight_plain,
        "nnsight(patterns)": nnsight_patterns,
    }
    with torch.no_grad():
        medians = median_times(runs, repeats=3 if args.quick else 15)
    print(f"{cfg.n_layers} layers, d_model {cfg.d_model}, batch 2 x 256 tokens, float32, "
          f"{torch.get_num_threads()} threads; median ms and ratio to the plain forward pass")
    for name, seconds in medians.items():
        print(f"  {name:26s} {seconds * 1e3:8.1f} ms  {seconds / medians['plain']:5.2f}x")


if __name__ == "__main__":
    main()
