"""Cost of one MA-loss training step relative to one CE-only step of the same batch (target <= 2.2x).

    python benchmarks/bench_ma_loss.py [--quick] [--model PATH] [--batch-size B]

One batch of fine-tuning pairs (task-suite prompts, 10 relevant + 40 distractor examples, the answer
and end-of-text as the response, l1 != l2 terminal masks drawn from 0..63) through a LoRA-wrapped
model (r 4 on every projection). Each variant is one full optimizer step of the shared trainer loop
(forward, loss, backward, gradient clipping, AdamW on the LoRA parameters), timed alternately in one
process and compared by medians:

- CE step: the masked-diffusion loss on x1 alone (one forward pass, a plain SFT step);
- MA step: the MA loss (alpha 1, beta 1) on x1 and x2 (two forward passes);
- MA, beta 0: the CE-only ablation of the MA loss (two forward passes, no TV term).
"""

import argparse
import tempfile
from pathlib import Path

import torch

from timing import median_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--model", default="organism-llada", help="base model (default organism-llada)")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per batch (default 4)")
    args = parser.parse_args()

    from mdlm_interp import load_model
    from mdlm_interp.tasks import SFT_CATEGORIES, TASK_NAMES, sft_records, sft_tasks, write_jsonl
    from mdlm_interp.training.loop import TrainLoop, make_optimizer
    from mdlm_interp.training.ma import MAConfig, lora_model
    from mdlm_interp.training.ma_loss import ma_loss
    from mdlm_interp.training.objectives import masked_diffusion_loss
    from mdlm_interp.training.sft_data import ma_batch, read_pairs

    torch.set_num_threads(1)
    lm = load_model(args.model)
    data = Path(tempfile.mkdtemp()) / "pairs.jsonl"
    with open(data, "w") as out:
        write_jsonl(sft_records(sft_tasks(TASK_NAMES, SFT_CATEGORIES), 2, 0), out)
    eos = lm.tokenizer.convert_tokens_to_ids(lm.spec.special_tokens["eos"])
    pairs = read_pairs(data, lm.tokenizer, eos, None, lm.config.max_seq_len, 63)
    config = MAConfig(model=args.model, data=str(data), lora_r=4, lora_alpha=8.0)
    peft_model = lora_model(lm.model, config, lm.spec.lora_targets, lm.source)
    decoder = peft_model.base_model.model
    decoder.train()
    params = {name: p for name, p in peft_model.named_parameters() if p.requires_grad}
    loop = TrainLoop(params, make_optimizer(list(params.values()), 1e-4, 0.0), grad_clip=1.0)
    batch = ma_batch(pairs, 0, args.batch_size, 0, lm.mask_token_id, eos, (0.001, 1.0), (0, 63))
    offset = lm.spec.prediction_offset

    def forward(copy: int) -> torch.Tensor:
        valid = batch.valid[copy]
        return decoder(batch.inputs[copy], attention_mask=None if bool(valid.all()) else valid.long())

    def ce_step(step, micro):
        loss = masked_diffusion_loss(forward(0), batch.targets, batch.masked, batch.p,
                                     batch.masked.sum(1).clamp(min=1).float(), offset)
        return loss, {}

    def ma_step(beta):
        def micro_loss(step, micro):
            return ma_loss(forward(0), forward(1), batch.targets, batch.masked, batch.p, beta=beta,
                           prediction_offset=offset).loss, {}
        return micro_loss

    runs = {"CE step (1 input)": lambda: loop.step(0, 1e-4, ce_step),
            "MA step (2 inputs)": lambda: loop.step(0, 1e-4, ma_step(1.0)),
            "MA step, beta 0": lambda: loop.step(0, 1e-4, ma_step(0.0))}
    times = median_times(runs, 3 if args.quick else 10)
    lengths = [int(v.sum(1).float().mean()) for v in batch.valid]
    print(f"{args.model}, LoRA r 4 on {len(lm.spec.lora_targets)} projections, {args.batch_size} pairs, mean input "
          f"lengths x1 {lengths[0]} / x2 {lengths[1]} tokens, 1 thread")
    base = times["CE step (1 input)"]
    for name, seconds in times.items():
        print(f"  {name:<20} {seconds * 1e3:8.1f} ms   {seconds / base:5.2f}x the CE step")
    ratio = times["MA step (2 inputs)"] / base
    length_ratio = (lengths[0] + lengths[1]) / lengths[0]
    print(f"MA step / CE step: {ratio:.2f}x (target <= 2.2x; the two inputs hold {length_ratio:.2f}x the tokens "
          f"of x1)")


if __name__ == "__main__":
    main()
