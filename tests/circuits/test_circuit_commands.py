"""patch and ablate as a user types them: progress bars on, bad tokens, control draws and sizes refused in one line."""

import json
import shutil

import h5py

from cli_run import run_cli

SMALL = ("--task", "adjective+largest", "--n-relevant", "2", "--n-distractor", "3", "--n", "1")


def one_line_refusal(result, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_patch_and_ablate_run_with_their_progress_bars_on(tiny_checkpoint, tmp_path):
    model = tiny_checkpoint("llada")
    patched = run_cli("patch", "--model", model, *SMALL, "--corrupt-masks", "3", "--last-k", "1",
                      "--out", tmp_path / "p.h5")
    assert patched.returncode == 0, patched.stderr
    assert "patching" in patched.stderr and "pair" in patched.stderr  # the bar names its own work
    ablated = run_cli("ablate", "--model", model, *SMALL, "--heads", "0.1", "--masks", "1,3", "--out", tmp_path / "a.h5")
    assert ablated.returncode == 0, ablated.stderr
    assert "ablating" in ablated.stderr and "run" in ablated.stderr


def test_a_wrong_token_outside_the_vocabulary_is_refused(tiny_checkpoint, tmp_path):
    result = run_cli("patch", "--model", "organism-llada", *SMALL, "--wrong-token", "zzzqqq",  # one token: <unk>
                     "--out", tmp_path / "p.h5")
    one_line_refusal(result, "not a token of this model's vocabulary")
    assert not (tmp_path / "p.h5").exists()


def test_the_control_draws_only_heads_not_chosen(tiny_checkpoint, tmp_path):
    model = tiny_checkpoint("llada")  # 2 layers x 4 heads
    out = tmp_path / "a.h5"
    result = run_cli("ablate", "--model", model, *SMALL, "--heads", "top:4", "--masks", "1,3",
                     "--control-draws", "3", "--modes", "zero", "--out", out, "--no-progress")
    assert result.returncode == 0, result.stderr
    with h5py.File(out, "r") as store:
        chosen = set(json.loads(store.attrs["heads"]))
        draws = json.loads(store.attrs["control_heads"])
    assert len(chosen) == 4 and len(draws) == 3
    for draw in draws:
        assert len(draw) == 4 and not set(draw) & chosen  # 4 of the 4 heads left: exactly the others
    for heads in ("top:8", "top:5", "0.0,0.1,0.2,0.3,1.0"):
        refused = run_cli("ablate", "--model", model, *SMALL, "--heads", heads, "--masks", "1,3",
                          "--control-draws", "2", "--out", tmp_path / "x.h5")
        one_line_refusal(refused, "among those not chosen")
    assert not (tmp_path / "x.h5").exists()


def test_sizes_beyond_the_machine_are_refused_before_allocating(tiny_checkpoint, tmp_path):
    model = tiny_checkpoint("llada")
    draws = run_cli("ablate", "--model", model, *SMALL, "--heads", "0.1", "--masks", "1,3",
                    "--control-draws", "100000000", "--out", tmp_path / "x.h5")
    one_line_refusal(draws, "--control-draws 100000000 would take about")
    for family, key in (("llada", "n_layers"), ("llama", "num_hidden_layers")):
        huge = tmp_path / f"huge-{family}"
        shutil.copytree(tiny_checkpoint(family), huge)
        config = json.loads((huge / "config.json").read_text())
        config[key] = 10**7
        (huge / "config.json").write_text(json.dumps(config))
        refused = run_cli("patch" if family == "llada" else "record", "--model", huge, *SMALL, "--out", tmp_path / "y.h5")
        one_line_refusal(refused, "10000000 layers")
        assert "more than this machine's" in refused.stderr
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "y.h5").exists()


def test_patch_on_a_vanishing_gap_prints_the_gap_and_effects_not_recovery(tmp_path):
    args = ("patch", "--model", "organism-dream", "--task", "adjective+largest", "--n", "2", "--no-progress")
    result = run_cli(*args, "--out", tmp_path / "p.h5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    gap = next(line for line in lines if "clean - corrupt gap" in line)
    assert lines.index(gap) == 1 and "logits" in gap  # the gap comes first, right after the summary line
    value = float(gap.split("):")[1].split()[0])
    assert abs(value) < 1.0
    assert "recovery is undefined" in result.stdout
    cells = [line for line in lines if line.startswith("  z ")]
    assert cells and all("logits" in line and "[" not in line for line in cells)  # effects only, no recovery interval
    # the report of the complete store again, through --resume (nothing recomputed), at --min-gap 0
    defined = run_cli(*args, "--min-gap", "0", "--resume", "--out", tmp_path / "p.h5")
    assert defined.returncode == 0 and "recovery is undefined" not in defined.stdout
    assert any(line.startswith("  z ") and "[" in line and "logits)" in line for line in defined.stdout.splitlines())
    one_line_refusal(run_cli(*args, "--min-gap", "-1", "--out", tmp_path / "r.h5"), "--min-gap")

    # Dream reads the slot's prediction at the position before it: head patching there moves the logit
    # difference, at the slot itself (which only later layers read, through attention) it barely does
    from mdlm_interp.analyses.patching import patching_cells
    from mdlm_interp.store.results import open_results

    with open_results(tmp_path / "p.h5", "patching") as store:
        assert store.attrs["head_groups"] == ["answer", "all", "readout"]
        assert store.attrs["position_groups"][-1] == "readout"
        cells = patching_cells(store, resamples=20, min_gap=0)
    heads = cells[(cells["site"] == "z") & (cells["direction"] == "clean_into_corrupt")]
    at_slot = heads[heads["position"] == "answer"]["recovery"].abs()
    at_readout = heads[heads["position"] == "readout"]["recovery"].abs()
    assert at_slot.max() < 0.01 and at_readout.max() > 0.5, (at_slot.max(), at_readout.max())
