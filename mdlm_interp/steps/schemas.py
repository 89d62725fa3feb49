"""The schemas of the step experiments' stores, as data: step caches ("steps") and step patching ("step_patching").

Registered with ``store.results.register_result_kind`` when this module is imported (``import
mdlm_interp`` does), so ``summary``, ``analyze`` and ``store.kinds`` know them without importing torch.
A steps store is written step by step (``steps.cache``): its datasets are created at their planned
length, ``n_rows_done`` says how many rows are written (readers ignore the rest) and ``status`` is
"running" until every planned row is, then "complete".
"""

from mdlm_interp.store.results import StoreKind, open_results, register_result_kind
from mdlm_interp.store.schema import Attr, Field


def _f(group, name, dtype, shape, doc):
    return Field(group, name, dtype, ("rows",) + tuple(shape), doc)


STEPS = StoreKind(
    name="steps",
    rows="(prompt, denoising step): every step of every prompt's decode, in plan order then step order",
    groups=("rows", "canvas", "attention", "cache"),
    dims={"layers": "transformer blocks of the model", "heads": "attention (query) heads per block",
          "width": "positions of the longest canvas (shorter ones padded: ids -1, attention NaN)",
          "sites": "hook kinds cached (root attribute sites)", "cached_layers": "layers cached (attribute "
          "cached_layers)", "positions": "positions cached per row (cache/positions; -1 pads)",
          "d": "width of a cached activation (d_model; a head's z flattened over heads x d_head)"},
    data=(
        _f("rows", "example", "int64", (), "example index (task index * n + i): the same prompt in every store"),
        _f("rows", "task", "str", (), "task name"),
        _f("rows", "masks", "int32", (), "n masks: the answer slot and the n - 1 masks after it, all decoded"),
        _f("rows", "step", "int32", (), "denoising step (0-based)"),
        _f("rows", "block", "int32", (), "LLaDA's block of the step (0 for Dream)"),
        _f("rows", "steps", "int32", (), "steps of the decode"),
        _f("rows", "input_length", "int32", (), "tokens in the canvas"),
        _f("rows", "answer_position", "int32", (), "index of the answer slot"),
        _f("rows", "readout", "int32", (), "position whose logits predict the answer slot"),
        _f("rows", "answer_id", "int32", (), "token id of the correct answer"),
        _f("rows", "predicted_id", "int32", (), "argmax of the prediction for the answer slot at this step"),
        _f("rows", "p_answer", "float32", (), "p(answer_id) in that prediction"),
        _f("rows", "slot_masked", "bool", (), "the answer slot is a mask in this step's input"),
        _f("rows", "cached", "bool", (), "this step's activations are in /cache (else NaN)"),
        _f("canvas", "ids", "int32", ("width",), "the step's input canvas (-1 pads)"),
        _f("canvas", "decoded", "int32", ("width",), "the canvas after the step"),
        _f("canvas", "masked", "bool", ("width",), "positions that are masks in the step's input"),
        _f("canvas", "unmasked", "bool", ("width",), "positions the step unmasked"),
        _f("canvas", "punctuation", "bool", ("width",), "positions whose token is punctuation or whitespace only"),
        _f("attention", "received", "float32", ("layers", "heads", "width"),
           "attention weight each key position receives, averaged over every query position (NaN when not "
           "recorded)"),
        _f("cache", "positions", "int32", ("positions",), "the cached positions (-1 pads)"),
        _f("cache", "activations", "float32", ("sites", "cached_layers", "positions", "d"),
           "activations at the cached positions (NaN at steps not cached)"),
    ),
    attrs=(
        Attr("status", "str", '"running" until every planned row is written, then "complete"'),
        Attr("n_rows_done", "int", "rows written completely (whole steps); readers ignore the rest"),
        Attr("sites", "JSON str", "the cached hook kinds, e.g. [\"resid_post\"]"),
        Attr("cached_layers", "JSON str", "the cached layers"),
        Attr("position_group", "str", "which positions are cached: answer, readout, generated, prompt or all"),
    ),
)

STEP_PATCHING = StoreKind(
    name="step_patching",
    rows="(prompt, run): the receiver unpatched (site \"none\"), then every (site, patched step)",
    groups=("runs",),
    dims={"steps": "denoising steps of both trajectories"},
    data=(
        _f("runs", "example", "int64", (), "the receiver's example index"),
        _f("runs", "donor_example", "int64", (), "the donor's example index"),
        _f("runs", "task", "str", (), "task name"),
        _f("runs", "site", "str", (), "the patched site (L0.H1, attn_out:L0, ...) or none"),
        _f("runs", "patched_step", "int32", (), "the step patched (-1: every step, or none)"),
        _f("runs", "answer_id", "int32", (), "token id of the correct answer"),
        _f("runs", "wrong_id", "int32", (), "the wrong token: the unpatched receiver's top other token at step 0"),
        _f("runs", "final_id", "int32", (), "the decoded token at the answer slot"),
        _f("runs", "correct", "bool", (), "final_id == answer_id"),
        _f("runs", "changed", "bool", (), "final_id differs from the unpatched receiver's"),
        _f("runs", "logit_diff", "float32", (), "logit(answer) - logit(wrong) at the readout position at the patched "
           "step (step 0 for -1)"),
        _f("runs", "attribution_logit_diff", "float32", (), "attribution patching's estimate of logit_diff (NaN: "
           "not estimated)"),
        _f("runs", "final_logit_diff", "float32", (), "the logit difference at the step the answer slot is unmasked"),
        _f("runs", "unmask_step", "int32", (), "step at which the answer slot is unmasked (-1: never)"),
        _f("runs", "settle_step", "int32", (), "first step from which the prediction for the answer slot equals the "
           "final token until the slot is unmasked"),
        _f("runs", "step_logit_diff", "float32", ("steps",), "the logit difference at every step"),
        _f("runs", "step_predicted_id", "int32", ("steps",), "the prediction for the answer slot at every step while "
           "it is masked (-1 after)"),
    ),
    attrs=(
        Attr("receiver", "JSON str", "the receiver's condition (masks, filler, placement)"),
        Attr("donor", "JSON str", "the donor's condition and its prompt shift"),
        Attr("sites", "JSON str", "the patched sites"),
        Attr("position_group", "str", "where the sites are patched"),
    ),
)


def describe_steps(path) -> dict:
    """Return {"kind", "header", "conditions"} of a steps store: per mask count, prompts, steps, accuracy of
    the decoded answer and the mean step its prediction settles."""
    import numpy as np

    with open_results(path, "steps") as store:
        done = int(store.attrs["n_rows_done"])
        rows = store.frame("rows").iloc[:done]
        decoded = store.file["canvas/decoded"][:done] if done else np.zeros((0, 0))
        conditions = []
        for masks, group in rows.groupby("masks"):
            last = group[group["step"] == group["steps"] - 1]
            final = decoded[last.index.to_numpy(), last["answer_position"].to_numpy()] if len(last) else []
            accuracy = float(np.mean(final == last["answer_id"].to_numpy())) if len(last) else None
            conditions.append({"masks": int(masks), "prompts": int(len(last)), "steps": int(group["steps"].max()),
                               "rows": int(len(group)), "accuracy": accuracy})
        header = (f"{path}: steps store ({store.attrs['status']}, {done} of {store.n_rows} rows), model "
                  f"{store.attrs['model_id']} ({store.attrs['family']}), sampler {store.attrs['settings']['sampler']}, "
                  f"cached {', '.join(store.attrs['sites']) or 'nothing'} at layers {store.attrs['cached_layers']} "
                  f"({store.attrs['position_group']} positions)")
        return {"kind": "steps", "header": header, "conditions": conditions}


def describe_step_patching(path) -> dict:
    """Return {"kind", "header", "conditions"} of a step patching store: per site and patched step, runs,
    accuracy, share changed and mean settle step."""
    with open_results(path, "step_patching") as store:
        runs = store.examples
        conditions = []
        for (site, step), group in runs.groupby(["site", "patched_step"], sort=False):
            conditions.append({"site": site, "patched_step": "every" if step < 0 and site != "none" else
                               ("-" if step < 0 else int(step)), "n": len(group),
                               "accuracy": float(group["correct"].mean()), "changed": float(group["changed"].mean()),
                               "settle_step": float(group["settle_step"].mean())})
        header = (f"{path}: step patching store, {store.dims['steps']} steps, receiver {store.attrs['receiver']}, "
                  f"donor {store.attrs['donor']}, model {store.attrs['model_id']}")
        return {"kind": "step_patching", "header": header, "conditions": conditions}


register_result_kind(STEPS, describe_steps)
register_result_kind(STEP_PATCHING, describe_step_patching)
