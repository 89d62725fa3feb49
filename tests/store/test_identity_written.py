"""Every store kind carries the model identity: model_id, weights_fingerprint, adapter, adapter_fingerprint."""

import h5py
import pytest

from mdlm_interp.models import load_model
from mdlm_interp.store.identity import IDENTITY_ATTRS, ModelIdentity, read_identity
from tests.cli_run import run_cli

SMALL = ["--task", "adjective+largest", "--n", "1", "--n-relevant", "2", "--n-distractor", "3"]
COMMANDS = {
    "record": ["record", "--masks", "1,3", "--record", "attention"],
    "patch": ["patch", "--corrupt-masks", "3", "--no-attribution", "--last-k", "1"],
    "ablate": ["ablate", "--heads", "0.0", "--masks", "1,3", "--control", "none", "--modes", "zero"],
}


def expected_identity(model: str, adapter: str | None) -> ModelIdentity:
    lm = load_model(model, adapter=adapter)
    if adapter is None:
        return ModelIdentity(model, lm.fingerprint(), "", "")
    return ModelIdentity(model, lm.fingerprint(), adapter, lm.adapter.fingerprint)


@pytest.fixture(scope="module")
def identities(tiny_checkpoint):
    tiny = str(tiny_checkpoint("llada"))
    return {None: (tiny, expected_identity(tiny, None)),
            "organism-llada-ma": ("organism-llada", expected_identity("organism-llada", "organism-llada-ma"))}


@pytest.mark.parametrize("adapter", [None, "organism-llada-ma"])
@pytest.mark.parametrize("kind", sorted(COMMANDS))
def test_every_store_carries_the_model_identity(kind, adapter, identities, tmp_path):
    model, expected = identities[adapter]
    out = tmp_path / f"{kind}.h5"
    result = run_cli(*COMMANDS[kind], "--model", model, *(["--adapter", adapter] if adapter else []), *SMALL,
                     "--out", out)
    assert result.returncode == 0, result.stderr
    with h5py.File(out, "r") as file:
        written = {name: file.attrs[name] for name in IDENTITY_ATTRS}
        assert written == expected.attrs(), written
        assert read_identity(file.attrs) == expected
        if adapter:  # the settings keep naming the adapter as before, with the same fingerprint
            assert '"fingerprint": "' + expected.adapter_fingerprint + '"' in file.attrs["settings"]
        else:
            assert '"adapter"' not in file.attrs["settings"]


def test_a_decode_trace_carries_the_model_identity(tmp_path):
    trace = tmp_path / "trace.h5"
    result = run_cli("generate", "--model", "organism-llada", "--prompt", "adjective: red cat car ->",
                     "--gen-length", "2", "--trace", trace)
    assert result.returncode == 0, result.stderr
    with h5py.File(trace, "r") as file:
        identity = read_identity(file.attrs)
        assert "adapter" in file.attrs  # written, not derived from the settings
    assert identity == ModelIdentity("organism-llada", load_model("organism-llada").fingerprint())
