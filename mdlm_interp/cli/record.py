"""``mdlm-interp record``: run the task suite through a model with recorder hooks into an HDF5 store."""

from mdlm_interp.cli.common import sharded


def add_parser(subparsers) -> None:
    """Register the ``record`` subcommand."""
    from mdlm_interp.cli.common import (add_condition_flags, add_intervention_flags, add_model_flags, add_plan_flags,
                                        batch_size_type, name_list)
    from mdlm_interp.resources import SAFETY_MARGIN

    parser = subparsers.add_parser(
        "record",
        help="record predictions, attention to masks, embedding gradients, the logit lens and iterative decoding "
        "into HDF5",
        description="Build task-suite prompts, run them through the model with recorder hooks, and write one "
        "row per (example, condition) to an HDF5 store, batch by batch (resumable). A condition is "
        "(masks, filler, placement). Prints a per-condition summary at the end.",
    )
    add_model_flags(parser)
    add_plan_flags(parser, n=20, n_aliases=("--n-prompts",), several_placements=True,
                   n_help="prompts per task (default 20); spell it --n-prompts under torchrun, whose own options "
                   "make --n ambiguous")
    add_condition_flags(parser, "record")
    parser.add_argument("--record", default=["attention", "gradients", "lens"], type=name_list,
                        help="what to record besides the prediction: comma-separated attention, gradients, lens, "
                        "routing (default the first three; routing, which experts the answer slot, the masks and "
                        "the context are sent to per layer, is always added on mixture-of-experts models)")
    parser.add_argument("--decode", default=None, metavar="SAMPLER[:KEY=VALUE,...]",
                        help="also decode the answer slot and the masks after it iteratively, greedily, and record "
                        "per row the decoded answer, the step it was unmasked and its confidence then, and per step "
                        "the masks left and the answer's attention to them (store group decode). 'llada' or "
                        "'llada:steps=K,block=B,cfg=C' (LLaDA's sampler: blocks of B masks, K steps in all, "
                        "guidance C), 'dream' or 'dream:steps=K,alg=A,eps=E' (Dream's sampler, A one of "
                        "maskgit_plus, topk_margin, entropy). steps and block default to the number of masks "
                        "(steps=masks: one step per mask); diffusion models only")
    parser.add_argument("--keep-examples", type=int, default=0, metavar="K",
                        help="also keep the full attention rows from the readout position (every layer, head and "
                        "input token) for the first K examples of each condition (prompt 0 of every task in turn, "
                        "then prompt 1, ...; the same prompts in every condition), for the attention viewer of "
                        "analyze's report.html (store group attention_rows; 4 bytes x tokens x layers x heads per "
                        "kept row, at most 32 per condition; default 0: none)")
    parser.add_argument("--block-length", type=int, default=None, metavar="N",
                        help="read the answer under block attention, as a block-diffusion sampler (LLaDA2's) sees it: "
                        "bidirectional inside blocks of N positions counted from the first token, causal across "
                        "them, so the answer reads only the masks of its own block (stored per row in "
                        "blocks/masks_in_block and shown as 'masks in block'). 0: full attention. Default: 32 for "
                        "a family decoded by LLaDA2's block sampler, full attention otherwise")
    parser.add_argument("--top-k", type=int, default=10, help="top-k token ids and probabilities kept per row (default 10)")
    parser.add_argument("--batch-size", type=batch_size_type, default=8,
                        help="prompts per forward pass (default 8), or 'auto': the largest batch whose estimated "
                        "memory fits the device's free memory (the machine's available memory on the CPU) with the "
                        f"model loaded, keeping {100 * SAFETY_MARGIN:.0f}%% of it free")
    parser.add_argument("--out", default="record.h5", help="output HDF5 store (default record.h5)")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true",
                          help="continue an interrupted store (or an interrupted --overwrite run) written with the "
                          "same settings and --batch-size")
    existing.add_argument("--overwrite", action="store_true",
                          help="replace an existing store: the new one is written to NAME.overwrite.h5 and replaces "
                          "it only once complete (a failed or killed run leaves the old store whole)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_intervention_flags(parser, steer=True)
    parser.epilog = ("Sharded over processes: torchrun --nproc-per-node N -m mdlm_interp record --n-prompts P ...; "
                     "each rank "
                     "records a contiguous block of rows into OUT.shardR-of-N.h5 and rank 0 merges them into OUT "
                     "(HDF5 virtual datasets; keep the shards next to it).")
    parser.set_defaults(func=run)


@sharded
def run(args, shard, device: str) -> int:
    """Check the request and the output path, load the model, record, then print the summary table. Under
    torchrun (``shard``: this process's ``sharding.Shard``) each rank records its block of rows into a shard
    store and rank 0 merges them."""
    from mdlm_interp.cli.common import apply_interventions, load_model_from, plan_fields, resolve_batch_size
    from mdlm_interp.models.loader import parse_device
    from mdlm_interp.record import RecordConfig, record, shard_path
    from mdlm_interp.store import open_store
    from mdlm_interp.store.merge import merge_stores
    from mdlm_interp.store.summary import format_table, summarize
    from mdlm_interp.store.writer import check_writable

    # everything that needs no model is checked before loading one
    check_writable(args.out, resume=args.resume, overwrite=args.overwrite)
    config = RecordConfig(**plan_fields(args), masks=args.masks, filler=args.filler, chat=args.chat,
                          record=args.record, top_k=args.top_k, decode=args.decode,
                          keep_examples=args.keep_examples, block_length=args.block_length)
    parse_device(args.device)
    lm = load_model_from(args, device)
    interventions = apply_interventions(args, lm, config, quiet=not shard.leader)
    batch_size = resolve_batch_size(args.batch_size, lm, config, device, needs_grad="gradients" in config.record)
    out = shard.step(lambda: record(
        lm, out=args.out, config=config, batch_size=batch_size, resume=args.resume, overwrite=args.overwrite,
        progress=not args.no_progress and shard.leader, command_line=args.command_line,
        shard=(shard.rank, shard.world) if shard.world > 1 else None))
    if shard.world > 1:
        out = shard.step(lambda: merge_stores([shard_path(args.out, r, shard.world) for r in range(shard.world)],
                                              args.out, overwrite=args.resume or args.overwrite), leader_only=True)
    if not shard.leader:
        return 0
    if interventions:
        from mdlm_interp.representations.interventions import write_interventions

        write_interventions(out, interventions)
    with open_store(out) as store:
        print(f"wrote {store.n_rows} rows to {out}")
        print(format_table(summarize(store)))
    return 0
