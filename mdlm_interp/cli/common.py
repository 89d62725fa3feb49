"""Flags that several subcommands share (not a subcommand): the model flags and the prompt plan flags.

``add_model_flags`` adds --model, --adapter, --merge-adapter, --dtype and --device; ``load_model_from``
loads what they name. ``add_plan_flags`` adds --task, --n, --placement, --n-relevant, --n-distractor
and --seed; ``plan_from`` builds the ``plan.PromptPlan`` they give (each command adds its own mask
flags). record, patch and ablate use both.
"""

DEFAULT_MODEL = "organism-llada"


def int_list(text: str) -> list[int]:
    """Parse "50" or "1,5,10" into a list of ints."""
    import argparse

    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def name_list(text: str) -> list[str]:
    """Parse "a,b" into ["a", "b"]."""
    return [part.strip() for part in text.split(",") if part.strip()]


def add_model_flags(parser, *, diffusion_only: bool = False) -> None:
    """Add --model, --adapter, --merge-adapter, --dtype and --device to a subcommand's parser
    (``diffusion_only``: the command takes diffusion models only, which --model's help says)."""
    from mdlm_interp.cli.adapters import add_adapter_flags
    from mdlm_interp.models.families import DTYPE_NAMES

    kind = "diffusion checkpoint directory" if diffusion_only else "checkpoint directory"
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"{kind}, organism-NAME or hub id in the local cache (default {DEFAULT_MODEL})")
    add_adapter_flags(parser)
    parser.add_argument("--dtype", default="float32", choices=list(DTYPE_NAMES), help="model dtype (default float32)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")


def load_model_from(args, device: str | None = None):
    """Return the ``LoadedModel`` the model flags name, on ``device`` (default --device). ``load_model``
    checks the adapter flags (merging needs an adapter; the adapter directory) before reading weights."""
    from mdlm_interp.cli.adapters import adapter_options
    from mdlm_interp.models import load_model

    return load_model(args.model, device=device or args.device, dtype=args.dtype, **adapter_options(args))


def add_condition_flags(parser, verb: str) -> None:
    """Add --masks, --filler and --chat (the mask conditions of a command that runs task prompts; ``verb``:
    what the command does with each condition, e.g. "record")."""
    parser.add_argument("--masks", default=[1], type=int_list,
                        help="mask count(s) n, e.g. 50 or 1,5,10,20,50: n masks are the answer slot and n - 1 "
                        "masks after it (default 1; causal models take none)")
    parser.add_argument("--filler", default=None, metavar="TEXT",
                        help=f"also {verb} the filler control for each mask count above 1: the masks after the "
                        "answer slot replaced by this one-token text, e.g. ' .'")
    parser.add_argument("--chat", action="store_true", help="wrap prompts in the family's chat template (instruct models)")


def add_plan_flags(parser, *, n: int, n_help: str, several_placements: bool = False, n_aliases: tuple = (),
                   seed_help: str = "seed of the prompts (default 0)") -> None:
    """Add --task, --n (and ``n_aliases``), --placement, --n-relevant, --n-distractor and --seed to a
    subcommand's parser; ``n``: the default of --n, ``n_help`` its help; ``several_placements``:
    --placement takes a comma-separated list (else one layout)."""
    parser.add_argument("--task", default="all", type=name_list,
                        help="'all' or comma-separated task names (see `mdlm-interp tasks list`)")
    parser.add_argument("--n", *n_aliases, dest="n", type=int, default=n, help=n_help)
    if several_placements:
        parser.add_argument("--placement", default=["random"], type=name_list,
                            help="comma-separated layouts: random, relevant-at:K (relevant block at example slot K), "
                            "query-at:K (query and answer slot at slot K) (default random)")
    else:
        parser.add_argument("--placement", default="random",
                            help="one layout: random, relevant-at:K or query-at:K (default random)")
    parser.add_argument("--n-relevant", type=int, default=10, help="relevant examples per prompt (default 10)")
    parser.add_argument("--n-distractor", type=int, default=40, help="distractor examples per prompt (default 40)")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)


def plan_fields(args) -> dict:
    """Return the ``plan.PromptPlan`` fields the plan flags give (tasks, placements, n, n_relevant,
    n_distractor, seed); the command adds masks, filler and chat."""
    return {"tasks": args.task, "placements": args.placement, "n": args.n, "n_relevant": args.n_relevant,
            "n_distractor": args.n_distractor, "seed": args.seed}


def one_placement(plan, command: str) -> str:
    """Return the plan's one placement; UsageError if it has several (``command`` names the subcommand)."""
    from mdlm_interp.errors import UsageError

    if len(plan.placements) != 1:
        raise UsageError(f"{command} takes one placement")
    return plan.placements[0]


def add_result_output_flags(parser) -> None:
    """Add --resume and --overwrite (exclusive) for a command that writes a result store batch by batch
    (patch, ablate)."""
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true",
                          help="continue an interrupted run of --out: the batches it completed (kept in .NAME.batches "
                          "beside it) are taken, the rest computed; the settings and --batch-size must be the same. "
                          "A complete store written with the same settings is left as it is")
    existing.add_argument("--overwrite", action="store_true",
                          help="replace an existing output (and discard the batches of an interrupted run); the old "
                          "store stays until the new one is complete")


def claim_result_outputs(args, outputs: dict, folders=()) -> None:
    """Check and claim a result store command's outputs before any work: ``args.out`` (a store that may be
    resumed) plus ``outputs`` (flag -> path, e.g. figures; ``folders`` names the flags that are folders).
    One-line ``UsageError`` for anything the output policy refuses."""
    from mdlm_interp.outputs import claim_outputs
    from mdlm_interp.store.partial import check_partial
    from mdlm_interp.store.writer import check_writable

    check_writable(args.out, resume=args.resume, overwrite=args.overwrite)
    check_partial(args.out, resume=args.resume, overwrite=args.overwrite)
    claim_outputs({"--out": args.out, **outputs}, [args.model], overwrite=args.overwrite or args.resume,
                  folders=set(folders))


def add_intervention_flags(parser, *, steer: bool = False) -> None:
    """Add --sae (and with ``steer`` --steer, --steer-positions, --steer-control) to a command that runs
    the model; ``apply_interventions`` puts what they name into the loaded model."""
    parser.add_argument("--sae", action="append", default=[], metavar="DIR[:SITE]",
                        help="splice in the SAE saved in DIR (SAELens format, e.g. from train-sae): its reconstruction "
                        "replaces the activation at its hook (cfg.json's hook name, or SITE) in every forward pass; the "
                        "answer's loss with and without it is printed and kept in the output (repeatable)")
    if not steer:
        return
    from mdlm_interp.representations.interventions import STEER_POSITIONS

    parser.add_argument("--steer", action="append", default=[], metavar="FILE:SITE:SCALE",
                        help="add SCALE x the direction saved for SITE in FILE (safetensors, e.g. probe's "
                        "directions.safetensors) to the activation at SITE in every forward pass; SCALE shift=D adds "
                        "D x w / ||w||^2, which moves a linear probe's reading x @ w by D (repeatable)")
    parser.add_argument("--steer-positions", default="all", choices=list(STEER_POSITIONS),
                        help="where --steer adds its direction: all positions, every mask token, the answer slot (the "
                        "first mask) or the readout position (default all)")
    parser.add_argument("--steer-control", default=None, metavar="random[:SEED]",
                        help="the control: add a random direction of each --steer direction's norm instead (seeded, "
                        "default seed 0)")


def apply_interventions(args, lm, plan=None, quiet: bool = False) -> dict | None:
    """Put the SAEs and steering directions the intervention flags name into ``lm``'s model (permanent
    hooks); return their report {"interventions": [...], "loss", "accuracy", "loss_with", "accuracy_with",
    "prompts"}, measured on up to 16 prompts of ``plan`` (a ``plan.PromptPlan``; default 2 prompts per
    task at 1 mask) and printed unless ``quiet``; None when no flag asks for anything."""
    from mdlm_interp.errors import UsageError
    from mdlm_interp.representations import interventions as iv

    steers = getattr(args, "steer", [])
    if not args.sae and not steers:
        return None
    control = getattr(args, "steer_control", None)
    seed = None
    if control is not None:
        kind, _, value = control.partition(":")
        if kind != "random" or (value and not value.isdigit()):
            raise UsageError(f"--steer-control {control}: expected random or random:SEED")
        seed = int(value or 0)
    built = iv.build_interventions(lm.model, saes=[iv.parse_sae_spec(s) for s in args.sae],
                                   steers=[iv.parse_steer_spec(s) for s in steers],
                                   steer_positions=getattr(args, "steer_positions", "all"), steer_control=seed,
                                   mask_token_id=lm.mask_token_id, prediction_offset=lm.spec.prediction_offset)
    from mdlm_interp.batching import collate
    from mdlm_interp.plan import PromptPlan
    from mdlm_interp.subject import subject_from

    subject = subject_from(lm)
    prompts = iv.evaluation_prompts(subject, plan or PromptPlan(n=2))
    batch = collate(prompts, subject.prediction_offset, device=next(lm.model.parameters()).device)
    report = {"interventions": built.described, **iv.loss_with_interventions(lm.model, batch, built),
              "prompts": len(prompts)}
    built.install(lm.model)
    if not quiet:
        names = "; ".join(f"{d['kind']} {d['site']}" + (f" x{d['scale']:g}" if d["kind"] == "steer" else "")
                          + (" (random control)" if d.get("control_seed") is not None else "") for d in built.described)
        print(f"interventions: {names}. Answer loss at the readout without / with them: {report['loss']:.4f} / "
              f"{report['loss_with']:.4f} nats, accuracy {report['accuracy']:.3f} / {report['accuracy_with']:.3f} "
              f"(on {len(prompts)} task prompts)")
    return report


def sharded_epilog(command: str) -> str:
    """Return the --help epilog of a result store command (patch, ablate) on running it under torchrun."""
    return (f"Sharded over processes: torchrun --nproc-per-node N -m mdlm_interp {command} --n-prompts P ...; each "
            "rank computes a contiguous block of the batches (committed to .OUT.batches beside --out) and rank 0 "
            "alone claims the outputs, writes the one store (the same as one process writes with the same "
            "--batch-size) and prints. --resume continues a run with any number of processes; a failure in one "
            "rank stops all of them with that rank's error.")


def sharded(command):
    """Return ``run(args)`` for a heavy command ``command(args, shard, device)``: under torchrun it joins the
    process group and runs as one rank (``sharding.joined``: ``shard`` is this process's ``sharding.Shard``,
    ``device`` its own GPU for --device cuda); without torchrun as the one rank of one. A failure in any rank
    stops every rank, with the failing rank's one-line error."""
    import functools

    @functools.wraps(command)
    def run(args) -> int:
        from mdlm_interp.sharding import joined

        with joined(args.device) as (shard, device):
            return command(args, shard, device)

    return run


def batch_size_type(text: str):
    """Parse --batch-size: a positive integer, or "auto" (``resolve_batch_size`` picks it once the model is loaded)."""
    import argparse

    if text.strip() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"batch size must be at least 1, got {value}")
    return value


def resolve_batch_size(batch_size, lm, plan, device: str, *, needs_grad: bool) -> int:
    """Return ``batch_size``, or for "auto" the largest batch of ``plan``'s prompts (a ``plan.PromptPlan``) whose
    estimated activations fit the free memory of ``device`` with the model ``lm`` loaded, keeping
    ``resources.SAFETY_MARGIN`` of it free (``resources.auto_batch_size``; ``needs_grad``: the run keeps a
    graph). The choice is printed to standard error (a resume must give that number)."""
    if batch_size != "auto":
        return batch_size
    import sys

    from mdlm_interp.plan import plan_prompts
    from mdlm_interp.resources import SAFETY_MARGIN, activation_bytes_per_prompt, auto_batch_size, free_memory_bytes
    from mdlm_interp.subject import subject_from

    subject = subject_from(lm)
    prompts = plan_prompts(subject, plan, plan.rows(plan.conditions(subject.causal)))
    cfg = lm.config
    per_prompt = activation_bytes_per_prompt(
        tokens=max(len(tp.input_ids) for tp in prompts), d_model=cfg.d_model, d_mlp=cfg.d_mlp, n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_kv_heads, d_head=cfg.d_head, n_layers=cfg.n_layers, d_vocab=cfg.d_vocab,
        dtype_bytes=next(lm.model.parameters()).element_size(), needs_grad=needs_grad, logit_rows=1)
    free = free_memory_bytes(device)
    size = auto_batch_size(free, per_prompt)
    print(f"--batch-size auto: {size} (about {per_prompt / 2**20:,.0f} MiB per prompt, {free / 2**30:,.1f} GiB free "
          f"on {device}, {SAFETY_MARGIN:.0%} kept free)", file=sys.stderr)
    return size
