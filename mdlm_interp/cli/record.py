"""``mdlm-interp record``: run the task suite through a model with recorder hooks into an HDF5 store."""


def add_parser(subparsers) -> None:
    """Register the ``record`` subcommand."""
    from mdlm_interp.cli.common import add_model_flags, add_plan_flags, int_list, name_list

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
    parser.add_argument("--masks", default=[1], type=int_list,
                        help="mask count(s) n, e.g. 50 or 1,5,10,20,50: n masks are the answer slot and n - 1 "
                        "masks after it (default 1; causal models take none)")
    parser.add_argument("--filler", default=None, metavar="TEXT",
                        help="also record the filler control for each mask count above 1: the masks after the "
                        "answer slot replaced by this one-token text, e.g. ' .'")
    parser.add_argument("--chat", action="store_true", help="wrap prompts in the family's chat template (instruct models)")
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
    parser.add_argument("--block-length", type=int, default=None, metavar="N",
                        help="read the answer under block attention, as a block-diffusion sampler (LLaDA2's) sees it: "
                        "bidirectional inside blocks of N positions counted from the first token, causal across "
                        "them, so the answer reads only the masks of its own block (stored per row in "
                        "blocks/masks_in_block and shown as 'masks in block'). 0: full attention. Default: 32 for "
                        "a family decoded by LLaDA2's block sampler, full attention otherwise")
    parser.add_argument("--top-k", type=int, default=10, help="top-k token ids and probabilities kept per row (default 10)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (default 8)")
    parser.add_argument("--out", default="record.h5", help="output HDF5 store (default record.h5)")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true",
                          help="continue an interrupted store (or an interrupted --overwrite run) written with the "
                          "same settings and --batch-size")
    existing.add_argument("--overwrite", action="store_true",
                          help="replace an existing store: the new one is written to NAME.overwrite.h5 and replaces "
                          "it only once complete (a failed or killed run leaves the old store whole)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.epilog = ("Sharded over processes: torchrun --nproc-per-node N -m mdlm_interp record --n-prompts P ...; "
                     "each rank "
                     "records a contiguous block of rows into OUT.shardR-of-N.h5 and rank 0 merges them into OUT "
                     "(HDF5 virtual datasets; keep the shards next to it).")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Check the request and the output path, load the model, record, then print the summary table."""
    from mdlm_interp.cli.common import load_model_from, plan_fields
    from mdlm_interp.errors import UsageError
    from mdlm_interp.record import RecordConfig, record
    from mdlm_interp.store.writer import check_writable

    # everything that needs no model is checked before loading one
    check_writable(args.out, resume=args.resume, overwrite=args.overwrite)
    config = RecordConfig(**plan_fields(args), masks=args.masks, filler=args.filler, chat=args.chat,
                          record=args.record, top_k=args.top_k, decode=args.decode, block_length=args.block_length)
    if args.batch_size < 1:
        raise UsageError("batch size must be at least 1")

    from mdlm_interp.models.loader import parse_device
    from mdlm_interp.store import open_store
    from mdlm_interp.store.summary import format_table, summarize

    parse_device(args.device)
    rank, world, device = distributed_setup(args.device)
    lm = load_model_from(args, device)
    out = record(
        lm, out=args.out, config=config, batch_size=args.batch_size, resume=args.resume, overwrite=args.overwrite,
        progress=not args.no_progress and rank == 0, command_line=args.command_line,
        shard=(rank, world) if world > 1 else None,
    )
    if world > 1:
        out = merge_shards(args, rank, world)
    if rank != 0:
        return 0
    with open_store(out) as store:
        print(f"wrote {store.n_rows} rows to {out}")
        print(format_table(summarize(store)))
    return 0


def distributed_setup(device: str) -> tuple[int, int, str]:
    """Under torchrun (WORLD_SIZE > 1) join the process group; return (rank, world size, device).

    A CUDA device becomes this process's local GPU.
    """
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    import torch.distributed as dist

    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    return dist.get_rank(), world, device


def merge_shards(args, rank: int, world: int):
    """Wait for every rank; rank 0 merges the shard stores into ``args.out``. Returns that path."""
    import torch.distributed as dist

    from mdlm_interp.record import shard_path
    from mdlm_interp.store.merge import merge_stores

    dist.barrier()
    if rank == 0:
        shards = [shard_path(args.out, r, world) for r in range(world)]
        merge_stores(shards, args.out, overwrite=args.resume or args.overwrite)
    dist.barrier()
    dist.destroy_process_group()
    return args.out
