"""Property-based tests (hypothesis): any command line of any subcommand, and any input of the task
builder, ends in success or in one line on stderr with exit code 2, never in a traceback.

The command lines are generated from the parsers themselves (every subcommand that
``build_parser()`` registers, nested ones included, so new subcommands are covered as they land):
each option is left out or given a value drawn by its kind (choices, int, float, paths, lists,
hostile text). Work itself is not the property under test and would take the budget: the first
forward pass of any model and the first checkpoint written raise ``WorkStarted``, which counts as
success, because every check of the input must come before them.
"""

import argparse
import math
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_run import run_cli
from mdlm_interp.cli import build_parser
from mdlm_interp.errors import UsageError

# examples per test: small enough for `make test`; PROPERTY_EXAMPLES=500 (and PROPERTY_SEED) explore deeper
EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "25"))
BUDGET = settings(max_examples=EXAMPLES, deadline=None, derandomize="PROPERTY_SEED" not in os.environ, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class WorkStarted(BaseException):
    """Raised by the first forward pass or checkpoint write: every check of the input has passed."""


def subcommands(parser: argparse.ArgumentParser, prefix=()) -> list:
    """Return (argv prefix, parser) of every leaf subcommand, e.g. (("model", "init"), parser)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += subcommands(sub, prefix + (name,))
    return found or [(prefix, parser)]


LEAVES = {" ".join(prefix): parser for prefix, parser in subcommands(build_parser())}

TEXT = ["", ",", " ", "x", "-1", "0", "1", "3", "1,3", "0,1", "nan", "99999999999999", "all", "random",
        "relevant-at:2", "query-at:1", "relevant-at:1,query-at:3", "relevant-at:-1", "query-at:x",
        "adjective+largest", "verb+smallest,food+smallest", "colour+largest", " .", "<|mdm_mask|>", " blorfle",
        "attention,lens", "attention,weights", "float32", "cuda", "cpu", "é", "--n", "a\nb"]
INTS = ["-1", "0", "1", "2", "3", "64", "99999999999999", "1.5", "x", ""]
FLOATS = ["-1", "0", "1e-9", "0.001", "1", "nan", "inf", "-inf", "1e300", "x", ""]
PATH_WORDS = ("out", "model", "init", "store", "tokenizer", "path", "dir", "file", "adapter", "stores", "checkpoint")


@pytest.fixture(scope="module")
def paths(tiny_checkpoint, tmp_path_factory) -> dict:
    """Places a path option may name: a complete store, checkpoints, a file, a folder, nowhere."""
    from mdlm_interp.record import record
    from mdlm_interp import load_model

    root = tmp_path_factory.mktemp("places")
    store = record(load_model(tiny_checkpoint("llada")), out=root / "store.h5", tasks=["adjective+largest"], n=2,
                   n_relevant=2, n_distractor=3, progress=False)
    (root / "file.txt").write_text("not a store\n")
    (root / "folder").mkdir()
    return {"store": str(store), "llada": str(tiny_checkpoint("llada")), "llama": str(tiny_checkpoint("llama")),
            "organism": "organism-llada", "file": str(root / "file.txt"), "folder": str(root / "folder"),
            "new file": "new.h5", "new folder": "new-folder", "missing": str(root / "missing" / "x"),
            "read-only": "/proc/x", "empty": ""}


def value_strategy(action: argparse.Action, paths: dict):
    """Return a strategy for the text given to ``action``."""
    hostile = st.sampled_from(TEXT)
    if action.choices:
        return st.one_of(st.sampled_from([str(c) for c in action.choices]), hostile)
    if any(word in action.dest for word in PATH_WORDS) or (action.metavar or "").upper() in ("STORE", "PATH", "DIR"):
        return st.one_of(st.sampled_from(list(paths.values())), hostile)
    if action.type is int:
        return st.sampled_from(INTS)
    if action.type is float:
        return st.sampled_from(FLOATS)
    return hostile


@st.composite
def command_lines(draw, prefix: tuple, parser: argparse.ArgumentParser, paths: dict) -> list:
    """Draw an argv for one leaf subcommand: positionals, a random subset of its options, maybe junk."""
    argv = list(prefix)
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if not action.option_strings:  # a positional
            if action.nargs in ("*", "+") or isinstance(action.nargs, int):
                argv += draw(st.lists(value_strategy(action, paths), min_size=0, max_size=3))
            elif draw(st.integers(0, 9)):  # leave it out now and then
                argv.append(draw(value_strategy(action, paths)))
            continue
        if not (action.required or draw(st.booleans())):
            continue
        flag = draw(st.sampled_from(action.option_strings))
        if action.nargs == 0:
            argv.append(flag)
        elif action.nargs == "?" and draw(st.booleans()):
            argv.append(flag)
        else:
            argv += [flag, draw(value_strategy(action, paths))]
    if not draw(st.integers(0, 9)):
        argv.insert(draw(st.integers(len(prefix), len(argv))), draw(st.sampled_from(["--bogus", "-x", "extra"])))
    return argv


@pytest.fixture(scope="module")
def work_guard():
    """Make the first forward pass and the first checkpoint write raise ``WorkStarted``."""
    from mdlm_interp.models import checkpoint, transformer

    def started(*args, **kwargs):
        raise WorkStarted

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transformer.HookedDecoder, "forward", started)
        patch.setattr(checkpoint, "save_weights", started)
        patch.setattr("mdlm_interp.models.random_checkpoint.save_weights", started)
        yield


def assert_success_or_one_line(argv: list) -> None:
    try:
        result = run_cli(*argv)
    except WorkStarted:
        return
    assert result.returncode in (0, 2), (argv, result.returncode, result.stderr[-3000:])
    if result.returncode == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mdlm-interp"), (argv, result.stderr)


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_any_command_line_succeeds_or_fails_in_one_line(name, paths, work_guard):
    prefix, parser = tuple(name.split()), LEAVES[name]
    previous = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)  # relative outputs ("new.h5", default names) land here
        try:
            @BUDGET
            @given(argv=command_lines(prefix, parser, paths))
            def check(argv):
                assert_success_or_one_line(argv)

            check()
        finally:
            os.chdir(previous)


def test_every_registered_subcommand_is_covered():
    names = set(LEAVES)
    assert {"record", "summary", "model init", "model info", "pretrain", "tasks export", "tasks show"} <= names


# ---- the task builder ----------------------------------------------------------------------------

placements = st.one_of(
    st.sampled_from(["random", "", "relevant-at:", "query-at:-1", "relevant-at:x", "middle", "random,random"]),
    st.builds(lambda k: f"relevant-at:{k}", st.integers(-1, 60)),
    st.builds(lambda k: f"query-at:{k}", st.integers(-1, 70)),
    st.builds(lambda k, j: f"relevant-at:{k},query-at:{j}", st.integers(0, 30), st.integers(0, 40)),
)


@pytest.fixture(scope="module")
def tokenizers(tiny_model):
    from mdlm_interp import load_model

    return {"tiny": tiny_model("llada"), "organism": load_model("organism-llada")}


@settings(BUDGET, max_examples=6 * EXAMPLES)
@given(task=st.sampled_from(["adjective+largest", "food+smallest", "verb+largest", "colour+largest", ""]),
       n_relevant=st.integers(-1, 40), n_distractor=st.integers(-1, 80), placement=placements,
       seed=st.one_of(st.integers(-2**70, 2**70), st.booleans(), st.just(1.5)),
       masks=st.integers(-1, 60), causal=st.booleans(),
       filler=st.sampled_from([None, " .", "", "<|mdm_mask|>", " blorfle", " ..", "x y"]),
       template=st.sampled_from([None, "{content}", "<u>{content}</u>\n", "no content", "{content}{content}"]),
       which=st.sampled_from(["tiny", "organism"]))
def test_the_task_builder_gives_a_consistent_prompt_or_a_usage_error(task, n_relevant, n_distractor, placement,
                                                                      seed, masks, causal, filler, template, which,
                                                                      tokenizers):
    from mdlm_interp.tasks import PromptConfig, sample_prompt, single_token_words, tokenize_prompt

    lm = tokenizers[which]
    try:
        config = PromptConfig(task, n_relevant, n_distractor, placement)
        prompt = sample_prompt(config, seed, single_token_words(lm.tokenizer))
        tp = tokenize_prompt(prompt, lm.tokenizer, mask_token_id=None if causal else lm.mask_token_id, causal=causal,
                             masks=masks, filler=filler, chat_template=template)
    except UsageError as error:
        assert str(error) and "\n" not in str(error)
        return
    ids = tp.input_ids
    assert len(tp.example_spans) == n_relevant + n_distractor and len(tp.relevant_examples) == n_relevant
    assert lm.tokenizer.decode([tp.answer_id]).strip() == prompt.answer
    query_start, query_end = tp.spans["query"]
    assert 0 <= query_start < query_end <= tp.answer_position
    spans = sorted(tp.example_spans)
    assert all(0 <= a < b <= c < d <= len(ids) for (a, b), (c, d) in zip(spans, spans[1:]))
    if causal:
        assert tp.answer_position == len(ids) and tp.spans["masks"][0] >= tp.spans["masks"][1] - 1
        return
    start, end = tp.spans["masks"]
    assert ids[tp.answer_position] == lm.mask_token_id and start == tp.answer_position + 1
    assert end - start == max(masks - 1, 0)
    appended = ids[start:end]
    if filler is None:
        assert all(token == lm.mask_token_id for token in appended)
    else:
        assert all(token == tp.filler_id != lm.mask_token_id for token in appended)
    if n_relevant:
        first, last = tp.example_spans[tp.relevant_examples[0]], tp.example_spans[tp.relevant_examples[-1]]
        assert tp.spans["relevant"] == (first[0], last[1])
    assert not math.isnan(len(ids))
