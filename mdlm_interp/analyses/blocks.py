"""Block attention: how many of the n masks the answer slot reads when a store was recorded as a
block-diffusion sampler sees it (``record --block-length``), and the accuracy at each mask count.

Under block attention the answer slot reads only the masks of its own block (``blocks/masks_in_block``),
so n masks at the answer slot are read as at most block-length masks; this table puts that count beside
accuracy, for comparison with a store of the same prompts recorded with full attention.
"""

from mdlm_interp.analyses.data import SETTING, Skip
from mdlm_interp.analyses.grouped import accuracy_by, clean_types
from mdlm_interp.analyses.registry import Analysis

KEYS = SETTING + ["placement", "filler", "masks"]


def block_tables(recordings) -> dict:
    """Return {"block_attention"}: one row per condition (KEYS) of the stores recorded under block attention:
    n, accuracy with Wilson bounds, p_answer with bootstrap bounds, and masks_in_block (the masks the
    answer slot reads) as mean, min and max."""
    rows = recordings.rows
    if rows.empty:
        raise Skip("no store was recorded under block attention")
    rows = rows.assign(masks_in_block=recordings.gather(rows, "blocks/masks_in_block").astype(float))
    table = accuracy_by(rows, KEYS, means=("p_answer",))
    seen = rows.groupby(KEYS)["masks_in_block"].agg(["mean", "min", "max"]).reset_index()
    seen = seen.rename(columns={"mean": "masks_in_block", "min": "masks_in_block_min", "max": "masks_in_block_max"})
    return {"block_attention": clean_types(table.merge(seen, on=KEYS))}


def paragraph(tables) -> str:
    """The finding in words: per model and placement, the masks the answer read at the most masks, and accuracy."""
    table = tables["block_attention"]
    sentences = []
    for (model, placement), group in table[~table["filler"]].groupby(["model", "placement"]):
        top = group.loc[group["masks"].idxmax()]
        sentences.append(f"{model} ({placement}): under block attention the answer slot read {top['masks_in_block']:.1f} "
                         f"of {int(top['masks'])} masks on average ({int(top['masks_in_block_min'])} to "
                         f"{int(top['masks_in_block_max'])}), accuracy {top['accuracy']:.3f} [{top['ci_low']:.3f}, "
                         f"{top['ci_high']:.3f}].")
    return " ".join(sentences)


ANALYSIS = Analysis(
    name="blocks",
    title="Block attention: the masks the answer reads",
    needs=("blocks",),
    tables=block_tables,
    figures=lambda tables: [],
    paragraph=paragraph,
)
