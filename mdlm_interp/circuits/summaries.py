"""What ``mdlm-interp summary`` says about the circuit experiments' result stores: one describer per kind,
registered with the kind's schema (``circuits.schemas``)."""

from mdlm_interp.store.results import open_results


def describe_patching(path) -> dict:
    """Return {"kind", "header", "conditions"} of a patching store: per run (clean, corrupt) n, accuracy and
    mean logit(answer) - logit(wrong), and their gap."""
    with open_results(path, "patching") as store:
        settings, pairs = store.attrs["settings"], store.examples
        rows = []
        for run in ("clean", "corrupt"):
            condition = settings.get(run, {})
            rows.append({"run": run, "masks": condition.get("masks"), "filler": condition.get("filler"),
                         "placement": condition.get("placement"), "n": len(pairs),
                         "accuracy": _mean(pairs[f"{run}_correct"]) if f"{run}_correct" in pairs else None,
                         "logit_diff": _mean(pairs[f"{run}_logit_diff"]) if f"{run}_logit_diff" in pairs else None})
        header = (f"{path}: patching store, {store.n_rows} prompt pairs, model {store.attrs['model_id']} "
                  f"({store.attrs['family']}), layers {store.dims.get('layers')}, heads {store.dims.get('heads')}")
        return {"kind": "patching", "header": header, "conditions": rows}


def describe_ablation(path) -> dict:
    """Return {"kind", "header", "conditions"} of an ablation store: per mask count, accuracy without ablation
    and with the chosen heads ablated in each mode."""
    with open_results(path, "ablation") as store:
        examples, ablated = store.examples, store.array("ablated/correct")
        rows = []
        for masks in sorted(set(examples["masks"])):
            where = (examples["masks"] == masks).to_numpy()
            row = {"masks": int(masks), "n": int(where.sum()), "accuracy": _mean(examples["correct"][where])}
            row.update({f"ablated {mode}": _mean(ablated[where, m]) for m, mode in enumerate(store.attrs["modes"])})
            rows.append(row)
        header = (f"{path}: ablation store, heads {', '.join(store.attrs['heads'])} "
                  f"({store.attrs['head_selection']}), {store.n_rows} rows, model {store.attrs['model_id']}")
        return {"kind": "ablation", "header": header, "conditions": rows}


def describe_expert_patching(path) -> dict:
    """Return {"kind", "header", "conditions"} of an expert patching store: per direction and expert, the
    cells and the mean change of the logit difference that patching the whole sequence ("all") makes."""
    with open_results(path, "expert_patching") as store:
        cells = store.examples
        whole = cells[cells["group"] == "all"]
        receiver = whole["corrupt"].where(whole["direction"] == "clean_into_corrupt", whole["clean"])
        rows = [{"direction": direction, "expert": expert, "n": int(len(part)),
                 "effect_all": _mean(part["patched"] - receiver[part.index])}
                for (direction, expert), part in whole.groupby(["direction", "expert"], sort=False)]
        header = (f"{path}: expert patching store, experts {', '.join(store.attrs['experts'])}, {store.n_rows} "
                  f"cells, model {store.attrs['model_id']} ({store.attrs['family']})")
        return {"kind": "expert_patching", "header": header, "conditions": rows}


def _mean(values) -> float | None:
    import numpy as np

    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None
