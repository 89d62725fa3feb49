"""Iterative decoding cost per step relative to one plain forward pass, with and without per-step recording.

    python benchmarks/bench_decoding.py [--quick] [--model PATH] [--masks N]

On one batch of task prompts (10 relevant + 40 distractor examples, N masks at the answer slot; the
canvas ``record --decode`` decodes), timed in one process with the variants alternating and their
medians compared (the machine is shared and noisy):

- plain: one ``model(ids, attention_mask)`` forward pass under no_grad;
- LLaDA / Dream sampler: ``decoding.llada_unmask`` / ``dream_unmask`` (maskgit_plus) over the N masks
  in N steps, divided by N: the cost of one step (a forward pass plus choosing what to unmask);
- with per-step recording: ``record.decode_batch``, what ``record --decode`` runs (the same decode plus
  hooks on every layer that rebuild the answer readout's attention row to the masks left, and the
  answer slot's statistics each step), divided by N.

Models: the shipped organism-llada and organism-dream, and a random LLaDA of the medium preset (or
``--model``).
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from timing import median_times


def measure(lm, label: str, masks: int, batch_size: int, repeats: int) -> None:
    """Print per-step decoding costs of ``lm`` relative to a plain forward pass."""
    from mdlm_interp.batching import collate
    from mdlm_interp.decoding import DecodeConfig
    from mdlm_interp.plan import Condition
    from mdlm_interp.record import RecordConfig, decode_batch, subject_from
    from mdlm_interp.tasks import PromptConfig, sample_prompt, single_token_words, tokenize_prompt

    words = single_token_words(lm.tokenizer)
    prompts = [tokenize_prompt(sample_prompt(PromptConfig("adjective+largest"), seed=i, words=words), lm.tokenizer,
                               mask_token_id=lm.mask_token_id, masks=masks) for i in range(batch_size)]
    batch = collate(prompts, lm.spec.prediction_offset)
    ids, attention_mask = batch.input_ids, batch.attention_mask_if_padded
    start = batch.layout.appended.float().argmax(-1)
    subject = subject_from(lm)
    config = RecordConfig(masks=[masks], record=(), decode=DecodeConfig(lm.spec.sampler))

    def sampler():
        config.decode.run(lm.model, ids, mask_token_id=lm.mask_token_id, prediction_offset=lm.spec.prediction_offset,
                          gen_start=start, gen_length=masks, attention_mask=attention_mask)

    runs = {
        "plain forward": lambda: torch.no_grad()(lm.model)(ids, attention_mask),
        f"{lm.spec.sampler} sampler, per step": sampler,
        "  with per-step recording": lambda: decode_batch(subject, batch, config, [Condition.of(tp) for tp in prompts]),
    }
    medians = median_times(runs, repeats)
    per_step = {name: seconds / (1 if name == "plain forward" else masks) for name, seconds in medians.items()}
    cfg = lm.config
    print(f"{label}: {cfg.n_layers} layers, d_model {cfg.d_model}, "
          f"{sum(p.numel() for p in lm.model.parameters()) / 1e6:.2f}M parameters; batch {ids.shape[0]} x "
          f"{ids.shape[1]} tokens, {masks} masks decoded in {masks} steps, {torch.get_num_threads()} threads")
    plain = per_step["plain forward"]
    sampler_step = per_step[f"{lm.spec.sampler} sampler, per step"]
    for name, seconds in per_step.items():
        print(f"  {name:<34} {seconds * 1e3:8.1f} ms   {seconds / plain:.2f}x plain forward")
    print(f"  recording / decoding alone: {per_step['  with per-step recording'] / sampler_step:.3f}x (target <= 1.10)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 10 masks")
    parser.add_argument("--model", default=None, help="also measure this checkpoint instead of a random medium LLaDA")
    parser.add_argument("--masks", type=int, default=None, help="masks decoded, one step each (default 20; quick 10)")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    from mdlm_interp import load_model
    from mdlm_interp.models.random_checkpoint import write_random_checkpoint
    from mdlm_interp.tasks import tokenizer_corpus

    masks = args.masks or (10 if args.quick else 20)
    repeats = 3 if args.quick else 7
    for name in ("organism-llada", "organism-dream"):
        measure(load_model(name), name, masks, args.batch_size, repeats)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or write_random_checkpoint("llada", Path(tmp) / "medium", tokenizer_corpus(), preset="medium")
        measure(load_model(path), args.model or "random llada (medium preset)", masks, args.batch_size, repeats)


if __name__ == "__main__":
    sys.exit(main())
