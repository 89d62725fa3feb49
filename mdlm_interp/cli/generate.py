"""``mdlm-interp generate``: decode text from a diffusion model by iterative unmasking, optionally tracing every step."""

DEFAULT_MODEL = "organism-llada"


def add_parser(subparsers) -> None:
    """Register the ``generate`` subcommand."""
    from mdlm_interp.cli.common import add_intervention_flags
    from mdlm_interp.models.families import DTYPE_NAMES

    parser = subparsers.add_parser(
        "generate",
        help="decode text by iterative unmasking (LLaDA's, Dream's or LLaDA2's block sampler); --trace stores "
        "every step",
        description="Append --gen-length masks to each prompt and unmask them step by step with LLaDA's sampler "
        "(blocks, low-confidence or random remasking, classifier-free guidance) or Dream's (origin, maskgit_plus, "
        "topk_margin, entropy) or LLaDA2's block sampler (block attention, a confidence threshold), as the official "
        "samplers do; print the generated text. Diffusion models only.",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"checkpoint directory, organism-NAME or hub id in the local cache (default {DEFAULT_MODEL})")
    parser.add_argument("--prompt", action="append", required=True, metavar="TEXT",
                        help="prompt text (repeat the flag for a batch; prompts are left-padded)")
    parser.add_argument("--chat", action="store_true", help="wrap each prompt in the family's chat template")
    parser.add_argument("--sampler", choices=["llada", "dream", "llada2_block"], default=None,
                        help="which sampler (default the family's own: llada for LLaDA, dream for Dream, llada2_block "
                        "(block diffusion) for LLaDA2)")
    add_sampler_flags(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the torch.Generator behind every random choice "
                        "(default 0)")
    parser.add_argument("--show-steps", action="store_true",
                        help="print the generated region after every step (masks shown as the mask token)")
    parser.add_argument("--keep-special", action="store_true",
                        help="print special tokens (e.g. end-of-text) instead of dropping them")
    parser.add_argument("--trace", default=None, metavar="FILE.h5",
                        help="write every step's ids, proposals, confidences and unmasked positions to this HDF5 file")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --trace file (the new one replaces it only once complete)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPE_NAMES), help="model dtype (default float32)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    add_intervention_flags(parser, steer=True)
    parser.epilog = ("Example: mdlm-interp generate --model organism-llada --gen-length 8 --prompt \"Input: return, "
                     "merry, bell\\nOutput: merry\\nInput: 7, big, 3\\nOutput:\"")
    parser.set_defaults(func=run)


def add_sampler_flags(parser, *, length: bool = True) -> None:
    """Add one flag per option of the samplers' config dataclasses (``decoding.config``): an option several
    samplers have (and the generation length, unless ``length`` is False) once, the others in a group per
    sampler; help texts, choices and types come from the fields."""
    from collections import Counter
    from dataclasses import fields

    from mdlm_interp.decoding.config import LENGTH_FLAG, SAMPLER_CONFIGS, option_label, option_type

    owners = Counter(option_label(cls, f.name) for cls in SAMPLER_CONFIGS.values() for f in fields(cls))
    shared = {flag for flag, count in owners.items() if count > 1}
    groups = {name: parser.add_argument_group(f"{cls.__name__.removesuffix('SamplerConfig')}'s sampler")
              for name, cls in SAMPLER_CONFIGS.items()}
    added = set()
    for name, cls in SAMPLER_CONFIGS.items():
        for item in fields(cls):
            flag = option_label(cls, item.name)
            if flag in added or (flag == LENGTH_FLAG and not length):
                continue
            added.add(flag)
            group = parser if flag in shared else groups[name]
            group.add_argument(flag, dest=cls.LENGTH if flag == LENGTH_FLAG else item.name, type=option_type(item),
                               choices=item.metadata["choices"], help=item.metadata["help"],
                               default=item.default if flag == LENGTH_FLAG else None)


def sampler_options(args, sampler: str) -> dict:
    """Return the sampler options given on the command line (flags left out are not in it), as fields of
    ``sampler``'s config; the generation length and steps are left to ``generate_text``."""
    from dataclasses import fields

    from mdlm_interp.decoding.config import SAMPLER_CONFIGS

    names = {f.name for cls in SAMPLER_CONFIGS.values() for f in fields(cls)} - {"steps"}
    names -= {cls.LENGTH for cls in SAMPLER_CONFIGS.values()}
    return {name: getattr(args, name) for name in sorted(names) if getattr(args, name) is not None}


def run(args) -> int:
    """Check the request, load the model, generate, print the texts (and write the trace)."""
    import sys

    from mdlm_interp.decoding.text import text_sampler_config
    from mdlm_interp.errors import UsageError
    from mdlm_interp.models.checkpoint import read_config, resolve_checkpoint
    from mdlm_interp.models.families import family_for_config

    gen_length = args.gen_length
    if args.trace is not None:
        from mdlm_interp.outputs import claim_outputs

        claim_outputs({"--trace": args.trace}, [args.model], overwrite=args.overwrite)
    config_json = read_config(resolve_checkpoint(args.model))
    spec = family_for_config(config_json)  # the family, before loading any weight
    if spec.causal:
        raise UsageError(f"{args.model} is a causal ({spec.family}) model: only diffusion models decode by unmasking")
    sampler = args.sampler or spec.sampler
    options = sampler_options(args, sampler)
    text_sampler_config(sampler, gen_length, args.steps, **options)  # every option checked before loading
    context = spec.decoder_config(config_json).max_seq_len
    if gen_length >= context:  # a prompt takes at least one token
        raise UsageError(f"--gen-length {gen_length} does not fit the model's context of {context} tokens with a prompt")

    import torch

    from mdlm_interp.decoding import StepTrace, generate_text, write_trace
    from mdlm_interp.cli.common import apply_interventions
    from mdlm_interp.models import load_model
    from mdlm_interp.subject import subject_from
    from mdlm_interp.version import __version__

    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    interventions = apply_interventions(args, lm)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    trace = StepTrace() if args.trace is not None or args.show_steps else None
    generation = generate_text(lm, args.prompt, sampler=args.sampler, chat=args.chat, steps=args.steps,
                               gen_length=gen_length, generator=generator, on_step=trace,
                               skip_special_tokens=not args.keep_special, **options)
    if args.show_steps:
        print_steps(lm, trace, generation)
    for index, text in enumerate(generation.texts):
        print(text if len(generation.texts) == 1 else f"[{index}] {text}")
    if args.trace is not None:
        from mdlm_interp.outputs import check_output_file

        check_output_file(args.trace, overwrite=args.overwrite)  # a concurrent run may have written it meanwhile
        subject = subject_from(lm)
        facts = subject.facts()
        write_trace(args.trace, trace, generation, {
            "command_line": args.command_line, "toolkit_version": __version__,
            **subject.identity(facts).attrs(), "family": lm.spec.family, "dtype": args.dtype,
            "seed": args.seed, "prompts": args.prompt, "chat": args.chat,
            "settings": {"sampler": sampler, "steps": args.steps or gen_length, "gen_length": gen_length, **options},
        })
        if interventions:
            from mdlm_interp.representations.interventions import write_interventions

            write_interventions(args.trace, interventions)
        print(f"wrote {len(trace.steps['ids'])} steps to {args.trace}", file=sys.stderr)
    return 0


def print_steps(lm, trace, generation) -> None:
    """Print, per step and prompt, the generated region as text (masks as the mask token)."""
    arrays = trace.arrays()
    start = generation.prompt_length
    for step, ids in enumerate(arrays["ids"][1:]):
        for index, row in enumerate(ids):
            label = f"step {step:>3}" + (f" [{index}]" if len(ids) > 1 else "")
            print(f"{label}: {lm.tokenizer.decode(row[start:].tolist(), skip_special_tokens=False)}")
