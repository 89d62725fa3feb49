"""Generation traces: every denoising step of a ``generate`` run, kept on the CPU and written to HDF5.

``StepTrace`` is an ``on_step`` callback of the samplers; ``write_trace`` writes what it kept, with the
generation's attention mask, texts and provenance, as a trace file (docs/store.md, "Generation traces").
"""

import torch

from mdlm_interp.decoding.samplers import DecodeStep


class StepTrace:
    """An ``on_step`` callback that keeps, on the CPU, every step's canvas, proposals, confidences and
    unmasked positions (not the logits); ``arrays()`` stacks them."""

    def __init__(self):
        self.initial_ids: torch.Tensor | None = None
        self.steps: dict[str, list] = {"ids": [], "proposed": [], "confidence": [], "unmasked": [], "block": []}

    def __call__(self, step: int, state: DecodeStep) -> None:
        if self.initial_ids is None:
            self.initial_ids = state.input_ids.cpu()
        for name in ("ids", "proposed", "unmasked"):
            self.steps[name].append(getattr(state, name).cpu())
        self.steps["confidence"].append(state.confidence.float().cpu())
        self.steps["block"].append(state.block)

    def arrays(self) -> dict:
        """Return numpy arrays: ids int32 [steps + 1, batch, pos] (the canvas before the first step, then
        after each), proposed int32, confidence float32 (-inf where not scored), unmasked bool
        [steps, batch, pos], block int32 [steps]."""
        import numpy as np

        if self.initial_ids is None:
            raise ValueError("the trace saw no step")
        stacked = {name: torch.stack(values).numpy() for name, values in self.steps.items() if name != "block"}
        return {
            "ids": np.concatenate([self.initial_ids[None].numpy(), stacked["ids"]]).astype(np.int32),
            "proposed": stacked["proposed"].astype(np.int32),
            "confidence": stacked["confidence"],
            "unmasked": stacked["unmasked"],
            "block": np.array(self.steps["block"], dtype=np.int32),
        }


def write_trace(path, trace: StepTrace, generation, attrs: dict) -> None:
    """Write ``trace`` (and the generation's attention mask and texts) to the HDF5 file ``path``, with
    ``attrs`` (provenance, sampler settings; dicts and lists stored as JSON strings) as root attributes.
    The file is built next to ``path`` and replaces it only once complete."""
    import json

    import h5py
    import numpy as np

    from mdlm_interp.outputs import staged_file

    with staged_file(path, mode="w+b", encoding=None) as handle, h5py.File(handle, "w") as file:
        for name, array in trace.arrays().items():
            file.create_dataset(name, data=array, compression="gzip", compression_opts=4)
        file.create_dataset("attention_mask", data=generation.attention_mask.cpu().numpy().astype(np.int8))
        file.create_dataset("text", data=generation.texts, dtype=h5py.string_dtype("utf-8"))
        file.attrs["prompt_length"] = generation.prompt_length
        for name, value in attrs.items():
            file.attrs[name] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
