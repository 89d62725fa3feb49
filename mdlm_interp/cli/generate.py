"""``mdlm-interp generate``: decode text from a diffusion model by iterative unmasking, optionally tracing every step."""

DEFAULT_MODEL = "organism-llada"


def add_parser(subparsers) -> None:
    """Register the ``generate`` subcommand."""
    from mdlm_interp.models.families import DTYPE_NAMES

    parser = subparsers.add_parser(
        "generate",
        help="decode text by iterative unmasking (LLaDA's or Dream's sampler); --trace stores every step",
        description="Append --gen-length masks to each prompt and unmask them step by step with LLaDA's sampler "
        "(blocks, low-confidence or random remasking, classifier-free guidance) or Dream's (origin, maskgit_plus, "
        "topk_margin, entropy), as the official samplers do; print the generated text. Diffusion models only.",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"checkpoint directory, organism-NAME or hub id in the local cache (default {DEFAULT_MODEL})")
    parser.add_argument("--prompt", action="append", required=True, metavar="TEXT",
                        help="prompt text (repeat the flag for a batch; prompts are left-padded)")
    parser.add_argument("--chat", action="store_true", help="wrap each prompt in the family's chat template")
    parser.add_argument("--sampler", choices=["llada", "dream"], default=None,
                        help="which sampler (default the family's own: llada for LLaDA, dream for Dream)")
    parser.add_argument("--gen-length", type=int, default=32, help="tokens to generate, i.e. masks appended (default 32)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps, one forward pass each "
                        "(default --gen-length: one token per step)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature (default 0: greedy); LLaDA draws with Gumbel noise in float64")
    llada = parser.add_argument_group("LLaDA's sampler")
    llada.add_argument("--block-length", type=int, default=None,
                       help="block length, dividing --gen-length; blocks are decoded left to right, steps split "
                       "evenly over them (default --gen-length: one block)")
    llada.add_argument("--remasking", choices=["low_confidence", "random"], default=None,
                       help="which masked positions each step reveals: the most confident (default) or random ones")
    llada.add_argument("--cfg-scale", type=float, default=None,
                       help="unsupervised classifier-free guidance scale (default 0: none)")
    dream = parser.add_argument_group("Dream's sampler")
    dream.add_argument("--alg", choices=["origin", "maskgit_plus", "topk_margin", "entropy"], default=None,
                       help="origin: each mask revealed with probability 1 - s/t; the others reveal the positions "
                       "with the best top-1 probability, top-1 minus top-2 margin, or negative entropy "
                       "(default maskgit_plus)")
    dream.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold (with --temperature)")
    dream.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (with --temperature)")
    dream.add_argument("--alg-temp", type=float, default=None,
                       help="draw the positions to reveal from softmax(confidence / ALG_TEMP) instead of the top ones")
    dream.add_argument("--eps", type=float, default=None, help="last timestep of the schedule (default 0.001)")
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
    parser.epilog = ("Example: mdlm-interp generate --model organism-llada --gen-length 8 --prompt \"Input: return, "
                     "merry, bell\\nOutput: merry\\nInput: 7, big, 3\\nOutput:\"")
    parser.set_defaults(func=run)


SAMPLER_FLAGS = ("block_length", "remasking", "cfg_scale", "alg", "top_p", "top_k", "alg_temp", "eps", "temperature")


def run(args) -> int:
    """Check the request, load the model, generate, print the texts (and write the trace)."""
    import shlex
    import sys

    from mdlm_interp.errors import UsageError

    if args.gen_length < 1 or (args.steps is not None and args.steps < 1):
        raise UsageError("--gen-length and --steps must be at least 1")
    if args.trace is not None:
        from mdlm_interp.outputs import claim_outputs

        claim_outputs({"--trace": args.trace}, [args.model], overwrite=args.overwrite)
    options = {name: getattr(args, name) for name in SAMPLER_FLAGS if getattr(args, name) is not None}

    import torch

    from mdlm_interp.decoding import StepTrace, check_sampler_options, generate_text, write_trace
    from mdlm_interp.models import load_model
    from mdlm_interp.models.checkpoint import read_config, resolve_checkpoint
    from mdlm_interp.models.families import family_for_config
    from mdlm_interp.version import __version__

    spec = family_for_config(read_config(resolve_checkpoint(args.model)))  # the family, before loading any weight
    if spec.causal:
        raise UsageError(f"{args.model} is a causal ({spec.family}) model: only diffusion models decode by unmasking")
    check_sampler_options(args.sampler or spec.sampler, options)
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    trace = StepTrace() if args.trace is not None or args.show_steps else None
    generation = generate_text(lm, args.prompt, sampler=args.sampler, chat=args.chat, steps=args.steps,
                               gen_length=args.gen_length, generator=generator, on_step=trace,
                               skip_special_tokens=not args.keep_special, **options)
    if args.show_steps:
        print_steps(lm, trace, generation)
    for index, text in enumerate(generation.texts):
        print(text if len(generation.texts) == 1 else f"[{index}] {text}")
    if args.trace is not None:
        sampler = args.sampler or lm.spec.sampler
        write_trace(args.trace, trace, generation, {
            "command_line": shlex.join(["mdlm-interp", *sys.argv[1:]]), "toolkit_version": __version__,
            "model_id": lm.source, "family": lm.spec.family, "dtype": args.dtype,
            "weights_fingerprint": lm.fingerprint(), "seed": args.seed, "prompts": args.prompt, "chat": args.chat,
            "settings": {"sampler": sampler, "steps": args.steps or args.gen_length, "gen_length": args.gen_length,
                         **options},
        })
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
