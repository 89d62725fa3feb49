"""TransformerLens habits: its tokenizer keywords and its ``test_prompt`` work on the toolkit's models."""

import re

import pytest
import torch

from mdlm_interp.errors import UsageError


def test_to_str_tokens_takes_transformer_lens_keywords(tiny_model):
    model = tiny_model("llada").model  # LLaDA prompts start with BOS
    bos = model.to_string(torch.tensor([model.tokenizer.bos_token_id]))
    plain = model.to_str_tokens("merry bell", prepend_bos=False)
    assert plain == ["merry", " bell"] or "".join(plain) == "merry bell"
    assert model.to_str_tokens("merry bell", prepend_bos=True) == [bos] + plain
    assert model.to_str_tokens("merry bell") == [bos] + plain  # the family's default
    assert model.to_str_tokens("merry bell", prepend_bos=False, padding_side="left") == plain
    assert model.to_str_tokens(["merry", "bell"], prepend_bos=False) == [model.to_str_tokens("merry", prepend_bos=False),
                                                                        model.to_str_tokens("bell", prepend_bos=False)]
    ids = model.to_tokens("merry bell", prepend_bos=False)
    assert model.to_str_tokens(ids) == plain and model.to_str_tokens(ids[0]) == plain
    with pytest.raises(UsageError, match="padding_side"):
        model.to_tokens("merry", padding_side="middle")


def test_transformer_lens_test_prompt_reports_the_rank_the_logits_give(tiny_model, capsys):
    from transformer_lens.utilities import test_prompt

    model = tiny_model("dream").model  # Dream reads position i's prediction at i - 1, as test_prompt does
    prompt, answer = "merry bell", " merry"
    test_prompt(prompt, answer, model, prepend_space_to_answer=False, top_k=3)
    printed = capsys.readouterr().out
    prompt_ids = model.to_tokens(prompt)
    answer_ids = model.to_tokens(answer, prepend_bos=False)
    with torch.no_grad():
        logits = model(torch.cat([prompt_ids, answer_ids], dim=1))
    first = logits[0, prompt_ids.shape[1] - 1]
    rank = int((first > first[answer_ids[0, 0]]).sum())
    assert f"Tokenized prompt: {model.to_str_tokens(prompt)}" in printed
    assert re.search(rf"Rank: {rank}\s", printed), printed
    top = model.to_string(first.argmax())
    assert f"Top 0th token. Logit: {first.max().item():5.2f}" in printed and f"|{top}|" in printed
