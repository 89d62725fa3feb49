"""Steering hooks: the residual at the site moves by exactly scale * direction at the chosen positions
and nowhere else; the control is a seeded random direction of the same norm."""

import torch

from mdlm_interp.models.hook_names import hook_name
from mdlm_interp.representations.steering import label_shift, random_direction, steering_hooks


def run(model, ids, site, later, steer=()):
    seen = {}

    def keep(name):
        def hook(activation, hook=None):
            seen[name] = activation.detach().clone()
        return hook

    logits = model.run_with_hooks(ids, fwd_hooks=[*steer, (site, keep("site")), (later, keep("later"))])
    return seen["site"], seen["later"], logits


def test_steering_adds_the_direction_at_the_chosen_positions_only(tiny_model):
    model = tiny_model("llada").model
    site, later = hook_name("resid_post", 0), hook_name("resid_post", model.cfg.n_layers - 1)
    ids = torch.randint(0, model.cfg.d_vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    positions = torch.zeros(2, 9, dtype=torch.bool)
    positions[0, 3] = positions[1, 5:8] = True
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain, plain_later, plain_logits = run(model, ids, site, later)
        steered, steered_later, steered_logits = run(model, ids, site, later,
                                                     steering_hooks(site, direction, 2.5, positions))
    assert torch.equal(steered[~positions], plain[~positions])
    assert torch.equal(steered[positions], plain[positions] + 2.5 * direction)
    assert torch.allclose(steered[positions] - plain[positions], (2.5 * direction).expand(4, -1), atol=1e-5)
    assert not torch.allclose(steered_later, plain_later) and not torch.allclose(steered_logits, plain_logits)
    with torch.no_grad():
        control, _, _ = run(model, ids, site, later, steering_hooks(site, direction, 2.5, positions, control_seed=7))
    moved = control[positions] - plain[positions]
    assert torch.allclose(moved.norm(dim=-1), torch.full((4,), 2.5 * float(direction.norm())), rtol=1e-4)
    assert abs(float(torch.nn.functional.cosine_similarity(moved[0], direction, dim=0))) < 0.5
    assert torch.equal(random_direction(direction, 7), random_direction(direction, 7))
    assert not torch.equal(random_direction(direction, 7), random_direction(direction, 8))


def test_label_shift_moves_a_linear_prediction_by_delta():
    direction = torch.tensor([3.0, 4.0])
    x = torch.tensor([1.0, -2.0])
    assert torch.isclose((x + label_shift(direction, 0.7)) @ direction - x @ direction, torch.tensor(0.7))


def test_a_head_shaped_site_takes_a_flat_direction():
    activation = torch.zeros(2, 3, 4, 5)
    positions = torch.tensor([[True, False, False], [False, False, True]])
    (_, hook), = steering_hooks(hook_name("z", 1), torch.arange(20.0), 1.0, positions)
    out = hook(activation)
    assert torch.equal(out[0, 0], torch.arange(20.0).reshape(4, 5)) and torch.equal(out[1, 2], out[0, 0])
    assert out[0, 1:].abs().sum() == 0 and out[1, :2].abs().sum() == 0
