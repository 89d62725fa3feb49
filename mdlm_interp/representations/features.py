"""Feature analyses: an SAE's latents read on an activation store (``analyze ACTS.h5 --sae DIR``).

- ``mask_specific_features``: latents that fire on the masks after the answer slot and not on context
  tokens (firing rates per group, their difference);
- ``answer_shift_features``: latents at the answer slot whose mean activation changes most from the
  fewest to the most masks, paired by prompt, with a bootstrap interval over prompts;
- ``top_examples``: the rows where a latent is largest, with the token there decoded;
- ``feature_ablation``: the pre-registered test: a feature set chosen on one half of the prompts (the
  latents whose answer-slot activation grows most with the masks, ``split_prompts``) is removed at the
  answer slot (x - sum_f a_f W_dec[f]: the SAE's error term stays) on the other half's prompts at the
  most masks, against random feature sets of the same size drawn from the latents alive there.
"""

import hashlib

import numpy as np
import pandas as pd
import torch

from mdlm_interp.errors import UsageError

ROWS_PER_READ = 4096


def latents(store, site: str, sae, index: np.ndarray) -> np.ndarray:
    """Return the SAE's latents float32 [len(index), d_sae] of the store's rows ``index`` (increasing ints)."""
    sae.check_width(store.check_site(site), where=f"the activations at {site}")
    parts = []
    with torch.no_grad():
        for start in range(0, len(index), ROWS_PER_READ):
            x = torch.from_numpy(store.read(site, index[start:start + ROWS_PER_READ]))
            parts.append(sae.encode(x).numpy())
    return np.concatenate(parts) if parts else np.zeros((0, sae.shape.d_sae), np.float32)


def mask_specific_features(store, site: str, sae, top: int = 20) -> pd.DataFrame:
    """Return the ``top`` latents most specific to the masks against context tokens: feature,
    rate_masks, rate_context (share of rows where it fires), mean_masks, mean_context, specificity
    (rate_masks - rate_context), sorted by specificity. UsageError unless the store has both groups."""
    rows = store.rows()
    found = {}
    for group in ("masks", "context"):
        index = np.flatnonzero(rows.position_group.to_numpy() == group)
        if not len(index):
            raise UsageError(f"{store.path} has no {group} rows: export with --positions answer,masks,context")
        found[group] = latents(store, site, sae, index)
    frame = pd.DataFrame({"feature": np.arange(sae.shape.d_sae),
                          "rate_masks": (found["masks"] > 0).mean(0), "rate_context": (found["context"] > 0).mean(0),
                          "mean_masks": found["masks"].mean(0), "mean_context": found["context"].mean(0)})
    frame["specificity"] = frame.rate_masks - frame.rate_context
    return frame.sort_values("specificity", ascending=False).head(top).reset_index(drop=True)


def paired_answer_latents(store, site: str, sae, prompts=None) -> tuple[np.ndarray, np.ndarray, list, tuple]:
    """Return (latents at the fewest masks [P, d_sae], at the most masks [P, d_sae], the P prompt keys,
    (fewest, most)) at the answer slot, for the prompts asked under both (among ``prompts`` if given)."""
    rows = store.rows()
    rows["row_index"] = np.arange(len(rows))
    answer = rows[rows.position_group == "answer"]
    if "filler" in answer:
        answer = answer[answer.filler == 0]
    if "masks" not in answer or answer.masks.nunique() < 2:
        raise UsageError(f"{store.path} needs answer rows at two mask counts or more (label masks)")
    low, high = answer.masks.min(), answer.masks.max()
    by = {m: answer[answer.masks == m].drop_duplicates("prompt_key").set_index("prompt_key") for m in (low, high)}
    wanted = set(prompts) if prompts is not None else set(answer.prompt_key)
    keys = sorted(set(by[low].index) & set(by[high].index) & wanted)
    if not keys:
        raise UsageError(f"{store.path} has no prompt at both {int(low)} and {int(high)} masks")
    found = []
    for m in (low, high):
        positions = by[m].loc[keys, "row_index"].to_numpy()
        order = np.argsort(positions)
        values = latents(store, site, sae, positions[order])
        found.append(values[np.argsort(order)])
    return found[0], found[1], keys, (int(low), int(high))


def answer_shift_features(store, site: str, sae, top: int = 20, bootstrap: int = 1000, seed: int = 0,
                          prompts=None) -> pd.DataFrame:
    """Return the ``top`` latents whose mean answer-slot activation changes most (in absolute value) from
    the fewest to the most masks, paired by prompt: feature, masks_low, masks_high, mean_low, mean_high,
    shift (high - low), shift_low, shift_high (95% percentile bootstrap over prompts), n_prompts."""
    low, high, keys, (m_low, m_high) = paired_answer_latents(store, site, sae, prompts)
    shift = (high - low).mean(0)
    chosen = np.argsort(-np.abs(shift))[:top]
    g = np.random.default_rng(seed)
    draws = np.stack([(high - low)[g.integers(0, len(keys), len(keys))][:, chosen].mean(0) for _ in range(bootstrap)])
    return pd.DataFrame({"feature": chosen, "masks_low": m_low, "masks_high": m_high, "mean_low": low.mean(0)[chosen],
                         "mean_high": high.mean(0)[chosen], "shift": shift[chosen],
                         "shift_low": np.percentile(draws, 2.5, axis=0), "shift_high": np.percentile(draws, 97.5, axis=0),
                         "n_prompts": len(keys)})


def top_examples(store, site: str, sae, features, k: int = 5, tokenizer=None) -> pd.DataFrame:
    """Return, per feature of ``features``, its ``k`` largest activations over the store: feature, rank,
    activation, prompt_key, condition, position_group, position and token (decoded when the store has
    token ids and a ``tokenizer`` is given; else empty)."""
    rows = store.rows()
    features = [int(f) for f in features]
    best = {f: (np.full(k, -np.inf), np.zeros(k, int)) for f in features}
    for start in range(0, store.n_rows, ROWS_PER_READ):
        index = np.arange(start, min(start + ROWS_PER_READ, store.n_rows))
        values = latents(store, site, sae, index)
        for f in features:
            merged = np.concatenate([best[f][0], values[:, f]])
            where = np.concatenate([best[f][1], index])
            keep = np.argsort(-merged, kind="stable")[:k]
            best[f] = (merged[keep], where[keep])
    records = []
    for f in features:
        for rank, (value, row) in enumerate(zip(*best[f])):
            if not np.isfinite(value):
                continue
            label = rows.iloc[int(row)]
            token = ""
            if tokenizer is not None and "token_id" in rows:
                token = tokenizer.decode([int(label.token_id)])
            records.append({"feature": f, "rank": rank + 1, "activation": float(value), "prompt_key": label.prompt_key,
                            "condition": label.condition, "position_group": label.position_group,
                            "position": int(label.position), "token": token})
    return pd.DataFrame(records)


def split_prompts(keys, seed: int = 0) -> tuple[list, list]:
    """Return (selection half, evaluation half) of the prompt keys ``keys``, split by a seeded hash of
    each key (so a key's half does not depend on which other keys there are)."""
    def half(key: str) -> int:
        return hashlib.sha256(f"{seed}:{key}".encode()).digest()[0] % 2

    keys = sorted(set(keys))
    return [k for k in keys if half(k) == 0], [k for k in keys if half(k) == 1]


def plan_of(store):
    """Return the ``plan.PromptPlan`` an activation store was exported from (its settings)."""
    from mdlm_interp.plan import PLAN_FIELDS, PromptPlan

    settings = store.settings
    if not all(name in settings for name in PLAN_FIELDS):
        raise UsageError(f"{store.path} does not say which prompts it holds (not written by `mdlm-interp activations`)")
    return PromptPlan(**{name: settings[name] for name in PLAN_FIELDS})


def ablation_hook(sae, features: torch.Tensor, where: torch.Tensor):
    """Return a hook that removes the latents ``features`` (long [F]) of ``sae`` from the activation
    [batch, pos, d] at the positions ``where`` [batch, pos] (bool): x - sum_f a_f(x) W_dec[f]."""

    def hook(activation, hook=None):
        flat = activation.float()
        code = sae.encode(flat)[..., features]
        removed = flat - code @ sae.W_dec[features]
        return torch.where(where.unsqueeze(-1), removed.to(activation.dtype), activation)

    return hook


def feature_ablation(lm, store, site: str, sae, features, prompts, *, masks: int, control_draws: int = 10,
                     seed: int = 0, batch_size: int = 8, alive=None) -> pd.DataFrame:
    """Return the accuracy at the readout of the store's plan prompts ``prompts`` (keys) at ``masks`` masks,
    with nothing removed ("none"), with ``features`` removed at the answer slot ("chosen", see
    ``ablation_hook``) and with ``control_draws`` random sets of as many latents drawn from ``alive``
    (default all latents) removed instead ("control", pooled): setting, n, accuracy, ci_low, ci_high
    (Wilson 95%), p_answer (mean probability of the answer)."""
    from mdlm_interp.analyses.stats import wilson_interval
    from mdlm_interp.batching import collate
    from mdlm_interp.plan import Condition, plan_prompts, prompt_key
    from mdlm_interp.subject import subject_from

    plan = plan_of(store)
    subject = subject_from(lm, chat=plan.chat)
    wanted = set(prompts)
    rows = [row for row in plan.rows([Condition(masks, False, p) for p in plan.placements])
            if prompt_key(plan.seed, plan.tasks[row.task], plan.example(row), plan.n) in wanted]
    if not rows:
        raise UsageError(f"no prompts of {store.path}'s plan to ablate at {masks} masks")
    pool = np.arange(sae.shape.d_sae) if alive is None else np.asarray(alive)
    size = len(features)
    g = np.random.default_rng(seed)
    sets = {"none": [], "chosen": [list(features)],
            "control": [list(g.choice(pool, size=min(size, len(pool)), replace=False)) for _ in range(control_draws)]}
    device = next(lm.model.parameters()).device
    correct = {name: [] for name in sets}
    p_answer = {name: [] for name in sets}
    with torch.no_grad():
        for begin in range(0, len(rows), batch_size):
            batch = collate(plan_prompts(subject, plan, rows[begin:begin + batch_size]), subject.prediction_offset,
                            device=device)
            layout = batch.layout
            for name, feature_sets in sets.items():
                for chosen in feature_sets or [None]:
                    hooks = [] if chosen is None else [(site, ablation_hook(sae, torch.as_tensor(chosen, device=device),
                                                                            layout.answer.bool()))]
                    logits = lm.model.run_with_hooks(batch.input_ids, attention_mask=batch.attention_mask_if_padded,
                                                     fwd_hooks=hooks)[layout.rows, layout.readout].float()
                    correct[name] += (logits.argmax(-1) == layout.answer_ids).tolist()
                    p_answer[name] += logits.softmax(-1)[layout.rows, layout.answer_ids].tolist()
    records = []
    for name in sets:
        hits = np.asarray(correct[name], dtype=float)
        low, high = wilson_interval(hits.sum(), len(hits))
        records.append({"setting": name, "n": len(hits), "accuracy": hits.mean(), "ci_low": float(low),
                        "ci_high": float(high), "p_answer": float(np.mean(p_answer[name])), "features": size})
    return pd.DataFrame(records)


def feature_report(store, site: str, sae, *, tokenizer=None, lm=None, top: int = 20, ablate: int = 10,
                   control_draws: int = 10, seed: int = 0) -> dict:
    """Return the feature tables of ``store`` at ``site`` read by ``sae``: mask_specific (when the store has
    masks and context rows), answer_shift (on every prompt), top_examples (of those features), and with
    ``lm`` the pre-registered ablation: the ``ablate`` latents whose answer-slot activation grows most
    from the fewest to the most masks on the selection half of the prompts (``split_prompts``), removed
    at the answer slot on the evaluation half at the most masks, against ``control_draws`` random sets
    (feature_selection, feature_ablation). Tables are DataFrames."""
    tables = {}
    rows = store.rows()
    if {"masks", "context"} <= set(rows.position_group):
        tables["mask_specific"] = mask_specific_features(store, site, sae, top)
    tables["answer_shift"] = answer_shift_features(store, site, sae, top, seed=seed)
    shown = list(tables["answer_shift"].feature[:5]) + list(tables.get("mask_specific", pd.DataFrame({"feature": []})).feature[:5])
    tables["top_examples"] = top_examples(store, site, sae, list(dict.fromkeys(shown)), tokenizer=tokenizer)
    if lm is not None and ablate > 0:
        selection, evaluation = split_prompts(rows.prompt_key, seed)
        chosen = answer_shift_features(store, site, sae, top=sae.shape.d_sae, bootstrap=1, prompts=selection)
        growing = chosen[chosen["shift"] > 0].head(ablate)
        tables["feature_selection"] = growing.drop(columns=["shift_low", "shift_high"]).assign(
            n_selection=len(selection), n_evaluation=len(evaluation))
        low, high, _, (_, most) = paired_answer_latents(store, site, sae, selection)
        alive = np.flatnonzero((high > 0).any(0))
        tables["feature_ablation"] = feature_ablation(lm, store, site, sae, list(growing.feature), evaluation,
                                                      masks=most, control_draws=control_draws, seed=seed, alive=alive)
    return tables
