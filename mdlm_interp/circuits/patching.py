"""Activation patching and attribution patching between two mask configurations of the same prompts.

For a batch of prompt pairs (``pairs.PromptPair``: clean and corrupt run, position map) the sweep
patches, in both directions (clean activations into the corrupt run, corrupt into clean):

- ``resid_pre`` (the residual stream entering block l; layer ``n_layers`` is the final residual
  before ``ln_final``), ``attn_out`` and ``mlp_out`` of every layer over every position group
  (``PromptPair.position_groups``: all, relevant and distractor examples, query, answer slot,
  tokens after the slot when both runs have them, and each of the last k positions);
- ``z`` (``attn.hook_z``) of every layer and head, at the answer slot and at every position with a
  counterpart.

Exact patching runs many variants per forward pass (the batch is repeated once per variant and a
``hooks.interventions.patch_positions`` hook patches each copy differently) and starts at the
patched layer from the cached residual stream of the receiving run, so the layers below it are
never recomputed; only the readout position is unembedded. Attribution patching estimates every
cell of the same grid from one forward and one backward pass per run: the receiving run's logit
difference plus, summed over the cell's positions, (donor - receiver activation) . d(logit
difference)/d(activation).
"""

from dataclasses import dataclass
from functools import partial as partial_function

import numpy as np
import torch

from mdlm_interp.circuits.pairs import (PromptPair, answer_metrics, make_pair, pair_prompts, run_to_readout,
                                       top_wrong_ids)
from mdlm_interp.circuits.schemas import PATCHING, SITES
from mdlm_interp.errors import UsageError
from mdlm_interp.hooks.interventions import patch_positions
from mdlm_interp.models.hook_names import hook_name
from mdlm_interp.plan import RECORDS_NOTHING, Condition, PromptPlan
from mdlm_interp.record import tqdm_or_none
from mdlm_interp.sharding import Shard
from mdlm_interp.store.partial import check_result_output, open_partial, resumes_complete_store
from mdlm_interp.store.results import write_results
from mdlm_interp.subject import provenance, run_settings, subject_from

DIRECTIONS = ("clean_into_corrupt", "corrupt_into_clean")
ROLES = {"clean_into_corrupt": ("corrupt", "clean"), "corrupt_into_clean": ("clean", "corrupt")}  # receiver, donor
RESIDUAL_SITES = ("resid_pre", "attn_out", "mlp_out")


def site_hook(site: str, layer: int, n_layers: int) -> str:
    """Return the hook name of ``site`` at ``layer`` (resid_pre at ``n_layers``: the last block's resid_post)."""
    if site == "resid_pre" and layer == n_layers:
        return hook_name("resid_post", n_layers - 1)
    return hook_name(site, layer)


def site_layers(site: str, n_layers: int) -> range:
    """Return the layers a site is patched at: 0 .. n_layers for resid_pre, 0 .. n_layers - 1 otherwise."""
    return range(n_layers + 1 if site == "resid_pre" else n_layers)


def all_site_hooks(n_layers: int) -> list[str]:
    """Return every hook name the sweep reads, once each."""
    return [site_hook(site, layer, n_layers) for site in SITES for layer in site_layers(site, n_layers)]


def capture(model, batch, names: list[str], with_grad: bool) -> tuple[torch.Tensor, dict]:
    """Run ``batch`` through ``model``, keeping the activations at ``names``; return (logits, {name: activation}),
    the logits unembedded at the readout only where the model can (``pairs.run_to_readout``; read them with
    ``pairs.readout_logits``).

    With ``with_grad`` the activations stay in an autograd graph that starts at the embeddings (the
    parameters are not part of it), ready for ``torch.autograd.grad``.
    """
    kept = {}

    def keep(activation, hook):
        kept[hook.name] = activation

    def leaf(embeddings, hook):
        return embeddings.detach().requires_grad_(True)

    hooks = [(name, keep) for name in names] + ([(hook_name("embed"), leaf)] if with_grad else [])
    with torch.set_grad_enabled(with_grad):
        logits = run_to_readout(model, batch, hooks)
    return logits, kept


def unembed_readout(model, final_residual: torch.Tensor, layout) -> torch.Tensor:
    """Return the logits that predict the answer slot, [..., batch, vocab], from the final residual stream
    [..., batch, pos, d_model] (before ``ln_final``): only the readout positions are unembedded."""
    return model.final_logits(final_residual[..., layout.rows, layout.readout, :])


@dataclass
class Variant:
    """One patched variant: the ``site`` patched where ``where`` is True ([batch, pos], or [batch, pos,
    head] for z), its result stored at ``index`` of the site's grid."""

    site: str
    index: tuple
    where: torch.Tensor


class Receiver:
    """The receiving run of one direction: its batch, its cached activations, and the donor's activations
    moved to its positions; runs patched variants from any layer. ``block_rows`` counts the (sequence,
    block) pairs computed so far: divided by batch x layers, the forward passes' worth of work done."""

    def __init__(self, model, batch, activations: dict, donor_aligned: dict):
        self.model = model
        self.batch = batch
        self.activations = activations
        self.donor = donor_aligned
        self.n_layers = model.cfg.n_layers
        self.block_rows = 0

    def changes(self, variant: Variant, layer: int) -> bool:
        """Whether ``variant`` at ``layer`` changes anything: the donor differs from the receiver somewhere
        it patches (a variant that changes nothing gives the receiver's own result and need not run)."""
        name = site_hook(variant.site, layer, self.n_layers)
        differs = (self.donor[name] != self.activations[name]).any(-1)  # [batch, pos] or [batch, pos, head]
        return bool((differs & variant.where).any())

    def own_readout(self) -> torch.Tensor:
        """Return the receiving run's own readout logits [batch, vocab], computed as ``run`` computes them."""
        final = self.activations[site_hook("resid_pre", self.n_layers, self.n_layers)]
        return unembed_readout(self.model, final, self.batch.layout)

    @torch.no_grad()
    def run(self, layer: int, variants: list[Variant]) -> torch.Tensor:
        """Return the readout logits [variant, batch, vocab] of ``variants`` of sites at ``layer``, in one
        partial forward pass from block ``layer`` (``start_at_layer``; resid_pre variants patch its input;
        attn_out, mlp_out and z variants patch inside it through hooks)."""
        n = len(variants)

        def stacked(site: str, shape: tuple) -> torch.Tensor | None:
            if not any(v.site == site for v in variants):
                return None
            where = torch.zeros((n, *shape), dtype=torch.bool, device=self.batch.input_ids.device)
            for i, variant in enumerate(variants):
                if variant.site == site:
                    where[i] = variant.where
            return where

        size, width = self.batch.input_ids.shape
        resid = site_hook("resid_pre", layer, self.n_layers)
        x = self.activations[resid][None].expand(n, -1, -1, -1)
        resid_where = stacked("resid_pre", (size, width))
        if resid_where is not None:
            x = torch.where(resid_where[..., None], self.donor[resid], x)
        x = x.flatten(0, 1)
        hooks = []
        for site in ("attn_out", "mlp_out", "z"):
            shape = (size, width, self.model.cfg.n_heads) if site == "z" else (size, width)
            where = stacked(site, shape)
            if where is not None:
                name = site_hook(site, layer, self.n_layers)
                hooks.append((name, patch_positions(self.donor[name], where)))

        mask = self.batch.attention_mask_if_padded
        mask = None if mask is None else mask.repeat(n, 1)
        self.block_rows += n * size * (self.n_layers - layer)
        with self.model.hooks(fwd_hooks=hooks):
            x = self.model(x, attention_mask=mask, start_at_layer=layer, stop_at_layer=self.n_layers)
        return unembed_readout(self.model, x.unflatten(0, (n, size)), self.batch.layout)


def exact_patching(receiver: Receiver, groups: torch.Tensor, head_groups: torch.Tensor, answer_ids, wrong_ids,
                   max_rows: int = 512) -> dict:
    """Return exact patching results of one direction: {site: {"logit_diff", "p_answer"}} with arrays
    [batch, layers(+1 for resid_pre), group] for the residual sites and [batch, layers, head, head group]
    for z. ``groups`` bool [group, batch, pos]; ``head_groups`` bool [head group, batch, pos]. At most
    ``max_rows`` rows (variants x batch) go through one forward pass; variants that patch nothing
    different (e.g. the same tokens' embeddings) take the receiver's own result without a pass."""
    n_layers, n_heads = receiver.n_layers, receiver.model.cfg.n_heads
    size = receiver.batch.input_ids.shape[0]
    shapes = {site: (size, n_layers + 1, len(groups)) if site == "resid_pre" else (size, n_layers, len(groups))
              for site in RESIDUAL_SITES}
    shapes["z"] = (size, n_layers, n_heads, len(head_groups))
    out = {site: {m: torch.full(shape, float("nan"), dtype=torch.float64) for m in ("logit_diff", "p_answer")}
           for site, shape in shapes.items()}
    per_pass = max(1, max_rows // size)
    unchanged = answer_metrics(receiver.own_readout(), answer_ids, wrong_ids)

    def store(variant, metrics, i=None):
        for name in ("logit_diff", "p_answer"):
            value = metrics[name] if i is None else metrics[name][i]
            out[variant.site][name][(slice(None), *variant.index)] = value.cpu()

    for layer in range(n_layers + 1):
        variants = [Variant("resid_pre", (layer, g), where) for g, where in enumerate(groups)]
        if layer < n_layers:
            for site in ("attn_out", "mlp_out"):
                variants += [Variant(site, (layer, g), where) for g, where in enumerate(groups)]
            for head in range(n_heads):
                for k, where in enumerate(head_groups):
                    per_head = torch.zeros((*where.shape, n_heads), dtype=torch.bool, device=where.device)
                    per_head[..., head] = where
                    variants.append(Variant("z", (layer, head, k), per_head))
        moving = []
        for variant in variants:
            if receiver.changes(variant, layer):
                moving.append(variant)
            else:
                store(variant, unchanged)
        for start in range(0, len(moving), per_pass):
            chunk = moving[start:start + per_pass]
            metrics = answer_metrics(receiver.run(layer, chunk), answer_ids, wrong_ids)
            for i, variant in enumerate(chunk):
                store(variant, metrics, i)
    return out


def attribution_patching(receiver: Receiver, gradients: dict, receiver_logit_diff: torch.Tensor,
                         groups: torch.Tensor, head_groups: torch.Tensor) -> dict:
    """Return attribution patching's estimates of the patched logit difference, {site: array} with the
    shapes of ``exact_patching``: receiver logit difference + sum over the cell's positions of
    (donor - receiver activation) . gradient (``gradients``: hook name -> d(summed logit difference)/d(activation))."""
    n_layers = receiver.n_layers
    out = {}
    base = receiver_logit_diff.detach().double().cpu()
    for site in SITES:
        cells = []
        for layer in site_layers(site, n_layers):
            name = site_hook(site, layer, n_layers)
            change = ((receiver.donor[name] - receiver.activations[name]).double() * gradients[name].double()).sum(-1)
            if site == "z":  # change [batch, pos, head]
                cells.append(torch.einsum("kbt,bth->bhk", head_groups.double(), change))
            else:
                cells.append(torch.einsum("gbt,bt->bg", groups.double(), change))
        stacked = torch.stack(cells, dim=1).cpu()
        out[site] = base.reshape(-1, *([1] * (stacked.dim() - 1))) + stacked
    return out


def patch_batch(model, pair: PromptPair, *, last_k: int = 5, wrong_id: int | None = None, attribution: bool = True,
                max_rows: int = 512) -> tuple[dict, list, list]:
    """Run clean and corrupt, then exact (and attribution) patching in both directions, for one batch of
    pairs; return (columns, position group names, head group names), the columns being the store
    columns of these rows (``circuits.schemas.PATCHING`` paths but /pairs example and task -> numpy arrays).

    ``wrong_id``: the wrong token of the logit difference for every pair (default: each pair's corrupt
    run's most probable token other than the answer). ``last_k``: how many single positions before the
    answer slot are position groups.
    """
    n_layers = model.cfg.n_layers
    names = all_site_hooks(n_layers)
    final = site_hook("resid_pre", n_layers, n_layers)
    runs = {}
    for run in ("clean", "corrupt"):  # the metric is read from the final residual, as in the patched runs
        _, activations = capture(model, pair.batches[run], names, with_grad=attribution)
        runs[run] = (unembed_readout(model, activations[final], pair.batches[run].layout), activations)
    answer_ids = pair.answer_ids()
    wrong_ids = (top_wrong_ids(runs["corrupt"][0].detach(), answer_ids) if wrong_id is None
                 else torch.full_like(answer_ids, int(wrong_id)))
    metrics = {run: answer_metrics(runs[run][0], answer_ids, wrong_ids) for run in runs}
    gradients = {}
    for run, (_, activations) in runs.items():
        if attribution:
            grads = torch.autograd.grad(metrics[run]["logit_diff"].sum(), [activations[n] for n in names])
            gradients[run] = dict(zip(names, grads))
        runs[run] = (None, {n: a.detach() for n, a in activations.items()})
    appended = bool((pair.batches["clean"].layout.masks.any(-1) & pair.batches["corrupt"].layout.masks.any(-1)).all())

    columns = {}
    for run in ("clean", "corrupt"):
        for name, value in metrics[run].items():
            columns[f"pairs/{run}_{name}"] = value.detach().cpu().numpy()
        columns[f"pairs/{run}_length"] = pair.batches[run].attention_mask.sum(-1).cpu().numpy()
    columns["pairs/answer_id"] = answer_ids.cpu().numpy()
    columns["pairs/wrong_id"] = wrong_ids.cpu().numpy()
    columns["pairs/answer_position"] = np.array([tp.answer_position for tp in pair.prompts["clean"]])

    exact, estimated = {}, {}
    for direction in DIRECTIONS:
        receiver_run, donor_run = ROLES[direction]
        receiver = Receiver(model, pair.batches[receiver_run], runs[receiver_run][1],
                            {n: pair.aligned(a, receiver_run) for n, a in runs[donor_run][1].items()})
        group_names, groups = pair.position_groups(receiver_run, last_k, appended)
        head_group_names, head_groups = pair.head_groups(receiver_run)
        exact[direction] = exact_patching(receiver, groups, head_groups, answer_ids, wrong_ids, max_rows)
        if attribution:
            estimated[direction] = attribution_patching(receiver, gradients[receiver_run],
                                                        metrics[receiver_run]["logit_diff"], groups, head_groups)
    for site in SITES:
        for name in ("logit_diff", "p_answer"):
            columns[f"patching/{site}_{name}"] = torch.stack([exact[d][site][name] for d in DIRECTIONS], 1).numpy()
        columns[f"attribution/{site}_logit_diff"] = (
            torch.stack([estimated[d][site] for d in DIRECTIONS], 1).numpy() if attribution
            else np.full_like(columns[f"patching/{site}_logit_diff"], np.nan))
    return columns, group_names, head_group_names


def patch_pairs(model, pairs: dict, prediction_offset: int, *, batch_size: int = 8, last_k: int = 5,
                wrong_id: int | None = None, attribution: bool = True, max_rows: int = 512, progress: bool = False,
                device="cpu", partial=None, batches=None) -> dict:
    """Patch the pairs of ``pairs`` (from ``pair_prompts``) in batches of ``batch_size``; return {batch index:
    (columns, names)}, the columns holding that batch's rows of every patching store dataset but /pairs
    example and task, names its {"position_groups": [...], "head_groups": [...]}. ``batches``: the batch
    indices to do (default all; a rank's block when sharded). ``partial`` (``store.partial.PartialResults``):
    take the batches committed there, commit each batch computed."""
    n = len(pairs["clean"])
    batches = range(-(-n // batch_size)) if batches is None else batches
    bar = tqdm_or_none(progress, total=sum(min(batch_size, n - i * batch_size) for i in batches), desc="patching",
                       unit="pair")
    done = {}
    for index in batches:
        rows = slice(index * batch_size, min((index + 1) * batch_size, n))
        done[index] = partial.load(index) if partial is not None else None
        if done[index] is None:
            pair = make_pair(pairs["clean"][rows], pairs["corrupt"][rows], prediction_offset, device=device)
            part, group_names, head_group_names = patch_batch(model, pair, last_k=last_k, wrong_id=wrong_id,
                                                             attribution=attribution, max_rows=max_rows)
            done[index] = (part, {"position_groups": group_names, "head_groups": head_group_names})
            if partial is not None:
                partial.commit(index, *done[index])
        if bar is not None:
            bar.update(rows.stop - rows.start)
    if bar is not None:
        bar.close()
    return done


def patching_columns(done: dict, pairs: dict) -> tuple[dict, list, list]:
    """Return (columns, position group names, head group names) of a patching store from every batch of
    ``patch_pairs`` (``done``) and the ``pairs`` they patched: the batches' columns concatenated in order,
    plus /pairs example and task."""
    parts = [done[index] for index in sorted(done)]
    columns = {path: np.concatenate([part[path] for part, _ in parts]) for path in parts[0][0]}
    columns["pairs/example"] = np.asarray(pairs["example"])
    columns["pairs/task"] = list(pairs["task"])
    names = parts[-1][1]
    return columns, names["position_groups"], names["head_groups"]


def run_patching(lm, config: PromptPlan, clean: Condition, corrupt: Condition, *, out, batch_size: int = 8,
                 last_k: int = 5, wrong_token: str | None = None, attribution: bool = True, max_rows: int = 512,
                 overwrite: bool = False, resume: bool = False, progress: bool = True,
                 command_line: str | None = None, shard: Shard | None = None):
    """Patch ``config``'s prompts between the ``clean`` and ``corrupt`` conditions and write a patching
    store to ``out``; return its path.

    ``lm``: a loaded diffusion model (``load_model``). ``wrong_token``: a text that is one token, used as
    the wrong token of every logit difference (default: each corrupt run's top wrong token). Bad input
    raises ``UsageError`` before any work. Each completed batch is committed beside ``out``
    (``store.partial``); ``resume`` continues a killed run with the same settings and batch size (and
    leaves a complete store with them as it is). ``shard`` (``sharding.Shard``, under torchrun): this rank
    patches its block of batches (committed beside ``out``) and the leader alone checks ``out`` and writes
    the store, the same store as one process writes.
    """
    shard = shard or Shard()

    out = shard.step(lambda: check_result_output(out, resume=resume, overwrite=overwrite), leader_only=True)
    if batch_size < 1 or last_k < 0 or max_rows < 1:
        raise UsageError("batch size and max rows must be at least 1, last-k at least 0")
    subject = subject_from(lm)
    wrong_id = None
    if wrong_token is not None:
        ids = lm.tokenizer.encode(wrong_token, add_special_tokens=False)
        if len(ids) != 1:
            raise UsageError(f"the wrong token {wrong_token!r} is {len(ids)} tokens; it must be exactly one")
        if ids[0] == lm.tokenizer.unk_token_id or lm.tokenizer.decode(ids) != wrong_token:
            raise UsageError(f"the wrong token {wrong_token!r} is not a token of this model's vocabulary (it reads "
                             f"back as {lm.tokenizer.decode(ids)!r}); it must be exactly one token")
        wrong_id = ids[0]
    pairs = pair_prompts(subject, config, clean, corrupt)
    if last_k > min(tp.answer_position for tp in pairs["clean"]):
        raise UsageError(f"last-k {last_k} is longer than the shortest prompt")
    device = next(lm.model.parameters()).device
    facts = subject.facts()
    settings = run_settings(subject, config, facts, **RECORDS_NOTHING, clean=vars(clean), corrupt=vars(corrupt),
                            last_k=last_k, wrong_token=wrong_token, attribution=attribution)
    if shard.step(lambda: resumes_complete_store(out, settings, PATCHING.name, resume=resume), leader_only=True):
        return out
    key = {"settings": settings, "batch_size": batch_size,
           "rows": [[str(task), int(example)] for task, example in zip(pairs["task"], pairs["example"])]}
    partial = shard.step(lambda: open_partial(out, key, resume=resume), leader_only=True)
    patch = partial_function(patch_pairs, lm.model, pairs, subject.prediction_offset, batch_size=batch_size,
                             last_k=last_k, wrong_id=wrong_id, attribution=attribution, max_rows=max_rows,
                             device=device, partial=partial)
    n_batches = -(-len(pairs["clean"]) // batch_size)
    done = shard.step(lambda: patch(progress=progress and shard.leader, batches=shard.block(n_batches)))

    def write():
        done.update(patch(batches=[index for index in range(n_batches) if index not in done]))  # other ranks'
        columns, group_names, head_group_names = patching_columns(done, pairs)
        dims = {"directions": len(DIRECTIONS), "layers": subject.n_layers, "heads": subject.n_heads,
                "groups": len(group_names), "head_groups": len(head_group_names)}
        attrs = {"directions": list(DIRECTIONS), "position_groups": group_names, "head_groups": head_group_names}
        written = write_results(out, PATCHING, columns, dims=dims,
                                provenance=provenance(subject, config, facts, command_line), settings=settings,
                                attrs=attrs, overwrite=overwrite or resume)
        partial.remove()
        return written

    return shard.step(write, leader_only=True)
