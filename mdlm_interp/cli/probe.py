"""``mdlm-interp probe STORE --label L --out DIR``: linear probes per site of an activation store."""


def add_parser(subparsers) -> None:
    """Register the ``probe`` subcommand."""
    parser = subparsers.add_parser(
        "probe", help="fit ridge or logistic probes for a label at every site of an activation store",
        description="Fit a linear probe for a numeric label (a label column of the store, or 'position') at "
        "each site of an activation store, cross-validated by prompt key (every prompt's rows in one fold, "
        "never split by row). Prints the held-out R^2 (ridge) or accuracy (logistic) per site with a 95% "
        "bootstrap interval over prompts (the L2 strength chosen by nested cross-validation unless --alpha is "
        "given); DIR gets directions.safetensors (the probe fit on all rows, one "
        "tensor per site) and probes.json (scores, intervals, fold scores, provenance).")
    parser.add_argument("store", metavar="STORE", help="activation store (HDF5)")
    parser.add_argument("--label", required=True, metavar="L", help="the label to probe: a label column of STORE or 'position'")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (new)")
    parser.add_argument("--sites", default=None, metavar="S1,S2,...", help="sites (hook names) to probe (default all)")
    parser.add_argument("--kind", choices=["ridge", "logistic"], default="ridge",
                        help="ridge regression (R^2) or logistic regression of a two-valued label (accuracy); default ridge")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds over prompts (default 5)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="L2 strength, scale free (activations centred and divided by their RMS); default: chosen "
                        "from 1e-3 ... 10 by nested cross-validation over prompts")
    parser.add_argument("--condition", action="append", default=None, metavar="C",
                        help="use only rows of this condition (repeatable; default all rows)")
    parser.add_argument("--position-group", action="append", default=None, metavar="G",
                        help="use only rows of this position group (repeatable; default all)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples of prompts (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds and the bootstrap (default 0)")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Check the input, fit one probe per site, save them, print a line per site."""
    import numpy as np

    from mdlm_interp.errors import UsageError
    from mdlm_interp.representations.activation_reader import open_activations, select_rows
    from mdlm_interp.representations.probes import check_new_folder, fit_probe, save_probes

    out = check_new_folder(args.out)
    if (args.alpha is not None and not (np.isfinite(args.alpha) and args.alpha > 0)) or args.seed < 0 or not 1 <= args.bootstrap <= 1_000_000:
        raise UsageError("--alpha must be a finite positive number, --seed at least 0 and --bootstrap 1 to 1000000")
    with open_activations(args.store) as store:
        sites = args.sites.split(",") if args.sites else sorted(store.sites)
        for site in sites:
            store.check_site(site)
        if args.label not in (*store.labels, "position"):
            raise UsageError(f"{args.store} has no label {args.label!r}; it has {', '.join([*store.labels, 'position'])}")
        keep = select_rows(store, condition=args.condition, position_group=args.position_group)
        rows = store.rows()[keep]
        index = np.flatnonzero(keep)
        if args.kind == "logistic" and rows[args.label].nunique() != 2:
            raise UsageError(f"a logistic probe needs a label with two values; {args.label!r} has "
                             f"{rows[args.label].nunique()} in the selected rows")
        results = []
        for site in sites:
            probe = fit_probe(store.read(site, index), rows[args.label].to_numpy(), rows.prompt_key.to_numpy(),
                              site=site, label=args.label, kind=args.kind, n_folds=args.folds, alpha=args.alpha,
                              seed=args.seed, n_boot=args.bootstrap)
            results.append(probe)
            print(f"{site}: {probe.metric} {probe.score:.4f} [{probe.interval[0]:.4f}, {probe.interval[1]:.4f}] "
                  f"({probe.n_rows} rows, {probe.n_groups} prompts)")
        provenance = {"store": str(args.store), "store_provenance": store.provenance, "command_line": args.command_line,
                      "rows": {"condition": args.condition, "position_group": args.position_group}}
    save_probes(results, out, provenance)
    print(f"probes written to {out}")
    return 0
