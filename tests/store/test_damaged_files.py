"""Damaged files of every kind (record, patching, ablation stores, decode traces) are refused in one line, exit 2,
by analyze, compare and summary, before any output is written (issue 26 item 6)."""

import json
import shutil

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_run import run_cli
from synthetic_stores import write_store
from synthetic_results import BASE, ablation_store, patching_store

from mdlm_interp.circuits.schemas import ABLATION, PATCHING
from mdlm_interp.store import schema
from mdlm_interp.store.kinds import TRACE
from mdlm_interp.store.layout import result_layout

def trace_file(path):
    """Write a decode trace as ``generate --trace`` does: 3 steps, 2 prompts, 6 positions."""
    steps, batch, positions = 3, 2, 6
    with h5py.File(path, "w") as file:
        file.create_dataset("ids", data=np.zeros((steps + 1, batch, positions), np.int32))
        file.create_dataset("proposed", data=np.zeros((steps, batch, positions), np.int32))
        file.create_dataset("confidence", data=np.zeros((steps, batch, positions), np.float32))
        file.create_dataset("unmasked", data=np.eye(steps, positions, dtype=bool)[:, None].repeat(batch, 1))
        file.create_dataset("block", data=np.zeros(steps, np.int32))
        file.create_dataset("attention_mask", data=np.ones((batch, positions), np.int8))
        file.create_dataset("text", data=["a b", "c"], dtype=h5py.string_dtype("utf-8"))
        file.attrs["prompt_length"] = 3
        for name, value in {"command_line": "mdlm-interp generate", "toolkit_version": "0.1.0", "model_id": "m",
                            "family": "llada", "dtype": "float32", "weights_fingerprint": "sha256:ab", "seed": 0,
                            "prompts": json.dumps(["x", "y"]), "chat": False,
                            "settings": json.dumps({"sampler": "llada", "steps": 3})}.items():
            file.attrs[name] = value
    return path


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """One whole file of every kind, and a second model's record store for compare."""
    root = tmp_path_factory.mktemp("good")
    rows = [{"task": task, "prompt": p, "masks": m, "correct": bool((p + m) % 2)}
            for task in ("adjective+largest", "verb+smallest") for p in range(2) for m in (1, 3, 6)]
    return {
        "record": write_store(root / "record.h5", rows),
        "other": write_store(root / "other.h5", rows, model_id="synthetic/other", fingerprint="sha256:" + "cd" * 32),
        "patching": patching_store(root / "patching.h5", BASE),
        "ablation": ablation_store(root / "ablation.h5", [1, 0, 1, 1], [0, 0, 1, 0], [[1, 0], [0, 0], [1, 1], [0, 1]]),
        "trace": trace_file(root / "trace.h5"),
    }


LAYOUTS = {"patching": result_layout(PATCHING), "ablation": result_layout(ABLATION), "trace": TRACE}
RECORD_ATTRS = [a for a in schema.ATTRS if a.name != "merged_from"]
RECORD_DATA = [f.path for f in schema.fields(("examples", "tokens", "attention", "gradients", "lens"))]


def attrs_of(kind):
    return RECORD_ATTRS if kind == "record" else list(LAYOUTS[kind].attrs)


def data_of(kind):
    return RECORD_DATA if kind == "record" else [f.path for f in LAYOUTS[kind].data]


def damages(kind):
    """A strategy of (description, function damaging an open h5py File) that every reader must refuse."""
    attrs, data = attrs_of(kind), data_of(kind)
    json_attrs = [a.name for a in attrs if a.type == "JSON str"]
    objects = [n for n in ("settings", "task_config", "dims") if n in json_attrs]
    ints = [a.name for a in attrs if a.type == "int"]
    texts = st.text(min_size=1, max_size=12).filter(lambda t: _not_json(t))

    def drop(name):
        return (f"attribute {name} missing", lambda f: f.attrs.__delitem__(name))

    def set_attr(name, value):
        return (f"attribute {name} = {value!r}", lambda f: f.attrs.__setitem__(name, value))

    def dataset(name, how):
        def damage(file):
            values = file[name][()]
            dtype = file[name].dtype
            del file[name]
            if how == "short":
                file.create_dataset(name, data=values[:-1], dtype=dtype)
            elif how == "axis":
                file.create_dataset(name, data=values[..., None], dtype=dtype)
            elif how == "strings":
                file.create_dataset(name, data=np.full(values.shape, "x", dtype=object),
                                    dtype=h5py.string_dtype("utf-8"))
        return (f"dataset {name} {how}", damage)

    options = [
        st.sampled_from([a.name for a in attrs]).map(drop),
        st.tuples(st.sampled_from(json_attrs), texts).map(lambda p: set_attr(*p)),
        st.tuples(st.sampled_from(ints), texts).map(lambda p: set_attr(*p)),
        st.tuples(st.sampled_from(ints), st.integers(-10**6, -1)).map(lambda p: set_attr(*p)),
        st.tuples(st.sampled_from(data), st.sampled_from(["short", "axis"])).map(lambda p: dataset(*p)),
        st.sampled_from([d for d in data if "task" not in d and "text" not in d and "placement" not in d]).map(
            lambda d: dataset(d, "strings")),
    ]
    if objects:
        options.append(st.tuples(st.sampled_from(objects), st.sampled_from(["[1, 2]", "3", '"text"', "null"])).map(
            lambda p: set_attr(*p)))
    if kind != "trace":
        options.append(st.sampled_from([n for n in ("n_rows", "n_rows_done") if n in [a.name for a in attrs]]).map(
            lambda n: (f"{n} off by one", lambda f: f.attrs.__setitem__(n, np.int64(int(f.attrs[n]) + 1)))))
        options.append(st.just(("dims without a key", _drop_dim)))
    return st.one_of(options)


def _drop_dim(file):
    dims = json.loads(file.attrs["dims"])
    dims.pop(sorted(dims)[0])
    file.attrs["dims"] = json.dumps(dims)


def _not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


def refused(result, out, what="") -> None:
    assert result.returncode == 2, (what, result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, (what, result.stderr[-2000:])
    assert not out.exists(), what


@pytest.mark.parametrize("kind", ["record", "patching", "ablation", "trace"])
def test_damaged_attributes_and_datasets_are_one_line_exit_2(good, tmp_path_factory, kind):
    root = tmp_path_factory.mktemp(f"damaged-{kind}")

    @settings(max_examples=30, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(damage=damages(kind), command=st.sampled_from(["analyze", "summary", "compare"]))
    def check(damage, command):
        what, apply = damage
        path = root / f"{kind}.h5"
        shutil.copy(good[kind], path)
        with h5py.File(path, "r+") as file:
            apply(file)
        out = root / "out"
        shutil.rmtree(out, ignore_errors=True)  # one example's failure is not the next one's
        if command == "summary":
            result = run_cli("summary", path)
            assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, (what, result.stderr)
            assert str(path) in result.stderr, (what, result.stderr)
            return
        args = [good["other"], path] if command == "compare" else [path]
        result = run_cli(command, *args, "--out", out)
        refused(result, out, what)
        assert str(path) in result.stderr, (what, result.stderr)

    check()


@pytest.mark.parametrize("task_config, message", [
    ({}, "task_config has no n_relevant"),
    ({"n_relevant": 2, "n_distractor": 4, "n": 2, "tasks": ["adjective+largest"], "placements": ["wherever"]},
     "placement 'wherever'"),
    ({"n_relevant": -1, "n_distractor": 4, "n": 2, "tasks": ["adjective+largest"]}, "n_relevant is -1"),
    ({"n_relevant": 2, "n_distractor": 4, "n": 2, "tasks": ["colour+largest"]}, "unknown tasks"),
    ({"n_relevant": 2, "n_distractor": 4, "n": 2, "tasks": ["adjective+largest"], "masks": [1, -3]}, "masks"),
    ({"n_relevant": 2, "n_distractor": 4, "n": 0, "tasks": ["adjective+largest"]}, "n is 0"),
])
@pytest.mark.parametrize("command", ["analyze", "compare"])
def test_record_store_task_config_is_checked(good, tmp_path, task_config, message, command):
    path = tmp_path / "record.h5"
    shutil.copy(good["record"], path)
    with h5py.File(path, "r+") as file:
        file.attrs["task_config"] = json.dumps(task_config)
    args = [good["other"], path] if command == "compare" else [path]
    result = run_cli(command, *args, "--out", tmp_path / "out")
    refused(result, tmp_path / "out")
    assert message in result.stderr and str(path) in result.stderr


def test_whole_files_of_every_kind_pass_the_check(good):
    from mdlm_interp.analyses.checks import check_file

    assert {name: check_file(good[name])[0].name for name in ("record", "patching", "ablation", "trace")} == {
        "record": "record", "patching": "patching", "ablation": "ablation", "trace": "trace"}
