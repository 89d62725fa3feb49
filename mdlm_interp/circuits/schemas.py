"""The schemas of the circuit experiments' result stores (patching, ablation, expert patching), as data.

Each experiment owns its schema: a ``store.results.StoreKind`` built here and registered with
``store.results.register_result_kind`` (with the function that describes a store for ``mdlm-interp
summary``) when this module is imported, which ``import mdlm_interp`` does, so every reader
(``open_results``, ``summary``, the analyses) knows these kinds without importing the experiments.
Pure data: this module imports only store modules, nothing heavy. ``StoreKind.markdown()`` renders the
tables that docs/store.md carries verbatim (a test keeps them equal); after changing a kind, paste
``python -c "from mdlm_interp.circuits import schemas; print(schemas.PATCHING.markdown(), end='')"``
(and the same for ``ABLATION`` and ``EXPERT_PATCHING``) into docs/store.md.
"""

from mdlm_interp.circuits.summaries import describe_ablation, describe_expert_patching, describe_patching
from mdlm_interp.store.results import StoreKind, register_result_kind
from mdlm_interp.store.schema import Attr, Field


def _f(group, name, dtype, shape, doc):
    return Field(group, name, dtype, ("rows",) + tuple(shape), doc)


SITES = ("resid_pre", "attn_out", "mlp_out", "z")
SITE_SHAPES = {
    "resid_pre": ("directions", "layers+1", "groups"),
    "attn_out": ("directions", "layers", "groups"),
    "mlp_out": ("directions", "layers", "groups"),
    "z": ("directions", "layers", "heads", "head_groups"),
}
SITE_DOCS = {
    "resid_pre": "the residual stream entering block l (hook_resid_pre; index layers: the final residual, "
                 "before ln_final) patched over a position group",
    "attn_out": "the attention output of block l (hook_attn_out) patched over a position group",
    "mlp_out": "the MLP output of block l (hook_mlp_out) patched over a position group",
    "z": "one head's output before the output projection (attn.hook_z) patched at the answer slot, at "
         "every position with a counterpart, or at the readout position (Dream)",
}

_PAIR_FIELDS = (
    _f("pairs", "example", "int64", (), "example index (task index * n + i): the same prompt in both runs"),
    _f("pairs", "task", "str", (), "task name"),
    _f("pairs", "answer_id", "int32", (), "token id of the correct answer"),
    _f("pairs", "wrong_id", "int32", (), "the wrong token of the logit difference (default: the corrupt run's most "
                                         "probable token other than the answer)"),
    _f("pairs", "answer_position", "int32", (), "index of the answer slot (the same in both runs)"),
    _f("pairs", "clean_length", "int32", (), "tokens in the clean run's input"),
    _f("pairs", "corrupt_length", "int32", (), "tokens in the corrupt run's input"),
)
_RUN_FIELDS = tuple(
    _f("pairs", f"{run}_{name}", dtype, (), f"{doc} in the {run} run")
    for run in ("clean", "corrupt")
    for name, dtype, doc in (
        ("logit_diff", "float32", "logit(answer) - logit(wrong) at the readout position"),
        ("p_answer", "float32", "p(answer)"),
        ("predicted_id", "int32", "argmax prediction for the answer slot"),
        ("correct", "bool", "predicted_id == answer_id"),
    )
)

PATCHING = StoreKind(
    name="patching",
    rows="prompt pair (the same prompt as a clean and a corrupt run, e.g. 1 against 50 masks)",
    groups=("pairs", "patching", "attribution"),
    dims={
        "directions": "2: clean activations patched into the corrupt run, then corrupt into clean (attribute "
                      "directions)",
        "layers": "transformer blocks",
        "heads": "attention (query) heads per block",
        "groups": "position groups of the residual sites (attribute position_groups)",
        "head_groups": "the answer slot, every position with a counterpart, and where the prediction is read "
                       "before the slot (Dream) the readout position (attribute head_groups)",
    },
    data=_PAIR_FIELDS + _RUN_FIELDS + tuple(
        _f("patching", f"{site}_{metric}", "float32", SITE_SHAPES[site],
           f"{SITE_DOCS[site]}: {doc} of the patched run" if metric == "logit_diff" else f"{doc} of the patched run")
        for site in SITES
        for metric, doc in (("logit_diff", "logit(answer) - logit(wrong) at the readout"), ("p_answer", "p(answer)"))
    ) + tuple(
        _f("attribution", f"{site}_logit_diff", "float32", SITE_SHAPES[site],
           "attribution patching's estimate of patching/" + f"{site}_logit_diff: the receiving run's logit "
           "difference plus the sum over the group of (donor - receiver activation) . gradient")
        for site in SITES
    ),
    attrs=(
        Attr("directions", "JSON str", '["clean_into_corrupt", "corrupt_into_clean"]'),
        Attr("position_groups", "JSON str", 'names along groups: "all", "relevant", "distractor", "query", '
                                            '"answer", "appended" (only when both runs have tokens after the '
                                            'slot), "last:1" .. "last:k", "readout" (only where the prediction is '
                                            'read before the slot, Dream: the readout position)'),
        Attr("head_groups", "JSON str", '["answer", "all"], then "readout" where the prediction is read before '
                                        'the slot (Dream)'),
    ),
)

_ABLATION_RESULTS = (
    ("predicted_id", "int32", "argmax prediction for the answer slot"),
    ("p_answer", "float32", "p(answer)"),
    ("correct", "bool", "predicted_id == answer_id"),
)

ABLATION = StoreKind(
    name="ablation",
    rows="(example, mask count)",
    groups=("examples", "ablated", "control"),
    dims={
        "modes": 'ablation modes (attribute modes): "attention" (no attention to the masks after the answer slot, '
                 'renormalised; from every query, or from the readout position only where settings.positions is '
                 '"readout"), "zero", "mean" (the head output replaced)',
        "draws": "random head sets of the control (0 without a control)",
    },
    data=(
        _f("examples", "example", "int64", (),
           "example index (task index * n + i): the same prompt at every mask count"),
        _f("examples", "task", "str", (), "task name"),
        _f("examples", "masks", "int32", (), "n masks at the answer slot (the slot and n - 1 after it)"),
        _f("examples", "answer_id", "int32", (), "token id of the correct answer"),
        _f("examples", "input_length", "int32", (), "tokens in the model input"),
    ) + tuple(_f("examples", name, dtype, (), f"{doc}, without ablation") for name, dtype, doc in _ABLATION_RESULTS)
    + tuple(_f("ablated", name, dtype, ("modes",), f"{doc}, with the chosen heads ablated")
            for name, dtype, doc in _ABLATION_RESULTS)
    + tuple(_f("control", name, dtype, ("draws", "modes"), f"{doc}, with the random heads of each draw ablated")
            for name, dtype, doc in _ABLATION_RESULTS),
    attrs=(
        Attr("heads", "JSON str", 'the ablated heads as "layer.head" strings'),
        Attr("head_selection", "str", 'how they were chosen: "top:K" or the explicit list'),
        Attr("ranking", "JSON str", "[layers][heads] mean attention mass from the readout position on the masks "
                                    "after the answer slot that ranked the heads for top:K (null for an explicit "
                                    "list)"),
        Attr("modes", "JSON str", "names along modes"),
        Attr("control_heads", "JSON str", "per draw, the random heads (as many as chosen, none of them)"),
    ),
)

EXPERT_PATCHING = StoreKind(
    name="expert_patching",
    rows="(prompt pair, direction, expert, position group): one expert's contribution patched between the clean "
         "and corrupt runs (``patch --experts``, mixture-of-experts models)",
    groups=("cells",),
    dims={},
    data=(
        _f("cells", "example", "int64", (), "example index (task index * n + i): the same prompt in both runs"),
        _f("cells", "task", "str", (), "task name"),
        _f("cells", "direction", "str", (), '"clean_into_corrupt" (the clean run\'s contribution put into the '
                                            'corrupt run) or "corrupt_into_clean"'),
        _f("cells", "expert", "str", (), '"layer.expert" whose share of the MoE output (the sum over the top-k '
                                         'slots routed to it of weight * output) is patched'),
        _f("cells", "group", "str", (), 'the position group patched: "all", "relevant", "distractor", "query", '
                                        '"answer", "appended" (only when both runs have tokens after the slot)'),
        _f("cells", "clean", "float32", (), "logit(answer) - logit(wrong) at the readout in the clean run"),
        _f("cells", "corrupt", "float32", (), "logit(answer) - logit(wrong) at the readout in the corrupt run"),
        _f("cells", "patched", "float32", (), "logit(answer) - logit(wrong) at the readout in the receiving run "
                                              "with the donor's contribution of the expert at the group's positions"),
        _f("cells", "n_positions", "int32", (), "positions of the group in the receiving run"),
    ),
    attrs=(
        Attr("experts", "JSON str", 'the patched experts as "layer.expert" strings'),
        Attr("directions", "JSON str", '["clean_into_corrupt", "corrupt_into_clean"]'),
    ),
)

register_result_kind(PATCHING, describe_patching)
register_result_kind(ABLATION, describe_ablation)
register_result_kind(EXPERT_PATCHING, describe_expert_patching)
