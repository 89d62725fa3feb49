"""Step caches and step attribution against a plain decode, measured side by side.

    python benchmarks/bench_steps.py [--quick]

On one task prompt (10 relevant + 40 distractor examples) with 8 masks
decoded in 8 steps, on organism-llada and organism-dream, the variants alternate in one process and
their medians are compared:

- plain decode: ``steps.trajectory.decode`` with no hook (one forward pass per step plus the sampler);
- step cache: the same decode writing a steps store row per step with every layer's residual
  (resid_post) at the answer slot (``steps.cache.record_prompt``, no attention) -- target <= 1.1x;
- step attribution: the receiver's decode with gradients (``steps.patching.GradientStep`` on one head's
  z): one forward and one backward pass per step, in forward equivalents per step (its time / the plain
  decode's, each step of which is one forward pass) -- target <= 3;
- exact step patching of L0.H1 from the 1-mask trajectory, every step in turn: forward passes per
  variant (counted; a decode without replay would take one per step).
"""

import sys
import tempfile
from pathlib import Path

import torch
from timing import median_times


def measure(name: str, repeats: int) -> None:
    """Print the ratios for organism ``name``."""
    from mdlm_interp import load_model
    from mdlm_interp.plan import Condition, PromptPlan, plan_prompts
    from mdlm_interp.steps.cache import StepsWriter, open_steps_writer, record_prompt
    from mdlm_interp.steps.patching import AnswerWatch, GradientStep, patch_trajectories
    from mdlm_interp.steps.trajectory import Site, StepClock, decode, trajectory_of
    from mdlm_interp.subject import provenance, subject_from

    lm = load_model(name)
    subject = subject_from(lm)
    plan = PromptPlan(tasks=("adjective+largest",), masks=(8,), n=1)
    prompt = plan_prompts(subject, plan, plan.rows([Condition(8, False, "random")]))[0]
    trajectory = trajectory_of(prompt, lm.spec.sampler, {"steps": 8})
    common = dict(mask_token_id=lm.mask_token_id, prediction_offset=lm.spec.prediction_offset)
    layers = list(range(lm.config.n_layers))
    folder = Path(tempfile.mkdtemp())
    dims = {"layers": lm.config.n_layers, "heads": lm.config.n_heads, "width": len(trajectory.ids), "sites": 1,
            "cached_layers": len(layers), "positions": 1, "d": lm.config.d_model}
    attrs = {"provenance": provenance(subject, plan, subject.facts()), "settings": {}, "sites": ["resid_post"],
             "cached_layers": layers, "position_group": "answer"}
    writer: StepsWriter = open_steps_writer(folder / "bench.h5", attrs=attrs, dims=dims, n_planned=trajectory.steps,
                                            rows_per_prompt=trajectory.steps, resume=False, overwrite=False,
                                            rows_per_commit=trajectory.steps)

    def plain():
        decode(lm.model, trajectory, **common)

    def cache():
        record_prompt(lm, trajectory, writer, 0, width=len(trajectory.ids), n_positions=1, sites=["resid_post"],
                      layers=layers, position_group="answer", cache_steps=set(range(trajectory.steps)),
                      attention=False, punctuation=set(), example=0, task="adjective+largest", seed=0)

    def attribution():
        clock = StepClock()
        watch = AnswerWatch(trajectory, **common)
        step = GradientStep(lm.model, [Site("z", 0, 1).hook], watch, clock)
        decode(step, trajectory, clock=clock, fwd_hooks=step.fwd_hooks(), on_step=watch, **common)

    times = median_times({"plain": plain, "cache": cache, "attribution": attribution}, repeats)
    writer.close()
    donor = trajectory_of(plan_prompts(subject, plan, plan.rows([Condition(1, False, "random")]))[0], lm.spec.sampler,
                          {"steps": 8})
    passes = []
    with lm.model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: passes.append(1))]):
        runs = patch_trajectories(lm.model, trajectory, donor, [Site("z", 0, 1)], attribution=False, **common)
    single = len(runs) - 2  # the unpatched run and the run patched at every step left out
    exact = (len(passes) - 3 * trajectory.steps) / single  # donor, receiver and every-step runs take a pass per step
    print(f"| {name} | {len(trajectory.ids)} | {trajectory.steps} | {times['plain'] / trajectory.steps * 1e3:.1f} | "
          f"{times['cache'] / times['plain']:.2f}x | {times['attribution'] / times['plain']:.2f} | {exact:.2f} |")


def main() -> None:
    torch.set_num_threads(1)
    repeats = 3 if "--quick" in sys.argv else 9
    print("| model | canvas | steps | plain decode ms/step | step cache (every layer's resid at the slot) / plain "
          "| step attribution, forward equivalents per step | exact patch of L0.H1 from 1 mask, forward passes "
          "per (step) variant |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in ("organism-llada", "organism-dream"):
        measure(name, repeats)


if __name__ == "__main__":
    main()
