"""Cost of the mixture-of-experts routing hooks: a forward pass caching every routing hook against a
plain forward pass of the same model (target <= 1.1x).

    python benchmarks/bench_moe.py [--quick] [--family llada2|lladamoe] [--batch B] [--length N]

The model is a random checkpoint of the family at the medium preset (8 layers, d_model 512; LLaDA2:
8 experts, top 2 of 4 groups' best 2, one shared expert, the first layer dense; LLaDA-MoE: 4
experts, top 2, every layer MoE). "hooks" runs ``run_with_cache`` keeping
``blocks.{l}.mlp.hook_router_logits``, ``hook_topk_indices``, ``hook_topk_weights``,
``hook_expert_out`` and ``hook_shared_out`` of every MoE layer, as a routing recorder does; "plain" is
``model(ids)``. Both run alternately in one process; medians are compared.
"""

import argparse
import tempfile
from pathlib import Path

import torch

from timing import median_times

MOE_KINDS = ("router_logits", "topk_indices", "topk_weights", "expert_out", "shared_out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--family", default="llada2", choices=["llada2", "lladamoe"], help="MoE family (default llada2)")
    parser.add_argument("--batch", type=int, default=4, help="sequences per forward pass (default 4)")
    parser.add_argument("--length", type=int, default=128, help="tokens per sequence (default 128)")
    args = parser.parse_args()

    from mdlm_interp import load_model
    from mdlm_interp.models.hook_names import hook_name
    from mdlm_interp.models.random_checkpoint import write_random_checkpoint
    from mdlm_interp.tasks import tokenizer_corpus

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_random_checkpoint(args.family, Path(tmp) / "medium", tokenizer_corpus(), preset="medium")
        lm = load_model(path)
    cfg, model = lm.config, lm.model
    names = {hook_name(kind, layer) for layer in cfg.moe_layers for kind in MOE_KINDS} & set(model.hook_dict)
    ids = torch.randint(0, cfg.d_vocab, (args.batch, args.length), generator=torch.Generator().manual_seed(0))
    runs = {"plain": lambda: model(ids),
            "hooks": lambda: model.run_with_cache(ids, names_filter=lambda name: name in names)}
    with torch.no_grad():
        times = median_times(runs, repeats=3 if args.quick else 10)
    print(f"{args.family} medium: {cfg.n_layers} layers ({len(cfg.moe_layers)} MoE), d_model {cfg.d_model}, "
          f"{cfg.n_experts} experts (top {cfg.n_experts_per_tok}, width {cfg.d_expert}, shared {cfg.d_shared}), "
          f"batch {args.batch} x {args.length} tokens, float32, 1 thread; {len(names)} routing hooks cached")
    print("| forward | median s | ratio to plain |")
    print("|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.4f} | {seconds / times['plain']:.3f}x |")


if __name__ == "__main__":
    main()
