"""``ablate --positions``: mode "attention" removes the attention to the masks from every query (the default)
or from the readout position only, the answer slot for LLaDA and the position before it for Dream."""

import pytest
import torch

from mdlm_interp import load_model
from mdlm_interp.analyses.ablation import ablation_effects, ablation_figure
from mdlm_interp.batching import collate
from mdlm_interp.circuits.ablation import ablation_hooks, predict, query_positions
from mdlm_interp.store.results import open_results
from mdlm_interp.tasks import PromptConfig, sample_prompt, single_token_words, tokenize_prompt

from cli_run import run_cli

SMALL = ("--task", "adjective+largest", "--n-relevant", "2", "--n-distractor", "3")


@pytest.fixture(scope="module")
def organism():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_model(name)
        return cache[name]

    return get


def batch_for(lm, masks: int, n: int = 3):
    words = single_token_words(lm.tokenizer)
    prompts = [tokenize_prompt(sample_prompt(PromptConfig("adjective+largest", 2, 3, "random"), seed=i, words=words),
                               lm.tokenizer, mask_token_id=lm.mask_token_id, masks=masks) for i in range(n)]
    return collate(prompts, lm.spec.prediction_offset)


def capture_pattern(module, batch, layer, hooks=()):
    kept = {}
    name = f"blocks.{layer}.attn.hook_pattern"
    with torch.no_grad():
        module.run_with_hooks(batch.input_ids, attention_mask=batch.attention_mask,
                              fwd_hooks=list(hooks) + [(name, lambda act, hook: kept.setdefault("p", act.clone()))])
    return kept["p"]


def capture_resid(module, batch, layer, hooks=()):
    kept = {}
    name = f"blocks.{layer}.hook_resid_post"
    with torch.no_grad():
        module.run_with_hooks(batch.input_ids, attention_mask=batch.attention_mask,
                              fwd_hooks=list(hooks) + [(name, lambda act, hook: kept.setdefault("r", act.clone()))])
    return kept["r"]


def by_hand_at(rows_and_positions, head, keys):
    """A hook written here, not through the library: the score of ``head`` at each (row, query position) for
    the ``keys`` bool [batch, key] becomes -inf."""

    def hook(scores, hook=None):
        scores = scores.clone()
        for row, position in rows_and_positions:
            scores[row, head, position, keys[row]] = float("-inf")
        return scores

    return hook


def answer_slots(batch):
    return [(row, int(torch.nonzero(batch.layout.answer[row])[0])) for row in range(len(batch.input_ids))]


def test_readout_positions_on_organism_llada_equal_removing_at_the_answer_slot_by_hand(organism):
    lm = organism("organism-llada")
    batch = batch_for(lm, masks=6)
    slots = answer_slots(batch)
    assert [p for _, p in slots] == batch.layout.readout.tolist()  # LLaDA reads the answer at its slot
    heads = [(layer, head) for layer in range(lm.config.n_layers) for head in range(lm.config.n_heads)]
    masks = batch.layout.masks
    readout = ablation_hooks("attention", heads, masks, None, query_positions("readout", batch.layout))
    hand = [(f"blocks.{layer}.attn.hook_attn_scores", by_hand_at(slots, head, masks)) for layer, head in heads]
    last = lm.config.n_layers - 1
    final = {name: capture_resid(lm.model, batch, last, hooks)
             for name, hooks in (("readout", readout), ("hand", hand), ("none", []),
                                 ("everywhere", ablation_hooks("attention", heads, masks)))}
    torch.testing.assert_close(final["readout"], final["hand"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(predict(lm.model, batch, readout)["p_answer"],
                               predict(lm.model, batch, hand)["p_answer"])
    # an intervention that did something, and not the same as removing it from every query
    assert not torch.allclose(final["readout"], final["none"], atol=1e-4)
    assert not torch.allclose(final["readout"], final["everywhere"], atol=1e-4)


def test_readout_positions_on_organism_dream_change_only_the_row_before_the_slot(organism):
    lm = organism("organism-dream")
    batch = batch_for(lm, masks=6)
    slots = answer_slots(batch)
    readout = batch.layout.readout
    assert readout.tolist() == [p - 1 for _, p in slots]  # Dream reads the answer one position before its slot
    head = 1
    hooks = ablation_hooks("attention", [(0, head)], batch.layout.masks, None, query_positions("readout", batch.layout))
    before = capture_pattern(lm.model, batch, 0)
    after = capture_pattern(lm.model, batch, 0, hooks)
    changed = (after - before).abs().amax(-1) > 1e-7  # [batch, head, query]
    expected = torch.zeros_like(changed)
    expected[torch.arange(len(readout)), head, readout] = True
    assert torch.equal(changed, expected)
    rows = torch.arange(len(readout))
    masks = batch.layout.masks
    assert float((after[rows, head, readout] * masks).sum()) == 0.0  # no attention left on the masks there
    assert float((before[rows, head, readout] * masks).sum()) > 0  # ... where there was some
    # the answer slot's own row keeps its attention to the masks
    slot_rows = torch.tensor([p for _, p in slots])
    torch.testing.assert_close(after[rows, head, slot_rows], before[rows, head, slot_rows])


def test_positions_readout_is_stored_only_when_asked_and_named_by_table_and_figure(tiny_checkpoint, tmp_path):
    model = tiny_checkpoint("dream")
    stores = {}
    for positions in ("all", "readout"):
        out = tmp_path / f"{positions}.h5"
        extra = () if positions == "all" else ("--positions", "readout")
        result = run_cli("ablate", "--model", model, *SMALL, "--n", "1", "--heads", "0.1", "--masks", "1,4",
                         "--modes", "attention", "--control", "none", "--out", out, *extra)
        assert result.returncode == 0, result.stderr
        assert ("readout position only" in result.stdout) == (positions == "readout")
        with open_results(out, "ablation") as store:
            stores[positions] = (dict(store.attrs["settings"]), ablation_effects(store, resamples=20))
    settings_all, frame_all = stores["all"]
    settings_readout, frame_readout = stores["readout"]
    assert "positions" not in settings_all  # the default leaves the settings as they were
    assert settings_readout["positions"] == "readout"
    assert {k: v for k, v in settings_readout.items() if k != "positions"} == settings_all
    assert set(frame_all["positions"]) == {"all"} and set(frame_readout["positions"]) == {"readout"}
    title = ablation_figure(frame_readout, "tiny-dream", "0.1").figure._suptitle.get_text()
    assert "from the readout position only" in title and "tiny-dream" in title and "n = 1 per mask count" in title
    assert "every query" in ablation_figure(frame_all, "tiny-dream", "0.1").figure._suptitle.get_text()
    bad = run_cli("ablate", "--model", model, *SMALL, "--n", "1", "--heads", "0.1", "--positions", "answer",
                  "--out", tmp_path / "x.h5")
    assert bad.returncode == 2 and "--positions" in bad.stderr
    assert not (tmp_path / "x.h5").exists()
