"""``mdlm-interp steps record|patch``: step caches and patching between denoising trajectories."""

from mdlm_interp.cli.common import add_model_flags, add_plan_flags, int_list, name_list, plan_fields

POSITIONS_HELP = ("answer: the answer slot; readout: the readout position (the slot for LLaDA, the position "
                  "before it for Dream); generated: the slot and the masks after it; prompt: every position "
                  "before the slot; all: every position")


def add_parser(subparsers) -> None:
    """Register ``steps`` with its two subcommands, ``record`` and ``patch``."""
    from mdlm_interp.cli import CommandLineParser

    parser = subparsers.add_parser(
        "steps", help="across denoising steps: cache hook sites at every step (record), patch one trajectory "
        "into another step by step (patch)",
        description="Interpretability across the sampler's denoising steps. `steps record` decodes the plan's "
        "prompts and writes a steps store (one row per prompt and step: canvas, masked and unmasked positions, "
        "attention each position receives, cached activations); `steps patch` patches a site of one trajectory "
        "into another at each step and writes a step patching store. `analyze` reads both.")
    commands = parser.add_subparsers(dest="steps_command", metavar="SUBCOMMAND", parser_class=CommandLineParser)
    add_record_parser(commands)
    add_patch_parser(commands)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def add_shared_flags(parser, n_default: int) -> None:
    """Add the model, plan and sampler flags that both subcommands take."""
    from mdlm_interp.cli.generate import add_sampler_flags

    add_model_flags(parser, diffusion_only=True)
    add_plan_flags(parser, n=n_default, n_help=f"prompts per task (default {n_default})",
                   seed_help="seed of the prompts and of the sampler's draws, reset per step (default 0)")
    parser.add_argument("--sampler", choices=["llada", "dream"], default=None,
                        help="which sampler (default the family's own: llada for LLaDA, dream for Dream); the "
                        "generated region is the answer slot and the masks after it")
    add_sampler_flags(parser, length=False)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_record_parser(commands) -> None:
    """Register ``steps record``."""
    parser = commands.add_parser(
        "record", help="decode prompts and cache hook sites at every step into a steps store",
        description="Decode each prompt's answer slot and the masks after it with a sampler, one prompt at a "
        "time, and write one row per step: the canvas before and after the step, which positions were masks and "
        "which the step unmasked, the prediction for the answer slot, the attention every position receives "
        "(mean over queries, for attention sinks) and the chosen sites' activations at the chosen positions. "
        "Rows are written step by step (readable while written); --resume continues a killed run.")
    add_shared_flags(parser, n_default=2)
    parser.add_argument("--masks", type=int, default=8, help="n masks: the answer slot and n - 1 masks after it, "
                        "all decoded (default 8)")
    parser.add_argument("--sites", type=name_list, default=["resid_post"], metavar="KINDS",
                        help="hook kinds to cache, comma-separated: resid_pre, resid_post, attn_out, mlp_out, z "
                        "(every head, flattened) (default resid_post)")
    parser.add_argument("--layers", type=int_list, default=None, help="layers to cache, e.g. 0,2 (default all)")
    parser.add_argument("--positions", default="answer", choices=["answer", "readout", "generated", "prompt", "all"],
                        help=f"positions to cache: {POSITIONS_HELP} (default answer)")
    parser.add_argument("--cache-steps", type=int_list, default=None, metavar="STEPS",
                        help="steps whose activations are cached, e.g. 0,3 (default every step)")
    parser.add_argument("--no-attention", action="store_true",
                        help="do not record the attention each position receives (no sink analysis; faster)")
    parser.add_argument("--out", required=True, metavar="FILE.h5", help="the steps store to write")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="continue an interrupted run of --out with the "
                          "same settings: prompts whose every step was written are kept")
    existing.add_argument("--overwrite", action="store_true", help="replace an existing --out (the old store stays "
                          "until the new one is complete)")
    parser.set_defaults(func=run_record)


def add_patch_parser(commands) -> None:
    """Register ``steps patch``."""
    parser = commands.add_parser(
        "patch", help="patch a site of one trajectory into another at each step",
        description="Decode each prompt twice, as donor (--donor-masks, or another prompt with --donor-shift) and "
        "as receiver (--receiver-masks), with the same sampler and steps; then, for each site and step t, decode "
        "the receiver again with the site's activation at the position group replaced by the donor's at step t "
        "(and once at every step), the sampler's draws unchanged. Writes per run the final answer, logit(answer) "
        "- logit(wrong) at every step, the step the answer slot is unmasked and the step its prediction settles, "
        "and attribution patching's estimate (one forward and backward pass per step).")
    add_shared_flags(parser, n_default=2)
    parser.add_argument("--receiver-masks", type=int, default=8, help="n masks of the receiver (default 8)")
    parser.add_argument("--donor-masks", type=int, default=1, help="n masks of the donor (default 1)")
    parser.add_argument("--donor-shift", type=int, default=0,
                        help="the donor of prompt i is prompt i + SHIFT (mod --n) of the same task (default 0: "
                        "the same prompt)")
    parser.add_argument("--site", dest="sites", type=name_list, default=["L0.H1"], metavar="SITES",
                        help="sites to patch, comma-separated: a head L<layer>.H<head>, or KIND:L<layer> with KIND "
                        "resid_pre, resid_post, attn_out or mlp_out (default L0.H1)")
    parser.add_argument("--positions", default="answer", choices=["answer", "readout", "generated", "prompt", "all"],
                        help=f"where the site is patched: {POSITIONS_HELP} (default answer)")
    parser.add_argument("--patch-steps", type=int_list, default=None, metavar="STEPS",
                        help="steps to patch one at a time, e.g. 0,2 (default every step)")
    parser.add_argument("--no-every-step", action="store_true", help="leave out the run patched at every step")
    parser.add_argument("--no-attribution", action="store_true", help="exact patching only")
    parser.add_argument("--out", required=True, metavar="FILE.h5", help="the step patching store to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out once the new one is "
                        "complete")
    parser.set_defaults(func=run_patch)


def sampler_of(args) -> tuple[str, dict]:
    """Return (sampler, its options from the flags, steps included) after checking that the model is a
    diffusion model (read from its config, before any weight)."""
    from mdlm_interp.cli.generate import sampler_options
    from mdlm_interp.errors import UsageError
    from mdlm_interp.models.checkpoint import read_config, resolve_checkpoint
    from mdlm_interp.models.families import family_for_config

    spec = family_for_config(read_config(resolve_checkpoint(args.model)))
    if spec.causal:
        raise UsageError(f"{args.model} is a causal ({spec.family}) model: steps decode by unmasking")
    sampler = args.sampler or spec.sampler
    options = sampler_options(args, sampler)
    if args.steps is not None:
        options["steps"] = args.steps
    return sampler, options


def run_record(args) -> int:
    """Check the flags, decode and write the steps store, print its summary."""
    from mdlm_interp.outputs import claim_outputs
    from mdlm_interp.plan import PromptPlan
    from mdlm_interp.store.summary import plain_table

    claim_outputs({"--out": args.out}, [args.model], overwrite=args.overwrite or args.resume)
    plan = PromptPlan(**plan_fields(args), masks=(args.masks,))
    sampler, options = sampler_of(args)

    from mdlm_interp.cli.common import load_model_from
    from mdlm_interp.steps.cache import record_steps
    from mdlm_interp.steps.schemas import describe_steps

    lm = load_model_from(args)
    out = record_steps(lm, plan, out=args.out, masks=args.masks, sampler=sampler, options=options, sites=args.sites,
                       layers=args.layers, position_group=args.positions, cache_steps=args.cache_steps,
                       attention=not args.no_attention, resume=args.resume, overwrite=args.overwrite,
                       progress=not args.no_progress, command_line=args.command_line)
    described = describe_steps(out)
    print(described["header"])
    print(plain_table(described["conditions"]))
    return 0


def run_patch(args) -> int:
    """Check the flags, patch between the two trajectories and write the store, print its summary."""
    from mdlm_interp.errors import UsageError
    from mdlm_interp.outputs import claim_outputs
    from mdlm_interp.plan import Condition, PromptPlan
    from mdlm_interp.store.summary import plain_table

    claim_outputs({"--out": args.out}, [args.model], overwrite=args.overwrite)
    plan = PromptPlan(**plan_fields(args), masks=(args.receiver_masks, args.donor_masks))
    if len(plan.placements) != 1:
        raise UsageError("steps patch takes one placement")
    receiver = Condition(args.receiver_masks, False, plan.placements[0])
    donor = Condition(args.donor_masks, False, plan.placements[0])
    if receiver == donor and args.donor_shift % plan.n == 0:
        raise UsageError("the donor is the receiver: change --donor-masks or --donor-shift")
    sampler, options = sampler_of(args)

    from mdlm_interp.cli.common import load_model_from
    from mdlm_interp.steps.patching import run_step_patching
    from mdlm_interp.steps.schemas import describe_step_patching

    lm = load_model_from(args)
    out = run_step_patching(lm, plan, receiver, donor, out=args.out, sampler=sampler, options=options,
                            sites=args.sites, position_group=args.positions, patch_steps=args.patch_steps,
                            donor_shift=args.donor_shift, attribution=not args.no_attribution,
                            every_step=not args.no_every_step, overwrite=args.overwrite,
                            progress=not args.no_progress, command_line=args.command_line)
    described = describe_step_patching(out)
    print(described["header"])
    print(plain_table(described["conditions"]))
    return 0
