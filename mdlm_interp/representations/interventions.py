"""Interventions any command can put into its model: an SAE spliced in at its hook (its reconstruction
replaces the activation) and a saved direction added at a site (steering), or a random direction of
the same norm (the control).

``parse_sae_spec("DIR[:SITE]")`` and ``parse_steer_spec("FILE:SITE:SCALE")`` read the command-line
forms; ``build_interventions`` loads them against a model (one-line UsageErrors for an SAE or a
direction whose width does not match its site, an unknown site, a k larger than the dictionary) and
returns an ``Interventions``: its ``fwd_hooks()`` for ``run_with_hooks`` and ``install()`` to keep
them in the model (TransformerLens permanent hooks) for every later forward pass of the command. What
is installed is part of the run settings of every store written from that model
(``subject.run_settings``), so a ``--resume`` with other interventions is refused.

Steering positions are read from the token ids of each forward pass, so they work in any command
(task prompts, decoding steps, generation): ``all`` positions, ``masks`` (every mask token, the answer
slot among them), ``answer`` (each row's first mask token: the answer slot of a task prompt) or
``readout`` (the answer slot plus the family's prediction offset: the slot itself for LLaDA, the
position before it for Dream).
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mdlm_interp.errors import UsageError

STEER_POSITIONS = ("all", "masks", "answer", "readout")
INSTALLED = "installed_interventions"  # the module attribute listing what ``Interventions.install`` put in


def parse_sae_spec(text: str) -> tuple[Path, str | None]:
    """Return (SAE folder, site or None: the hook name in its cfg.json) of "DIR[:SITE]" (DIR may also
    be the SAE's cfg.json or sae_weights.safetensors)."""
    path, site = text, None
    head, sep, tail = text.rpartition(":")
    if sep and ("hook_" in tail or "." in tail) and not Path(text).exists():
        path, site = head, tail
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise UsageError(f"--sae {text}: {path} is not an SAE folder (cfg.json + sae_weights.safetensors)")
    return path, site


def parse_steer_spec(text: str) -> tuple[Path, str, float | str]:
    """Return (directions file, site, scale) of "FILE:SITE:SCALE"; a SCALE "shift=D" stays a string
    (``build_interventions`` turns it into the scale that moves a linear probe's reading by D)."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3:
        raise UsageError(f"--steer {text}: expected FILE:SITE:SCALE, e.g. probes/directions.safetensors:"
                         "blocks.2.hook_resid_post:1.0")
    number = parts[2].removeprefix("shift=")
    try:
        float(number)
    except ValueError:
        raise UsageError(f"--steer {text}: the scale {parts[2]!r} is not a number or shift=NUMBER") from None
    scale = parts[2] if parts[2].startswith("shift=") else float(number)
    if not Path(parts[0]).is_file():
        raise UsageError(f"--steer {text}: {parts[0]} is not a file")
    return Path(parts[0]), parts[1], scale


def load_direction(path: Path, site: str) -> torch.Tensor:
    """Return the float32 direction [d] for ``site`` in a safetensors file: the tensor named by the
    site (as ``probe`` saves them), or the file's only tensor."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for a file that is not one
        raise UsageError(f"cannot read directions from {path}: {str(error).splitlines()[0]}") from None
    if site in tensors:
        return tensors[site].float().flatten()
    if len(tensors) == 1:
        return next(iter(tensors.values())).float().flatten()
    raise UsageError(f"{path} has no direction for {site}; it has {', '.join(sorted(tensors))}")


class TokenWatch:
    """Keeps the token ids [batch, pos] of the model's latest forward pass (a forward pre-hook on its
    token embedding, which every pass from the ids calls), from which steering positions are computed."""

    def __init__(self, module, mask_token_id: int | None, prediction_offset: int):
        self.mask_token_id, self.prediction_offset = mask_token_id, prediction_offset
        self.ids = None
        self.handle = module.embed.register_forward_pre_hook(self.note)

    def note(self, module, args):
        if args and torch.is_tensor(args[0]) and not args[0].is_floating_point():
            self.ids = args[0]

    def positions(self, group: str) -> torch.Tensor | None:
        """Return bool [batch, pos] of ``group`` in the latest ids (None: every position)."""
        if group == "all" or self.ids is None:
            return None
        masks = self.ids == self.mask_token_id
        if group == "masks":
            return masks
        first = masks.int().argmax(dim=1)
        where = torch.zeros_like(masks)
        rows = torch.nonzero(masks.any(dim=1)).flatten()
        columns = first[rows] + (self.prediction_offset if group == "readout" else 0)
        where[rows[columns >= 0], columns[columns >= 0]] = True
        return where


@dataclass
class Interventions:
    """The SAEs and steering directions a command puts into its model; ``described`` is the JSON list
    written to the output's provenance."""

    hooks: list = field(default_factory=list)
    described: list = field(default_factory=list)
    watch: TokenWatch | None = None

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def fwd_hooks(self) -> list:
        """Return the TransformerLens ``fwd_hooks`` [(site, hook)] of every intervention."""
        return list(self.hooks)

    def install(self, module) -> None:
        """Add the hooks to ``module`` as permanent hooks: every later forward pass runs them, and every
        store written from ``module`` has their descriptions in its settings (``installed_interventions``)."""
        for site, hook in self.hooks:
            module.add_hook(site, hook, is_permanent=True)
        setattr(module, INSTALLED, installed_interventions(module) + self.described)


def installed_interventions(module) -> list:
    """Return the descriptions (``Interventions.described``, JSON-like dicts) of every intervention
    installed in ``module``, in the order installed; [] when none is."""
    return list(getattr(module, INSTALLED, []))


def build_interventions(model, *, saes=(), steers=(), steer_positions: str = "all", steer_control: int | None = None,
                        mask_token_id: int | None = None, prediction_offset: int = 0) -> Interventions:
    """Return the ``Interventions`` of ``saes`` ((folder, site or None) pairs) and ``steers`` ((file, site,
    scale) triples) on ``model`` (a hooked decoder). ``steer_positions``: one of ``STEER_POSITIONS``;
    ``steer_control``: a seed, to add a random direction of each direction's norm instead."""
    from mdlm_interp.representations.sae_format import load_sae
    from mdlm_interp.representations.splice import site_width, splice_hooks
    from mdlm_interp.representations.steering import random_direction

    if steer_positions not in STEER_POSITIONS:
        raise UsageError(f"unknown steering positions {steer_positions!r}; choose from {', '.join(STEER_POSITIONS)}")
    result = Interventions()
    for folder, site in saes:
        sae, config = load_sae(folder)
        site = site or config.get("metadata", {}).get("hook_name") or config.get("hook_name")
        if not site:
            raise UsageError(f"--sae {folder}: its cfg.json names no hook; give the site as {folder}:SITE")
        sae.check_width(site_width(model, site), where=f"the activations at {site}")
        result.hooks += splice_hooks(site, sae)
        result.described.append({"kind": "sae", "path": str(folder), "site": site, "d_sae": sae.shape.d_sae,
                                 "architecture": sae.shape.architecture, "k": sae.shape.k})
    if steers and steer_positions != "all":
        if mask_token_id is None:
            raise UsageError(f"steering at {steer_positions} needs a model with a mask token")
        result.watch = TokenWatch(model, mask_token_id, prediction_offset)
    for path, site, scale in steers:
        direction = load_direction(path, site)
        if isinstance(scale, str):  # shift=D: D / ||w||^2 moves the probe's reading x @ w by D
            scale = float(scale.removeprefix("shift=")) / float(direction @ direction)
        width = site_width(model, site)
        if direction.numel() != width:
            raise UsageError(f"the direction in {path} has width {direction.numel()} but {site} has width {width}")
        if steer_control is not None:
            direction = random_direction(direction, steer_control)
        result.hooks.append((site, steer_hook(direction, scale, result.watch, steer_positions)))
        result.described.append({"kind": "steer", "path": str(path), "site": site, "scale": scale,
                                 "norm": float(direction.norm()), "positions": steer_positions,
                                 "control_seed": steer_control})
    return result


def steer_hook(direction: torch.Tensor, scale: float, watch: TokenWatch | None, group: str):
    """Return a hook that adds ``scale * direction`` at the positions of ``group`` in the forward pass's
    token ids (``watch``; every position when None or for "all")."""
    from mdlm_interp.representations.steering import add_direction

    def hook(activation, hook=None):
        positions = watch.positions(group) if watch is not None else None
        return add_direction(direction, scale, positions)(activation, hook)

    return hook


def loss_with_interventions(model, batch, interventions: Interventions) -> dict:
    """Return {"loss", "accuracy"} (mean cross-entropy in nats of the correct answer at the readout, and
    the argmax accuracy there) of task batch ``batch`` (``batching.PromptBatch``) without, and
    {"loss_with", "accuracy_with"} with, the interventions."""
    from mdlm_interp.representations.splice import answer_loss

    return answer_loss(model, batch, []) | answer_loss(model, batch, interventions.fwd_hooks(), "_with")


def evaluation_prompts(subject, plan, most: int = 16) -> list:
    """Return up to ``most`` ``TokenizedPrompt``s spread evenly over ``plan``'s rows (every condition
    represented when it has rows among them): the prompts an intervention's loss is reported on."""
    from mdlm_interp.plan import plan_prompts

    rows = plan.rows(plan.conditions(subject.causal))
    step = max(1, len(rows) // most)
    return plan_prompts(subject, plan, rows[::step][:most])


def write_interventions(path, report: dict) -> None:
    """Add ``report`` (the interventions and their loss) to the HDF5 output ``path`` as the JSON root
    attribute ``interventions``."""
    import json

    import h5py

    with h5py.File(path, "r+", locking=False) as file:
        file.attrs["interventions"] = json.dumps(report, sort_keys=True)
