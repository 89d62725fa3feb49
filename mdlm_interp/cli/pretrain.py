"""``mdlm-interp pretrain``: train a model organism (LLaDA-like, its causal twin, or Dream-like)."""


def add_parser(subparsers) -> None:
    """Register ``pretrain``."""
    from mdlm_interp.models.families import DTYPE_NAMES, SHAPE_PRESETS
    from mdlm_interp.training.recipes import RECIPES

    parser = subparsers.add_parser(
        "pretrain",
        help="train a small model organism on the task suite (LLaDA, Llama twin or Dream objective)",
        description="Train a model organism on freshly sampled task-suite prompts with the family's objective "
        "(llada: masked diffusion; llama: next-token; dream: masked diffusion with the -1 prediction offset, "
        "initialised from a trained llama twin with --init; llada2: a mixture of experts upcycled from a dense "
        "--init, half its batches under block attention), in two stages: pretraining, then SFT on the answer. "
        "Writes a checkpoint directory that load_model reads, with a model card (README.md), "
        "training_config.json and eval_results.json. Defaults are the recipe of `make organisms` "
        "(mdlm_interp.training.organisms).",
    )
    parser.add_argument("--family", required=True, choices=list(RECIPES),
                        help="llada (masked diffusion from scratch), llama (its causal twin), dream "
                             "(masked diffusion with shifted predictions, from --init) or llada2 (a LLaDA2-style "
                             "mixture of experts with block diffusion, upcycled from a dense --init)")
    parser.add_argument("--preset", default="organism", choices=list(SHAPE_PRESETS),
                        help="shape preset (default organism; tiny for quick tests)")
    parser.add_argument("--init", default=None, metavar="DIR",
                        help="start from this checkpoint's weights (same shape and vocabulary); dream starts "
                             "from the trained llama twin, its q/k/v biases set to zero")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps of the pretraining stage (default: the family's recipe; 0 skips it)")
    parser.add_argument("--sft-steps", type=int, default=None,
                        help="steps of the SFT stage (default: the family's recipe; 0 skips it)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights, data and masks")
    parser.add_argument("--out", required=True, help="output checkpoint directory (created if missing; an existing "
                        "non-empty one needs --overwrite or --resume)")
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
    parser.add_argument("--dtype", default="float32", choices=list(DTYPE_NAMES),
                        help="dtype of the stored weights (the card's accuracies are measured after loading them)")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true",
                          help="continue an interrupted run from OUT/train_state (same flags required)")
    existing.add_argument("--overwrite", action="store_true",
                          help="replace an existing checkpoint directory (only once the new one is complete)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Handle ``pretrain``: train, write the checkpoint, measure it, write the model card."""
    from mdlm_interp.errors import UsageError
    from mdlm_interp.training.organisms import pretrain_organism

    try:
        masks = tuple(int(m) for m in args.masks.split(",") if m.strip())
    except ValueError:
        raise UsageError(f"--masks must be comma-separated integers, got {args.masks!r}") from None
    results = pretrain_organism(
        args.family, args.out, preset=args.preset, seed=args.seed, init=args.init, steps=args.steps,
        sft_steps=args.sft_steps, lr=args.lr, sft_lr=args.sft_lr, batch_tokens=args.batch_tokens, threads=args.threads,
        eval_every=args.eval_every, eval_prompts=args.eval_prompts, masks=masks, dtype=args.dtype, resume=args.resume,
        overwrite=args.overwrite, progress=not args.no_progress)
    for row in results["accuracy"]:
        print(f"{row['placement']:>14}  masks {row['masks']:>2}  accuracy {row['accuracy']:.3f}")
    return 0
