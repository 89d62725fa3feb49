"""train-ma trains on the whole MA loss: the gradient reaching the logits of x1 and x2 at every step is
the gradient of alpha * L_CE + beta * L_TV (a trainer that backpropagated the CE term alone while
logging both would fail here)."""

import torch

from cli_run import run_cli
from test_ma_loss import sft_file, train_args


def test_each_step_backpropagates_alpha_ce_plus_beta_tv(tiny_checkpoint, tmp_path, monkeypatch):
    import mdlm_interp.training.ma as ma
    from mdlm_interp.training.ma_loss import ma_loss

    steps = []

    def watched(logits_1, logits_2, *args, alpha, beta, **kwargs):
        terms = ma_loss(logits_1, logits_2, *args, alpha=alpha, beta=beta, **kwargs)
        assert terms.tv.requires_grad and terms.ce.requires_grad
        inputs = (logits_1, logits_2)
        want = torch.autograd.grad(alpha * terms.ce + beta * terms.tv, inputs, retain_graph=True)
        ce_only = torch.autograd.grad(alpha * terms.ce, inputs, retain_graph=True)
        got = {}
        for index, logits in enumerate(inputs):
            logits.register_hook(lambda grad, index=index: got.__setitem__(index, grad.detach().clone()))
        steps.append((want, ce_only, got))
        return terms

    monkeypatch.setattr(ma, "ma_loss", watched)
    data = sft_file(tmp_path / "sft.jsonl")
    result = run_cli(*train_args(tiny_checkpoint("llada"), data, tmp_path / "out", "--alpha", "0.5", "--beta", "3",
                                 "--mask-ratio", "0.5:1"))
    assert result.returncode == 0, result.stderr
    assert len(steps) == 3
    for want, ce_only, got in steps:
        assert sorted(got) == [0, 1]  # backpropagated through both inputs' logits
        for index in (0, 1):
            torch.testing.assert_close(got[index], want[index], rtol=1e-5, atol=1e-9)
        # the TV term's share of the gradient is large enough for a CE-only trainer to fail the comparison
        assert max((w - c).abs().max().item() for w, c in zip(want, ce_only)) > 1e-4
