"""``mdlm-interp sweep paper --model M [--model M2 ...] --n N --out DIR``: record the paper's grid, then analyse it."""

from mdlm_interp.cli.common import sharded


def grid_help() -> str:
    """The parts of every grid, for --help."""
    from mdlm_interp.sweep import GRIDS

    lines = []
    for name, grid in GRIDS.items():
        lines.append(f"grid '{name}' (each part: n_relevant + n_distractor examples, masks, placements):")
        for part in grid:
            filler = f", filler {part.filler!r}" if part.filler else ""
            record = f", records {','.join(part.record)}" if part.record else ""
            masks = ",".join(map(str, part.masks))
            lines.append(f"  {part.name}: {part.n_relevant}+{part.n_distractor}, masks {masks}, "
                         f"{' / '.join(part.placements)}{filler}{record}")
            lines.append(f"      ({part.purpose})")
    return "\n".join(lines)


def add_parser(subparsers) -> None:
    """Register the ``sweep`` subcommand."""
    import argparse

    parser = subparsers.add_parser(
        "sweep",
        help="record the paper's grid of conditions for one or more models, then write the report",
        description="Record every part of a grid for every model, one store per (model, part, placement, mask "
        "count) under DIR/stores/MODEL/PART/, with one progress bar for the whole sweep; then run `analyze` on "
        "all of them into DIR (report.md, tables/, figures/; see `mdlm-interp analyze --help`). Rerunning the "
        "same command after a kill continues where it stopped (complete stores are kept, a partial one is "
        "resumed); DIR/sweep.json keeps the settings, and a rerun with others is refused. Causal models take "
        "no masks and no query-at placements (those stores are left out for them).",
        epilog=grid_help() + "\nMeasured: --n 12 on the three organisms (23,616 rows) took 23.4 CPU-minutes on 1 thread."
        "\n\nSharded over processes:\n  torchrun --nproc-per-node N -m mdlm_interp sweep paper --n-prompts P ...\n"
        "each rank records its contiguous block of the stores left to record (balanced by rows), each\n"
        "store whole, so the stores are those one process records; rank 0 alone locks and checks DIR,\n"
        "swaps an --overwrite sweep in and writes the report. A failure in one rank stops all of them\n"
        "with that rank's error.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("grid", choices=["paper"], help="the grid to record (paper: see below)")
    parser.add_argument("--model", action="append", required=True, metavar="M",
                        help="checkpoint directory, organism-NAME or cached hub id; repeat for several models")
    parser.add_argument("--n", "--n-prompts", dest="n", type=int, required=True,
                        help="prompts per task and condition (16 tasks); spell it --n-prompts under torchrun")
    parser.add_argument("--out", required=True, metavar="DIR", help="sweep folder (stores, report, tables, figures)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompts (default 0)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (default 8)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="model dtype (default float32)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--overwrite", action="store_true",
                        help="record a new sweep instead of continuing DIR's: it is recorded next to DIR and replaces "
                        "DIR's stores and sweep.json once complete (a rerun after a kill continues it)")
    parser.add_argument("--no-analyze", action="store_true", help="record only; run `mdlm-interp analyze DIR` later")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


@sharded
def run(args, shard, device: str) -> int:
    """Record the grid (resuming), then write the report and print its pooled inverse-scaling table. Under
    torchrun (``shard``: this process's ``sharding.Shard``) each rank records its block of the stores and
    rank 0 writes the report."""
    import sys
    from pathlib import Path

    from mdlm_interp.sweep import foreign_files, run_sweep

    command_line = args.command_line
    paths = run_sweep(args.grid, args.model, n=args.n, out=args.out, seed=args.seed, batch_size=args.batch_size,
                      device=device, dtype=args.dtype, overwrite=args.overwrite, progress=not args.no_progress,
                      command_line=command_line, shard=shard)
    if not shard.leader:
        return 0
    foreign = foreign_files(args.out, paths)
    if foreign:
        print(f"left out {len(foreign)} file(s) under {Path(args.out) / 'stores'} that are no store of this sweep, "
              f"e.g. {foreign[0]}", file=sys.stderr)
    if args.no_analyze:
        print(f"recorded into {Path(args.out) / 'stores'}")
        return 0
    from mdlm_interp.analyses.report import console_table, write_report

    report = write_report(paths, args.out, command_line=command_line)
    print(console_table(report.parent))
    print(f"report: {report}")
    return 0
