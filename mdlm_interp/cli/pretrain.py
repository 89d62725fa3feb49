"""``mdlm-interp pretrain``: train a model organism (LLaDA-like, its causal twin, or Dream-like)."""


def add_parser(subparsers) -> None:
    """Register ``pretrain``."""
    parser = subparsers.add_parser(
        "pretrain",
        help="train a small model organism on the task suite (LLaDA, Llama twin or Dream objective)",
        description="Train a model organism on freshly sampled task-suite prompts with the family's objective "
        "(llada: masked diffusion; llama: next-token; dream: masked diffusion with the -1 prediction offset, "
        "initialised from a trained llama twin with --init), in two stages: pretraining, then SFT on the answer. "
        "Writes a checkpoint directory that load_model reads, with a model card (README.md), "
        "training_config.json and eval_results.json. Defaults are the recipe of `make organisms` "
        "(mdlm_interp.training.organisms).",
    )
    parser.add_argument("--family", required=True, choices=["llada", "llama", "dream"],
                        help="llada (masked diffusion from scratch), llama (its causal twin) or dream "
                             "(masked diffusion with shifted predictions, from --init)")
    parser.add_argument("--preset", default="organism", help="shape preset (organism; tiny for quick tests)")
    parser.add_argument("--init", default=None, metavar="DIR",
                        help="start from this checkpoint's weights (same shape and vocabulary); dream starts "
                             "from the trained llama twin, its q/k/v biases set to zero")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps of the pretraining stage (default: the family's recipe; 0 skips it)")
    parser.add_argument("--sft-steps", type=int, default=None,
                        help="steps of the SFT stage (default: the family's recipe; 0 skips it)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights, data and masks")
    parser.add_argument("--out", required=True, help="output checkpoint directory (created if missing)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate of pretraining (default: recipe)")
    parser.add_argument("--sft-lr", type=float, default=None, help="peak learning rate of SFT (default: recipe)")
    parser.add_argument("--batch-tokens", type=int, default=None,
                        help="tokens per batch in both stages (default: recipe)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; results are bitwise reproducible for a fixed count (default 1)")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="steps between held-out evaluations during training (0: none; default: recipe)")
    parser.add_argument("--eval-prompts", type=int, default=1000,
                        help="held-out prompts per condition in the final measurement for the model card")
    parser.add_argument("--masks", default="1,5,10,20,50",
                        help="comma-separated appended-mask counts measured for the model card")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="dtype of the stored weights (the card's accuracies are measured after loading them)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from OUT/train_state (same flags required)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Handle ``pretrain``: train, write the checkpoint, measure it, write the model card."""
    import shlex
    import sys
    from pathlib import Path

    from mdlm_interp.errors import UsageError
    from mdlm_interp.models.loader import parse_dtype
    from mdlm_interp.training.card import measure, write_card
    from mdlm_interp.training.organisms import build_config
    from mdlm_interp.training.pretrain import train

    try:
        masks = tuple(int(m) for m in args.masks.split(","))
    except ValueError:
        raise UsageError(f"--masks must be comma-separated integers, got {args.masks!r}") from None
    if any(m < 1 for m in masks):
        raise UsageError("--masks values must be at least 1 (the first mask is the answer slot)")
    if args.family == "dream" and not args.init:
        print("mdlm-interp: note: dream without --init trains from random weights (the recipe starts from "
              "the llama twin)", file=sys.stderr)
    config = build_config(args.family, args.preset, args.seed, steps=args.steps, sft_steps=args.sft_steps,
                          init=args.init, lr=args.lr, sft_lr=args.sft_lr, batch_tokens=args.batch_tokens,
                          threads=args.threads, eval_every=args.eval_every)
    dtype = parse_dtype(args.dtype)
    summary = train(config, args.out, resume=args.resume, dtype=dtype, progress=not args.no_progress)
    print(f"trained {args.family} in {summary['total_seconds'] / 60:.1f} min; measuring {args.out}", file=sys.stderr)
    results = measure(args.out, masks, args.eval_prompts)
    write_card(args.out, Path(args.out).name, summary, results, "mdlm-interp pretrain " + shlex.join(card_argv(args)),
               args.dtype)
    for row in results["accuracy"]:
        print(f"{row['placement']:>14}  masks {row['masks']:>2}  accuracy {row['accuracy']:.3f}")
    return 0


def card_argv(args) -> list[str]:
    """Return the flags that rebuild this run (given flags only; --resume and --no-progress left out)."""
    argv = []
    for flag in ("family", "preset", "init", "steps", "sft_steps", "seed", "lr", "sft_lr", "batch_tokens", "threads",
                 "eval_every", "eval_prompts", "masks", "dtype", "out"):
        value = getattr(args, flag)
        if value is not None:
            argv += ["--" + flag.replace("_", "-"), str(value)]
    return argv
