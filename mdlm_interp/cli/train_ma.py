"""``mdlm-interp train-ma``: LoRA fine-tuning with the mask-agnostic (MA) loss."""

import argparse


def int_range(text: str) -> tuple[int, int]:
    """Parse "MIN:MAX" into two ints (argparse type)."""
    try:
        low, high = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX with two integers, got {text!r}") from None
    return low, high


def float_range(text: str) -> tuple[float, float]:
    """Parse "LOW:HIGH" (or one number, LOW = HIGH) into two floats (argparse type)."""
    try:
        parts = [float(part) for part in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH with two numbers, got {text!r}") from None
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH, got {text!r}")
    return parts[0], parts[-1]


def add_parser(subparsers) -> None:
    """Register ``train-ma``."""
    from mdlm_interp.models.families import DTYPE_NAMES, PROJECTIONS

    parser = subparsers.add_parser(
        "train-ma", help="LoRA fine-tuning with the mask-agnostic (MA) loss; writes a peft adapter",
        description="Fine-tune a masked diffusion model (LLaDA or Dream family) with LoRA adapters and the "
        "mask-agnostic loss of 'Masks Can Be Distracting': each response is masked with ratio p (the prompt "
        "never), two copies of the input carry different numbers l1 != l2 of terminal masks after it, and the "
        "loss is alpha * L_CE (cross-entropy on the masked response tokens of both copies, 1/p weighted) + beta * "
        "L_TV (total variation between the two copies' predictions, p weighted), both divided by the number of "
        "masked response tokens. --beta 0 is the CE-only ablation. Every line of the data is checked before "
        "training. DIR receives the adapter in peft's format, training_config.json, train_log.csv, checkpoints/ "
        "and a card (README.md).")
    parser.add_argument("--model", required=True, metavar="M",
                        help="base model: checkpoint directory, organism-NAME or hub id in the local cache")
    parser.add_argument("--data", required=True, metavar="FILE.jsonl",
                        help="fine-tuning pairs, one JSON object a line: prompt and response, or OpenOrca's "
                        "system_prompt, question and response (see `mdlm-interp tasks export --format sft`)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty, or with --resume)")
    parser.add_argument("--steps", type=int, default=1200, help="optimizer steps (default 1200, as in the paper)")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of AdamW (default 1e-4)")
    parser.add_argument("--warmup", type=int, default=50,
                        help="linear warmup steps, then cosine decay to 0.1x (default 50)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per micro-batch (default 8)")
    parser.add_argument("--grad-accum", type=int, default=1,
                        help="micro-batches whose gradients are summed into one step (default 1)")
    parser.add_argument("--alpha", type=float, default=1.0, help="weight of the CE term (default 1)")
    parser.add_argument("--beta", type=float, default=1.0, help="weight of the TV term; 0 is the CE-only ablation, "
                        "which still measures and logs the TV term (default 1)")
    parser.add_argument("--mask-ratio", type=float_range, default=(0.001, 1.0), metavar="LOW:HIGH",
                        help="range of the response's masking ratio p, drawn stratified per batch (default "
                        "0.001:1)")
    parser.add_argument("--extra-masks", type=int_range, default=(0, 63), metavar="MIN:MAX",
                        help="range of the numbers l1 != l2 of terminal masks after the response in the two "
                        "copies (default 0:63)")
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default 8)")
    parser.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA scaling alpha (default 16)")
    parser.add_argument("--lora-targets", default=None, metavar="NAMES",
                        help=f"comma-separated projections to adapt, from {','.join(PROJECTIONS)} (default: the "
                        "family's, all of them)")
    parser.add_argument("--no-chat-template", action="store_true",
                        help="feed prompts as they are instead of in the family's chat template (the model "
                        "organisms were trained on plain task prompts)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the LoRA initialisation, batches and noise")
    parser.add_argument("--save-every", type=int, default=100,
                        help="write an adapter checkpoint (checkpoints/step-N) and the resumable state every N "
                        "steps (default 100; 0: never)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run saved in OUT (same settings; gives the same adapter as an "
                        "uninterrupted run)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1; results are bitwise "
                        "reproducible for a seed and thread count)")
    parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help="dtype of the base weights")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Handle ``train-ma``: check everything, train, print where the adapter is."""
    from mdlm_interp.training.ma import MAConfig, train_ma

    targets = () if args.lora_targets is None else tuple(t for t in args.lora_targets.split(",") if t)
    config = MAConfig(model=args.model, data=args.data, steps=args.steps, lr=args.lr, warmup=args.warmup,
                      batch_size=args.batch_size, grad_accum=args.grad_accum, alpha=args.alpha, beta=args.beta,
                      mask_ratio=args.mask_ratio, extra_masks=args.extra_masks, lora_r=args.lora_r,
                      lora_alpha=args.lora_alpha, lora_targets=targets, chat=not args.no_chat_template,
                      seed=args.seed, save_every=args.save_every, threads=args.threads, dtype=args.dtype,
                      device=args.device)
    summary = train_ma(config, args.out, resume=args.resume, progress=not args.no_progress,
                       command_line=args.command_line)
    final = summary["final"]
    print(f"trained {summary['steps']} steps in {summary['seconds'] / 60:.1f} min (loss {final['loss']:.4f}, "
          f"CE {final['ce']:.4f}, TV {final['tv']:.4f}); adapter in {args.out}")
    return 0
