"""``mdlm-interp train-sae STORE --site SITE --out DIR``: a sparse autoencoder on an activation store."""

EVALUATION_ROWS = 16384  # rows the final metrics are computed on (the first selected ones)


def add_parser(subparsers) -> None:
    """Register the ``train-sae`` subcommand."""
    parser = subparsers.add_parser(
        "train-sae", help="train a sparse autoencoder (top-k or ReLU + L1) on one site of an activation store",
        description="Train a sparse autoencoder on the activations of one site of an activation store: top-k "
        "(with the auxiliary loss that revives dead latents) or ReLU + L1 ('standard'), unit-norm decoder rows, "
        "chunk-shuffled batches, seeded and bitwise reproducible for a seed and thread count. The progress bar "
        "shows the running loss, MSE, explained variance (ev), L0 and dead fraction. DIR gets the SAE in "
        "SAELens' format (cfg.json + sae_weights.safetensors, loadable with sae_lens.SAE.load_from_disk and "
        "mdlm_interp.saes.load) and evaluation.json; while training, DIR/train_state holds the resumable state.")
    parser.add_argument("store", metavar="STORE", help="activation store (HDF5) to train on")
    parser.add_argument("--site", required=True, metavar="HOOK",
                        help="the site, as a TransformerLens hook name stored in STORE (e.g. blocks.3.hook_resid_post)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (new, or the one to --resume)")
    parser.add_argument("--architecture", choices=["topk", "standard"], default="topk",
                        help="top-k SAE or ReLU + L1 SAE (default topk)")
    parser.add_argument("--d-sae", type=int, default=None, metavar="N",
                        help="number of latents (default 8 x the site's width)")
    parser.add_argument("--k", type=int, default=32, help="active latents per row of a top-k SAE (default 32)")
    parser.add_argument("--l1", type=float, default=1.0, metavar="C",
                        help="L1 coefficient of a standard SAE, in units of the activations' RMS norm (default 1.0)")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    parser.add_argument("--batch-size", type=int, default=256, metavar="N", help="rows per step (default 256)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (default 1e-3)")
    parser.add_argument("--dead-after", type=int, default=100, metavar="N",
                        help="steps without firing after which a latent counts as dead (default 100)")
    parser.add_argument("--condition", action="append", default=None, metavar="C",
                        help="train only on rows of this condition (repeatable; default all rows)")
    parser.add_argument("--position-group", action="append", default=None, metavar="G",
                        help="train only on rows of this position group (repeatable; default all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the batch order (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (part of bitwise reproducibility; default 1)")
    parser.add_argument("--save-every", type=int, default=100, metavar="N", help="steps between saved states (default 100)")
    parser.add_argument("--resume", action="store_true", help="continue the training state in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Check the input, train, evaluate on the first selected rows, print the metrics."""
    import json
    from pathlib import Path

    import numpy as np
    import torch

    from mdlm_interp.representations.activation_reader import StoreBatches, open_activations, select_rows
    from mdlm_interp.representations.sae import evaluate
    from mdlm_interp.representations.sae_format import load_sae
    from mdlm_interp.representations.sae_train import SAETrainConfig, train_sae

    with open_activations(args.store) as store:
        d_in = store.check_site(args.site)
        keep = select_rows(store, condition=args.condition, position_group=args.position_group)
        provenance = store.provenance
    config = SAETrainConfig(architecture=args.architecture, d_sae=args.d_sae or 8 * d_in, k=args.k,
                            l1_coefficient=args.l1, dead_after=args.dead_after, steps=args.steps,
                            batch_size=args.batch_size, lr=args.lr, seed=args.seed, threads=args.threads,
                            save_every=args.save_every)
    config.check()
    config.shape(d_in)
    batches = StoreBatches(args.store, args.site, args.batch_size, seed=args.seed, rows=keep)
    metadata = {"model_name": provenance.get("model_id", ""), "weights_fingerprint": provenance.get("weights_fingerprint", ""),
                "activation_store": Path(args.store).name, "rows": {"condition": args.condition,
                                                                     "position_group": args.position_group},
                "command_line": args.command_line}
    summary = train_sae(batches, config, args.out, hook_name=args.site, metadata=metadata, resume=args.resume,
                        progress=not args.no_progress)
    sae, _ = load_sae(args.out, d_in=d_in)
    rows = np.flatnonzero(keep)[:EVALUATION_ROWS]
    metrics = evaluate(sae, torch.from_numpy(batches.store.read(args.site, rows)))
    metrics.update(rows=len(rows), tokens_per_s=summary["tokens_per_s"])
    (Path(args.out) / "evaluation.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"SAE {args.site}: explained variance {metrics['explained_variance']:.4f}, L0 {metrics['l0']:.2f}, "
          f"MSE {metrics['mse']:.4g}, dead fraction {metrics['dead_fraction']:.4f} (on {len(rows)} rows); "
          f"written to {args.out}")
    return 0
