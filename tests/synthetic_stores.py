"""Small stores with known contents for the analyses' tests, written through the real store writer."""

import numpy as np

from mdlm_interp.store import Provenance, open_writer

LAYERS, HEADS, K, RELEVANT, STEPS = 2, 3, 3, 2, 4
GROUPS = ("examples", "tokens", "attention", "gradients", "lens")
QUERY = (3, 6)  # query span of every synthetic prompt: tokens 3, 4, 5
LENGTH = 12


def write_store(path, rows: list, *, model_id="synthetic/model", family="llada", n=None, seed=0,
                n_relevant=2, n_distractor=4, tasks=None, groups=GROUPS, fingerprint="sha256:" + "ab" * 32,
                decode=None):
    """Write ``rows`` (dicts) as a complete store; every key a row lacks gets a neutral default.

    Row keys: task, prompt (index within the task), masks, filler, placement, correct, predicted_id,
    p_answer, entropy, answer_id, grad_mask/grad_last50/grad_nonmask, attention arrays
    from_answer/from_context/relevant [layers, heads], lens_p/lens_rank/lens_entropy [layers + 1];
    with a "decode" group (``decode``: the settings["decode"] dict) decoded_correct, steps, unmask_step,
    settle_step, step_p_answer / masks_left [STEPS], decode_attention [STEPS, layers, heads].
    The example id is task index * n + prompt, as ``record`` numbers them.
    """
    tasks = tasks or sorted({r["task"] for r in rows})
    n = n or max(r["prompt"] for r in rows) + 1
    settings = {"model_id": model_id, "n": n, "n_relevant": n_relevant, "n_distractor": n_distractor, "seed": seed,
                "tasks": tasks, **({"decode": decode} if decode is not None else {})}
    provenance = Provenance(command_line="synthetic", model_id=model_id, family=family, dtype="float32",
                            weights_fingerprint=fingerprint,
                            task_config={"n_relevant": n_relevant, "n_distractor": n_distractor, "n": n,
                                         "tasks": tasks},
                            seed=seed)
    dims = {"k": K, "relevant": RELEVANT, "layers": LAYERS, "heads": HEADS, "steps": STEPS}
    with open_writer(path, settings=settings, provenance=provenance, groups=groups, dims=dims,
                     n_planned=len(rows), overwrite=True) as writer:
        writer.append(batch(rows, tasks, n, groups))
        writer.finish()
    return path


def batch(rows: list, tasks: list, n: int, groups) -> dict:
    """Return the writer batch of ``rows``."""
    b = len(rows)
    get = lambda key, default: [r.get(key, default) for r in rows]  # noqa: E731
    masks = np.array(get("masks", 1))
    answer_id = np.array(get("answer_id", 500))
    correct = np.array(get("correct", True), dtype=bool)
    predicted = np.array([r.get("predicted_id", a if c else a + 1) for r, a, c in zip(rows, answer_id, correct)])
    answer_position = 8
    out = {
        "examples/row": np.arange(b),
        "examples/example": np.array([tasks.index(r["task"]) * n + r["prompt"] for r in rows]),
        "examples/task": get("task", None),
        "examples/masks": masks,
        "examples/filler": np.array(get("filler", False), dtype=bool),
        "examples/placement": get("placement", "random"),
        "examples/input_length": np.full(b, LENGTH),
        "examples/relevant_spans": np.tile(np.array([[0, 1], [1, 2]]), (b, 1, 1)),
        "examples/query_start": np.full(b, QUERY[0]),
        "examples/query_end": np.full(b, QUERY[1]),
        "examples/answer_position": np.full(b, answer_position),
        "examples/masks_start": np.full(b, answer_position + 1),
        "examples/masks_end": answer_position + np.maximum(masks, 1),
        "examples/answer_id": answer_id,
        "examples/predicted_id": predicted,
        "examples/p_answer": np.array(get("p_answer", 0.5)),
        "examples/entropy": np.array(get("entropy", 1.0)),
        "examples/correct": correct,
        "examples/topk_ids": np.tile(np.arange(K), (b, 1)),
        "examples/topk_probs": np.full((b, K), 1.0 / K),
        "tokens/input_ids": [np.array(r.get("tokens", np.arange(100, 100 + LENGTH))) for r in rows],
    }
    zeros = np.zeros((LAYERS, HEADS))
    if "attention" in groups:
        datasets = {"from_answer": "attention/mask_mass_from_answer",
                    "from_context": "attention/mask_mass_from_context",
                    "relevant": "attention/relevant_mass_from_answer"}
        for name, path in datasets.items():
            out[path] = np.stack([np.asarray(r.get(name, zeros), dtype=float) for r in rows])
    if "gradients" in groups:
        out["gradients/norms"] = [np.ones(LENGTH) for _ in rows]
        for name in ("mask", "last50", "nonmask"):
            out[f"gradients/{name}_mean"] = np.array(get(f"grad_{name}", 0.1), dtype=float)
    if "lens" in groups:
        out["lens/p_answer"] = np.stack([np.asarray(r.get("lens_p", np.full(LAYERS + 1, 0.5))) for r in rows])
        out["lens/rank"] = np.stack([np.asarray(r.get("lens_rank", np.zeros(LAYERS + 1, int))) for r in rows])
        out["lens/entropy"] = np.stack([np.asarray(r.get("lens_entropy", np.ones(LAYERS + 1))) for r in rows])
    if "decode" in groups:
        out["decode/correct"] = np.array(get("decoded_correct", True), dtype=bool)
        out["decode/predicted_id"] = np.where(out["decode/correct"], answer_id, answer_id + 1)
        for name, default in (("steps", STEPS), ("unmask_step", STEPS - 1), ("settle_step", 0)):
            out[f"decode/{name}"] = np.array(get(name, default))
        out["decode/confidence"] = np.full(b, 0.9)
        out["decode/step_p_answer"] = np.stack([np.asarray(r.get("step_p_answer", np.full(STEPS, 0.5))) for r in rows])
        out["decode/step_predicted_id"] = np.tile(np.arange(STEPS), (b, 1))
        out["decode/masks_left"] = np.stack([np.asarray(r.get("masks_left", np.arange(STEPS, 0, -1))) for r in rows])
        out["decode/mask_mass_from_answer"] = np.stack([np.asarray(r.get("decode_attention",
                                                                         np.zeros((STEPS, LAYERS, HEADS))))
                                                        for r in rows])
    return out
