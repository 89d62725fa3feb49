"""Cost of activation patching and attribution patching, in units of one plain forward pass.

    python benchmarks/bench_circuits.py [--quick] [--model PATH] [--pairs N]

All timings are taken in one process, alternating between the variants, and compared by their
medians (the machine is shared and noisy). On a batch of prompt pairs (the same prompts at 1 and at
50 masks, 10 relevant + 40 distractor examples):

- unit: a plain forward pass (no grad) of the clean batch plus one of the corrupt batch, i.e. running
  the pair once; per direction, the unit is one plain forward pass of the receiving run;
- caching: both runs with every patched activation kept;
- attribution patching: both runs with a graph, and one backward pass each; this estimates every
  cell of the grid in both directions;
- the exact sweep of the whole grid (layer x position group for resid_pre, attn_out, mlp_out; layer x
  head for hook_z), both directions, batched, starting at the patched layer;
- the naive sweep: one full forward pass with a TransformerLens patching hook per variant, measured on
  a sample of variants and scaled to the whole grid.
"""

import argparse

import torch
from timing import median_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one pair, one repeat, fewer position groups")
    parser.add_argument("--model", default="organism-llada", help="diffusion checkpoint (default organism-llada)")
    parser.add_argument("--pairs", type=int, default=2, help="prompt pairs per batch (default 2)")
    parser.add_argument("--last-k", type=int, default=5, help="single-position groups (default 5)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each variant (default 5)")
    args = parser.parse_args()
    pairs_n, repeats, last_k = (1, 1, 2) if args.quick else (args.pairs, args.repeats, args.last_k)

    from mdlm_interp import load_model
    from mdlm_interp.circuits.pairs import make_pair, pair_prompts, readout_logits, top_wrong_ids
    from mdlm_interp.circuits.patching import (
        ROLES,
        Receiver,
        all_site_hooks,
        capture,
        exact_patching,
        site_hook,
        unembed_readout,
    )
    from mdlm_interp.hooks.interventions import patch_positions
    from mdlm_interp.record import Condition, RecordConfig, subject_from

    torch.set_grad_enabled(False)
    lm = load_model(args.model)
    model = lm.model
    config = RecordConfig(tasks=("adjective+largest", "verb+smallest"), n=pairs_n, record=())
    prompts = pair_prompts(subject_from(lm), config, Condition(1, False, "random"), Condition(50, False, "random"))
    pair = make_pair(prompts["clean"][:pairs_n], prompts["corrupt"][:pairs_n], lm.spec.prediction_offset)
    names = all_site_hooks(len(model.blocks))
    final = site_hook("resid_pre", len(model.blocks), len(model.blocks))
    answers = pair.answer_ids()
    corrupt_logits, _ = capture(model, pair.batches["corrupt"], [], with_grad=False)
    wrong = top_wrong_ids(readout_logits(corrupt_logits, pair.batches["corrupt"]), answers)
    cached = {run: capture(model, pair.batches[run], names, with_grad=False)[1] for run in ("clean", "corrupt")}

    def plain(run):
        batch = pair.batches[run]
        return lambda: model(batch.input_ids, attention_mask=batch.attention_mask_if_padded)

    def caching():
        for run in ("clean", "corrupt"):
            capture(model, pair.batches[run], names, with_grad=False)

    def attribution():
        for run in ("clean", "corrupt"):
            with torch.enable_grad():
                _, acts = capture(model, pair.batches[run], names, with_grad=True)
                answer = unembed_readout(model, acts[final], pair.batches[run].layout).float()
                metric = (answer.gather(-1, answers[:, None]) - answer.gather(-1, wrong[:, None])).sum()
                torch.autograd.grad(metric, [acts[n] for n in names])

    receivers, grids = {}, {}
    for direction, (receiver, donor) in ROLES.items():
        aligned = {n: pair.aligned(a, receiver) for n, a in cached[donor].items()}
        receivers[direction] = Receiver(model, pair.batches[receiver], cached[receiver], aligned)
        grids[direction] = (pair.position_groups(receiver, last_k, appended=False)[1], pair.head_groups(receiver)[1])

    def sweep(direction):
        groups, head_groups = grids[direction]
        return lambda: exact_patching(receivers[direction], groups, head_groups, answers, wrong)

    # the naive way: every variant is a full forward pass of the receiving batch with one patching hook
    groups, head_groups = grids["clean_into_corrupt"]
    batch = pair.batches["corrupt"]
    donor = receivers["clean_into_corrupt"].donor
    n_layers, n_heads = len(model.blocks), model.cfg.n_heads
    n_variants = (n_layers + 1 + 2 * n_layers) * len(groups) + n_layers * n_heads * len(head_groups)
    sample = [(site_hook(site, layer, n_layers), groups[0]) for site in ("resid_pre", "attn_out", "mlp_out")
              for layer in (0, n_layers - 1)]

    def naive_sample():
        for name, where in sample:
            model.run_with_hooks(batch.input_ids, attention_mask=batch.attention_mask_if_padded,
                                 fwd_hooks=[(name, patch_positions(donor[name], where[None]))])

    times = median_times({
        "plain clean": plain("clean"), "plain corrupt": plain("corrupt"), "caching": caching,
        "attribution": attribution,
        "sweep clean_into_corrupt": sweep("clean_into_corrupt"),
        "sweep corrupt_into_clean": sweep("corrupt_into_clean"),
        "naive sample": naive_sample,
    }, repeats)
    unit = times["plain clean"] + times["plain corrupt"]
    per_direction_unit = {"clean_into_corrupt": times["plain corrupt"], "corrupt_into_clean": times["plain clean"]}
    naive_direction = times["naive sample"] / len(sample) * n_variants
    sweep_total = times["sweep clean_into_corrupt"] + times["sweep corrupt_into_clean"]
    # forward passes' worth of blocks the sweep computes: each variant runs the blocks from its layer on
    counted = {}
    for direction in ROLES:
        receiver = receivers[direction]
        receiver.block_rows = 0
        sweep(direction)()
        counted[direction] = receiver.block_rows / (pairs_n * n_layers)

    lengths = [len(pair.prompts[run][0].input_ids) for run in ("clean", "corrupt")]
    print(f"model {args.model}: {n_layers} layers x {n_heads} heads; {pairs_n} pair(s) of {lengths[0]}"
          f" and {lengths[1]} tokens (1 and 50 masks); grid per direction: "
          f"{n_variants} variants ({len(groups)} position groups, {len(head_groups)} head groups); "
          f"{torch.get_num_threads()} thread(s); medians of {repeats}")
    print()
    print("| what | seconds | plain forward passes |")
    print("| --- | --- | --- |")
    print(f"| plain forward, clean + corrupt (the unit) | {unit:.3f} | 1.00 |")
    print(f"| cache every patched activation, both runs | {times['caching']:.3f} | {times['caching'] / unit:.2f} |")
    print(f"| attribution patching, whole grid, both directions | {times['attribution']:.3f} | "
          f"{times['attribution'] / unit:.2f} |")
    for direction in ROLES:
        t = times[f"sweep {direction}"]
        print(f"| exact sweep {direction} (unit: plain forward of the receiving run) | {t:.3f} | "
              f"{t / per_direction_unit[direction]:.1f} (blocks computed: {counted[direction]:.1f}) |")
    print(f"| exact sweep, both directions | {sweep_total:.3f} | {sweep_total / unit:.1f} |")
    print(f"| naive sweep clean_into_corrupt, one full pass per variant (from {len(sample)} sampled) | "
          f"{naive_direction:.3f} | {naive_direction / per_direction_unit['clean_into_corrupt']:.1f} |")
    print()
    print(f"batched sweep from the patched layer: {naive_direction / times['sweep clean_into_corrupt']:.2f}x faster "
          f"than one full pass per variant")


if __name__ == "__main__":
    main()
