"""Step caches, patching between trajectories and attention sinks per step, on tiny models with known answers."""

import h5py
import numpy as np
import pytest
import torch
from cli_run import run_cli

from mdlm_interp.circuits.patching import run_patching
from mdlm_interp.errors import UsageError
from mdlm_interp.plan import Condition, PromptPlan, plan_prompts
from mdlm_interp.steps.cache import record_steps
from mdlm_interp.steps.patching import EVERY_STEP, patch_trajectories
from mdlm_interp.steps.trajectory import Site, Trajectory, decode, trajectory_of
from mdlm_interp.store.results import open_results
from mdlm_interp.subject import subject_from

TASK = "adjective+largest"


def small_plan(masks=(1, 4), n=1) -> PromptPlan:
    return PromptPlan(tasks=(TASK,), masks=masks, n=n, n_relevant=2, n_distractor=3, seed=0)


def trajectory(lm, masks: int, sampler: str, **options) -> Trajectory:
    plan = small_plan(masks=(masks,))
    prompt = plan_prompts(subject_from(lm), plan, plan.rows([Condition(masks, False, "random")]))[0]
    return trajectory_of(prompt, sampler, options)


def common(lm) -> dict:
    return {"mask_token_id": lm.mask_token_id, "prediction_offset": lm.spec.prediction_offset}


def test_a_trajectory_patched_into_itself_changes_nothing(tiny_model):
    lm = tiny_model("llada")
    own = trajectory(lm, 4, "llada", steps=4)
    runs = patch_trajectories(lm.model, own, own, [Site("z", 0, 1), Site("mlp_out", 1)], position_group="all",
                              **common(lm))
    base = runs[0]
    assert base["site"] == "none" and len(runs) == 1 + 2 * 5
    for run in runs[1:]:
        np.testing.assert_allclose(run["step_logit_diff"], base["step_logit_diff"], atol=1e-5)
        assert run["final_id"] == base["final_id"] and run["settle_step"] == base["settle_step"]
        if run["patched_step"] != EVERY_STEP:  # nothing to move: the estimate is the run's own logit difference
            assert run["attribution_logit_diff"] == pytest.approx(base["step_logit_diff"][run["patched_step"]],
                                                                  abs=1e-5)


def test_the_last_residual_patched_at_every_step_decodes_the_donor_with_its_random_draws(tiny_model):
    lm = tiny_model("dream")
    receiver = trajectory(lm, 4, "dream", steps=4, alg="origin", temperature=1.0)
    ids = receiver.ids.clone()
    ids[1:receiver.answer_position] = ids[1:receiver.answer_position].roll(3)  # another prompt of the same length
    donor = Trajectory(ids, receiver.answer_position, receiver.masks, receiver.answer_id, "dream", receiver.config)
    last = Site("resid_post", lm.config.n_layers - 1)
    runs = patch_trajectories(lm.model, receiver, donor, [last], position_group="all", patch_steps=[0],
                              attribution=False, seed=3, **common(lm))
    donor_final = decode(lm.model, donor, seed=3, **common(lm))
    everywhere = runs[-1]
    assert everywhere["patched_step"] == EVERY_STEP
    # the model's output is the donor's at every step and the draws are replayed: the donor's tokens come out
    gen = slice(receiver.answer_position, receiver.answer_position + receiver.masks)
    assert everywhere["final_id"] == int(donor_final[receiver.answer_position])
    patched_final = decode(lm.model, receiver, seed=3, **common(lm))  # unpatched, for contrast
    assert runs[0]["final_id"] == int(patched_final[receiver.answer_position])
    assert torch.equal(decode(lm.model, donor, seed=3, **common(lm))[gen], donor_final[gen])  # replayable


def test_at_step_0_of_one_step_it_equals_patch(tiny_model, tmp_path):
    lm = tiny_model("llada")
    plan = small_plan(masks=(1, 4))
    clean, corrupt = Condition(1, False, "random"), Condition(4, False, "random")
    store = run_patching(lm, plan, clean, corrupt, out=tmp_path / "patch.h5", attribution=True, progress=False)
    with open_results(store, "patching") as result:
        groups = result.attrs["head_groups"]
        exact = result.array("patching/z_logit_diff")[0, 0, 0, 1, groups.index("answer")]  # clean into corrupt
        estimate = result.array("attribution/z_logit_diff")[0, 0, 0, 1, groups.index("answer")]
    receiver, donor = trajectory(lm, 4, "llada", steps=1), trajectory(lm, 1, "llada", steps=1)
    runs = patch_trajectories(lm.model, receiver, donor, [Site("z", 0, 1)], **common(lm))
    step0 = runs[1]
    assert step0["patched_step"] == 0
    assert step0["logit_diff"] == pytest.approx(float(exact), abs=1e-4)
    assert step0["attribution_logit_diff"] == pytest.approx(float(estimate), abs=1e-4)


def test_a_step_cache_holds_each_steps_activations_and_canvas(tiny_model, tmp_path):
    lm = tiny_model("llada")
    out = record_steps(lm, small_plan(masks=(4,), n=2), out=tmp_path / "steps.h5", masks=4, sampler="llada",
                       options={"steps": 2}, sites=("resid_post", "z"), layers=[1], position_group="generated",
                       cache_steps=[1], progress=False)
    with open_results(out, "steps") as store:
        rows = store.examples
        assert store.attrs["status"] == "complete" and int(store.attrs["n_rows_done"]) == 4
        assert rows["step"].tolist() == [0, 1, 0, 1] and rows["cached"].tolist() == [False, True, False, True]
        ids, decoded = store.array("canvas/ids"), store.array("canvas/decoded")
        masked, unmasked = store.array("canvas/masked"), store.array("canvas/unmasked")
        activations, positions = store.array("cache/activations"), store.array("cache/positions")
        received = store.array("attention/received")
    assert np.isnan(activations[0]).all()  # step 0 not cached
    assert (decoded[0] == ids[1]).all()  # the canvas after step 0 is step 1's input
    assert ((ids[0] != decoded[0]) == unmasked[0]).all() and (masked[0] & unmasked[0]).sum() == 2
    length = int(rows["input_length"][1])
    np.testing.assert_allclose(np.nansum(received[1], axis=-1), 1.0, atol=1e-4)  # each query's weights sum to 1
    canvas = torch.as_tensor(ids[1, :length], dtype=torch.long)[None]
    _, cache = lm.model.run_with_cache(canvas)
    wanted = positions[1][positions[1] >= 0]
    np.testing.assert_allclose(activations[1, 0, 0, :len(wanted)], cache["blocks.1.hook_resid_post"][0, wanted].numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(activations[1, 1, 0, :len(wanted)],
                               cache["blocks.1.attn.hook_z"][0, wanted].flatten(1).numpy(), atol=1e-5)


def test_a_killed_step_record_resumes_to_the_same_store(tiny_model, tmp_path):
    lm = tiny_model("llada")
    plan = small_plan(masks=(3,), n=2)
    kwargs = dict(masks=3, sampler="llada", options={"steps": 3}, progress=False)
    whole = record_steps(lm, plan, out=tmp_path / "whole.h5", **kwargs)
    killed = record_steps(lm, plan, out=tmp_path / "killed.h5", **kwargs)
    with h5py.File(killed, "r+") as file:  # as if killed in the middle of the second prompt
        file.attrs.modify("n_rows_done", np.int64(4))
        file.attrs.modify("status", "running")
        file["rows/predicted_id"][3:] = -7
    from mdlm_interp.steps.schemas import describe_steps

    assert "steps store (running, 4 of 6 rows)" in describe_steps(killed)["header"]  # readable while written
    record_steps(lm, plan, out=killed, resume=True, **kwargs)
    with open_results(whole, "steps") as a, open_results(killed, "steps") as b:
        assert b.attrs["status"] == "complete"
        for name in ("rows/predicted_id", "canvas/decoded", "cache/activations"):
            np.testing.assert_array_equal(a.array(name), b.array(name))
    with pytest.raises(UsageError, match="cannot resume"):
        record_steps(lm, plan, out=killed, resume=True, **{**kwargs, "options": {"steps": 1}})


def test_sinks_are_found_and_classed_per_step():
    from mdlm_interp.analyses.sinks import sinks_of

    received = np.full((1, 2, 6), 0.01)
    received[0, 0, 0] = 0.6  # head 0: the first token
    received[0, 1, 4] = 0.5  # head 1: a mask after the answer slot
    received[0, 1, 5] = np.nan  # padding
    masked = np.array([False, False, False, True, True, False])
    found = sinks_of(received, masked, np.zeros(6, bool), answer_position=3, threshold=0.3)
    assert [(s["head"], s["position"], s["kind"], s["relative"]) for s in found] == [(0, 0, "first token", -3),
                                                                                     (1, 4, "mask", 1)]
    assert sinks_of(received, masked, np.zeros(6, bool), answer_position=4, threshold=0.3)[1]["kind"] == "answer slot"


def test_steps_commands_write_stores_that_analyze_and_summary_read(tiny_checkpoint, tmp_path):
    model = tiny_checkpoint("llada")
    flags = ["--model", model, "--task", TASK, "--n", "1", "--n-relevant", "2", "--n-distractor", "3", "--steps", "2",
             "--no-progress"]
    done = run_cli("steps", "record", *flags, "--masks", "2", "--out", tmp_path / "s.h5")
    assert done.returncode == 0, done.stderr
    done = run_cli("steps", "patch", *flags, "--receiver-masks", "2", "--out", tmp_path / "p.h5")
    assert done.returncode == 0, done.stderr
    assert "L0.H1" in done.stdout and "every" in done.stdout
    summary = run_cli("summary", tmp_path / "s.h5")
    assert summary.returncode == 0 and "steps store (complete, 2 of 2 rows)" in summary.stdout
    report = run_cli("analyze", tmp_path / "s.h5", tmp_path / "p.h5", "--out", tmp_path / "report")
    assert report.returncode == 0, report.stderr
    settle = (tmp_path / "report" / "tables" / "settle_steps.csv").read_text().splitlines()
    assert len(settle) == 1 + 4 and settle[1].split(",")[1:3] == ["none", "-1"]  # none, steps 0 and 1, every step
    assert (tmp_path / "report" / "tables" / "sinks.csv").exists()


@pytest.mark.parametrize("flags, message", [
    (["--patch-steps", "2"], "step 2 is beyond the sampler's 2 steps"),
    (["--site", "L9.H0"], "site 'L9.H0' does not exist"),
    (["--site", "attn:L0"], "site 'attn:L0' does not exist"),
    (["--steps", None], "cannot be aligned"),
])
def test_bad_step_patching_input_is_one_line_and_writes_nothing(tiny_checkpoint, tmp_path, flags, message):
    args = ["steps", "patch", "--model", tiny_checkpoint("llada"), "--task", TASK, "--n", "1", "--n-relevant", "2",
            "--n-distractor", "3", "--receiver-masks", "3", "--steps", "2", "--out", tmp_path / "p.h5", "--no-progress"]
    if flags[-1] is None:  # steps left to the sampler: 3 for 3 masks, 1 for 1 mask
        args = args[:args.index("--steps")] + args[args.index("--steps") + 2:]
    else:
        args += flags
    done = run_cli(*args)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_cached_step_beyond_the_steps_is_refused(tiny_checkpoint, tmp_path):
    done = run_cli("steps", "record", "--model", tiny_checkpoint("llada"), "--task", TASK, "--n", "1", "--masks", "2",
                   "--steps", "2", "--cache-steps", "5", "--out", tmp_path / "s.h5")
    assert done.returncode == 2 and "step 5 is beyond the sampler's 2 steps" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_docs_carry_the_step_store_tables():
    from pathlib import Path

    from mdlm_interp.steps.schemas import STEP_PATCHING, STEPS

    docs = (Path(__file__).resolve().parents[2] / "docs" / "store.md").read_text()
    for kind in (STEPS, STEP_PATCHING):
        assert kind.markdown() in docs, f"paste {kind.name}'s markdown() into docs/store.md"


def test_trajectories_of_different_samplers_or_blocks_are_not_aligned(tiny_model):
    from mdlm_interp.steps.trajectory import check_aligned

    lm = tiny_model("llada")
    llada = trajectory(lm, 4, "llada", steps=4)
    with pytest.raises(UsageError, match="different samplers"):
        check_aligned(llada, trajectory(lm, 4, "dream", steps=4))
    with pytest.raises(UsageError, match="blocks"):
        check_aligned(llada, trajectory(lm, 4, "llada", steps=4, block_length=2))


def test_a_cached_site_or_layer_that_does_not_exist_is_refused(tiny_checkpoint, tmp_path):
    base = ["steps", "record", "--model", tiny_checkpoint("llada"), "--task", TASK, "--n", "1", "--masks", "2",
            "--out", tmp_path / "s.h5"]
    for flags, message in ((["--sites", "attn"], "site 'attn' does not exist"),
                           (["--layers", "7"], "layer 7 does not exist")):
        done = run_cli(*base, *flags)
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert list(tmp_path.iterdir()) == []


def test_steps_a_patch_leaves_unchanged_are_replayed_not_recomputed(tiny_model):
    lm = tiny_model("llada")
    own = trajectory(lm, 4, "llada", steps=4)
    passes = []
    with lm.model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: passes.append(1))]):
        patch_trajectories(lm.model, own, own, [Site("z", 0, 1)], attribution=False, **common(lm))
    # donor 4 + receiver 4; patched at one step: 1 pass each (4 variants); patched at every step: 4
    assert len(passes) == 4 + 4 + 4 * 1 + 4


def test_a_steps_store_is_readable_while_its_writer_holds_it(tmp_path):
    from mdlm_interp.steps.cache import open_steps_writer
    from mdlm_interp.steps.schemas import STEPS, describe_steps
    from mdlm_interp.store.writer import Provenance

    dims = {"layers": 1, "heads": 1, "width": 3, "sites": 1, "cached_layers": 1, "positions": 1, "d": 2}
    attrs = {"provenance": Provenance("test", "m", "llada", "float32", "f", {}, 0), "settings": {"sampler": "llada"},
             "sites": ["resid_post"], "cached_layers": [0], "position_group": "answer"}
    writer = open_steps_writer(tmp_path / "s.h5", attrs=attrs, dims=dims, n_planned=4, rows_per_prompt=2,
                               resume=False, overwrite=False, rows_per_commit=2)
    row = {f.path: "t" if f.dtype == "str" else np.zeros(f.row_shape(dims), dtype=f.numpy_dtype) for f in STEPS.data}
    try:
        writer.write(0, row)
        assert "(running, 0 of 4 rows)" in describe_steps(tmp_path / "s.h5")["header"]  # not committed yet
        writer.write(1, row)
        assert "(running, 2 of 4 rows)" in describe_steps(tmp_path / "s.h5")["header"]
    finally:
        writer.close()


def test_a_head_set_to_copy_the_first_token_is_a_first_token_sink_at_every_step(tiny_model, tmp_path):
    from mdlm_interp.analyses.sinks import sink_table

    lm = tiny_model("llada")

    def copy_first_token(pattern, hook):  # layer 0, head 1: every query attends to position 0 only
        pattern = pattern.clone()
        pattern[:, 1] = 0.0
        pattern[:, 1, :, 0] = 1.0
        return pattern

    with lm.model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", copy_first_token)]):
        out = record_steps(lm, small_plan(masks=(3,), n=1), out=tmp_path / "s.h5", masks=3, sampler="llada",
                           options={"steps": 3}, progress=False)
    sinks = sink_table([out])["sinks"]
    head = sinks[(sinks["layer"] == 0) & (sinks["head"] == 1)]
    assert head["step"].tolist() == [0, 1, 2] and set(head["position"]) == {0}
    assert set(head["kind"]) == {"first token"} and np.allclose(head["mass"], 1.0)
