"""Cost of exporting activations relative to a plain forward pass (target <= 1.15x), and SAE training
throughput in tokens/s.

    python benchmarks/bench_activations.py [--quick] [--model PATH] [--batch-size B] [--masks N]

One batch of task-suite prompts (10 relevant + 40 distractor examples, N masks) through the model,
one CPU thread, timed alternately in one process and compared by medians:

- forward: the model's plain forward pass (logits);
- collect: the same pass with the residual stream after every block kept at the answer slot and the
  masks (``collect_activations``, float32 on the CPU);
- export: collect plus the rows appended to an activation store (float16, committed every 256 rows),
  which is what ``mdlm-interp activations`` does per batch.

Then a top-k SAE (d_in = the model's width, d_sae 8 x d_in, k 32, batch 256) is trained on rows read
from that store's chunk-shuffled batch source, and its tokens/s printed.
"""

import argparse
import tempfile
from pathlib import Path

import torch

from timing import median_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and SAE steps")
    parser.add_argument("--model", default="organism-llada", help="model (default organism-llada)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per batch (default 8)")
    parser.add_argument("--masks", type=int, default=50, help="masks per prompt (default 50)")
    args = parser.parse_args()

    from mdlm_interp import load_model
    from mdlm_interp.batching import collate
    from mdlm_interp.models.hook_names import hook_name
    from mdlm_interp.plan import PromptPlan, plan_prompts
    from mdlm_interp.representations.activation_reader import StoreBatches
    from mdlm_interp.representations.activations import open_activation_writer
    from mdlm_interp.representations.collect import collect_activations, store_rows
    from mdlm_interp.representations.sae_train import SAETrainConfig, train_sae
    from mdlm_interp.subject import subject_from

    torch.set_num_threads(1)
    lm = load_model(args.model)
    subject = subject_from(lm)
    plan = PromptPlan(tasks=["adjective+largest"], masks=[args.masks], n=args.batch_size)
    prompts = plan_prompts(subject, plan, plan.rows(plan.conditions(False)))
    batch = collate(prompts, subject.prediction_offset)
    sites = [hook_name("resid_post", layer) for layer in range(lm.config.n_layers)]
    groups = ["answer", "masks"]
    folder = Path(tempfile.mkdtemp())
    writer = open_activation_writer(folder / "acts.h5", sites={s: lm.config.d_model for s in sites}, dtype="float16")
    keys = [str(i) for i in range(len(prompts))]

    def forward():
        with torch.no_grad():
            lm.model(batch.input_ids, attention_mask=batch.attention_mask_if_padded)

    def collect():
        collect_activations(lm.model, batch, sites, groups)

    def export():
        writer.append(**store_rows(collect_activations(lm.model, batch, sites, groups), keys, ["masks"] * len(keys)))

    times = median_times({"forward": forward, "collect": collect, "export": export}, 5 if args.quick else 15)
    writer.finish()
    width = batch.input_ids.shape[1]
    print(f"{args.model}: {len(prompts)} prompts x {width} tokens ({args.masks} masks), residual after each of "
          f"{len(sites)} blocks at the answer slot and masks, one CPU thread, median of {5 if args.quick else 15}")
    print("| variant | seconds | x forward |\n|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.4f} | {seconds / times['forward']:.2f}x |")

    d_in = lm.config.d_model
    steps = 50 if args.quick else 200
    batches = StoreBatches(folder / "acts.h5", sites[-1], 256, seed=0)
    summary = train_sae(batches, SAETrainConfig(d_sae=8 * d_in, k=32, steps=steps, batch_size=256, save_every=steps),
                        folder / "sae", hook_name=sites[-1], progress=False)
    print(f"SAE training (top-k, d_in {d_in}, d_sae {8 * d_in}, k 32, batch 256, {steps} steps, one CPU thread, "
          f"from the store): {summary['tokens_per_s']:,.0f} tokens/s")


if __name__ == "__main__":
    main()
