"""``mdlm-interp activations``: task prompts run through a model, activations at chosen sites and
position groups streamed into an activation store."""

from mdlm_interp.cli.common import sharded


def add_parser(subparsers) -> None:
    """Register the ``activations`` subcommand."""
    from mdlm_interp.cli.common import (add_condition_flags, add_intervention_flags, add_model_flags, add_plan_flags,
                                        name_list)
    from mdlm_interp.representations.activations import DTYPES
    from mdlm_interp.representations.collect import POSITION_GROUPS

    parser = subparsers.add_parser(
        "activations", help="write activations at hook sites and position groups into an activation store (HDF5)",
        description="Build task-suite prompts, run them through the model and write the activations at the "
        "asked sites, at the positions of the asked groups, into a chunked HDF5 activation store: one row per "
        "(prompt, condition, position), labelled by prompt key, condition, position group and position, with "
        "the labels masks, mask_ratio (masks / prompt length), filler, prompt_length, correct and answer_loss "
        "(cross-entropy of the answer at the readout position). The store streams to disk, is readable while "
        "written and resumable; `train-sae` and `probe` read it.")
    add_model_flags(parser)
    add_plan_flags(parser, n=20, n_aliases=("--n-prompts",), several_placements=True,
                   n_help="prompts per task (default 20); spell it --n-prompts under torchrun")
    add_condition_flags(parser, "export")
    parser.add_argument("--sites", required=True, type=name_list, metavar="HOOK,...",
                        help="comma-separated TransformerLens hook names (blocks.3.hook_resid_post, "
                        "blocks.1.attn.hook_z, blocks.2.hook_mlp_out, hook_embed ...); a bare hook kind "
                        "(resid_post, attn_out, mlp_out, z ...) means that kind at every layer")
    parser.add_argument("--positions", default=["answer"], type=name_list, metavar="GROUP,...",
                        help=f"comma-separated position groups: {', '.join(POSITION_GROUPS)} (a position belongs to "
                        "the first listed group that holds it; default answer)")
    parser.add_argument("--store-dtype", default="float16", choices=list(DTYPES),
                        help="dtype the activations are stored in (bfloat16 as its raw 16 bits; default float16). "
                        "--dtype is the model's")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (default 8)")
    parser.add_argument("--chunk-rows", type=int, default=256, metavar="N",
                        help="rows per HDF5 chunk; rows are committed (and survive a kill) N at a time (default 256)")
    parser.add_argument("--out", default="activations.h5", help="output activation store (default activations.h5)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted store written with the same settings and --batch-size")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_intervention_flags(parser)
    parser.epilog = ("Sharded over processes: torchrun --nproc-per-node N -m mdlm_interp activations --n-prompts P "
                     "...; each rank writes a contiguous block of prompts into OUT.shardR-of-N.h5 and rank 0 "
                     "merges them into OUT (HDF5 virtual datasets; keep the shards next to it).")
    parser.set_defaults(func=run)


def expand_sites(entries, n_layers: int) -> list[str]:
    """Return the hook names of ``entries``: a full hook name as given, a bare hook kind (no dot) at every
    layer (a model-level kind such as embed once)."""
    from mdlm_interp.errors import UsageError
    from mdlm_interp.models.hook_names import HOOK_KINDS, hook_name

    sites = []
    for entry in entries:
        if "." in entry or entry.startswith("hook_"):
            sites.append(entry)
        elif entry in HOOK_KINDS:
            try:
                sites.append(hook_name(entry))
            except UsageError:
                sites += [hook_name(entry, layer) for layer in range(n_layers)]
        else:
            raise UsageError(f"unknown site {entry!r}: give a TransformerLens hook name or a hook kind "
                             f"({', '.join(HOOK_KINDS)})")
    if not sites:
        raise UsageError("no site given: --sites takes TransformerLens hook names")
    return sites


@sharded
def run(args, shard, device: str) -> int:
    """Check the request, load the model, export, print what was written. Under torchrun (``shard``: this
    process's ``sharding.Shard``) each rank exports its block of rows into a shard store and rank 0 merges them."""
    from mdlm_interp.cli.common import apply_interventions, load_model_from, plan_fields
    from mdlm_interp.models.loader import parse_device
    from mdlm_interp.plan import PromptPlan
    from mdlm_interp.representations.activation_reader import open_activations
    from mdlm_interp.representations.export import check_groups, export_activations, merge_activation_stores, shard_path
    from mdlm_interp.store.writer import check_writable

    check_groups(args.positions)
    check_writable(args.out, resume=args.resume)
    plan = PromptPlan(**plan_fields(args), masks=args.masks, filler=args.filler, chat=args.chat)
    parse_device(args.device)
    lm = load_model_from(args, device)
    sites = expand_sites(args.sites, lm.config.n_layers)
    interventions = apply_interventions(args, lm, plan, quiet=not shard.leader)
    out = shard.step(lambda: export_activations(
        lm, out=args.out, plan=plan, sites=sites, groups=args.positions, dtype=args.store_dtype,
        batch_size=args.batch_size, chunk_rows=args.chunk_rows, resume=args.resume,
        progress=not args.no_progress and shard.leader, command_line=args.command_line,
        shard=(shard.rank, shard.world) if shard.world > 1 else None, interventions=interventions))
    if shard.world > 1:
        out = shard.step(lambda: merge_activation_stores([shard_path(args.out, r, shard.world)
                                                          for r in range(shard.world)], args.out,
                                                         overwrite=args.resume), leader_only=True)
    if shard.leader:
        with open_activations(out) as store:
            print(f"wrote {store.n_rows} rows of {len(store.sites)} site(s) ({store.dtype}) to {out}")
    return 0
