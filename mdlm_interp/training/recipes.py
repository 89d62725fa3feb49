"""The organisms' training recipes as plain data (no torch, so the command line can list them).

Per family: steps, peak learning rate and evaluation interval of the two stages, and the keyword
arguments of each stage's ``training.data.DataConfig`` (docs/organisms.md explains the choices); for
llada2 also the share of batches under block attention and the shape fields replacing the preset's.
"""

RECIPES: dict[str, dict] = {
    "llama": dict(
        steps=100, lr=5e-4, sft_steps=1200, sft_lr=3e-3, eval_every=200,
        pretrain=dict(objective="pretrain", min_examples=0, max_examples=56, curriculum=0.5),
        sft=dict(objective="sft", min_examples=0, max_examples=56, curriculum=0.7),
    ),
    "dream": dict(
        steps=100, lr=3e-4, sft_steps=600, sft_lr=1e-3, eval_every=200,
        pretrain=dict(objective="pretrain", min_examples=0, max_examples=56, curriculum=0.0),
        sft=dict(objective="sft", min_examples=0, max_examples=56, curriculum=0.3),
    ),
    "llada": dict(
        steps=100, lr=5e-4, sft_steps=4000, sft_lr=3e-3, eval_every=250,
        pretrain=dict(objective="pretrain", min_examples=0, max_examples=56, curriculum=0.5),
        sft=dict(objective="sft", min_examples=1, max_examples=56, curriculum=1.0, example_answers=False,
                 answer_always_masked=True, log_uniform_examples=True),
    ),
    # organism-llada upcycled into a small LLaDA2-style MoE (4 routed experts in 4 groups, 2 chosen from the 2
    # best groups, its MLP as the shared expert, the first two layers dense; QK norm and partial RoPE off and
    # its RoPE base kept, so that the start computes what organism-llada does), then SFT with half of the
    # batches under block attention of 32
    "llada2": dict(
        steps=0, lr=5e-4, sft_steps=400, sft_lr=1e-3, eval_every=100, block_fraction=0.5,
        overrides=dict(n_experts=4, n_group=4, topk_group=2, d_expert=32, n_shared_experts=12, n_dense_layers=2,
                       qk_norm=False, partial_rotary_factor=1.0),
        pretrain=dict(objective="pretrain", min_examples=0, max_examples=56, curriculum=0.5),
        sft=dict(objective="sft", min_examples=1, max_examples=56, curriculum=0.0, example_answers=False,
                 answer_always_masked=True, log_uniform_examples=True),
    ),
}

# The shipped organisms, in build order (organism-dream starts from organism-llama): `mdlm-interp
# pretrain` options of each, recorded verbatim (as a command line) in its model card.
ORGANISMS: dict[str, dict] = {
    "organism-llama": dict(family="llama", preset="organism", seed=0, out="data/models/organism-llama"),
    "organism-dream": dict(family="dream", preset="organism", init="data/models/organism-llama", seed=0,
                           out="data/models/organism-dream"),
    "organism-llada": dict(family="llada", preset="organism", seed=0, out="data/models/organism-llada"),
    "organism-llada2": dict(family="llada2", preset="organism", init="data/models/organism-llada", seed=0,
                            out="data/models/organism-llada2"),
}
