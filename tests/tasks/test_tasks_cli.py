"""``mdlm-interp tasks list|show|export|words``."""

import argparse
import json
import re

import pytest
from task_tokenizers import byte_bpe

from mdlm_interp.cli import build_parser, main
from mdlm_interp.tasks import TASK_NAMES, get_task, word_lists

EXAMPLE_RE = re.compile(r"Input: (\w+), (\w+), (\w+)\nOutput: (\w+)\n")


def run(capsys, *argv):
    """Return (exit code, stdout, stderr) of ``mdlm-interp *argv``."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_sixteen_tasks(capsys):
    code, out, _ = run(capsys, "tasks", "list")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 16
    assert [line.split()[0] for line in lines] == list(TASK_NAMES)
    assert all("select the" in line for line in lines)


def export(capsys, tmp_path, name, *flags):
    path = tmp_path / name
    code, _, err = run(capsys, "tasks", "export", "--out", str(path), *flags)
    assert code == 0, err
    return path


def test_export_is_deterministic(capsys, tmp_path):
    a = export(capsys, tmp_path, "a.jsonl", "--task", "all", "--n", "3", "--seed", "7")
    b = export(capsys, tmp_path, "b.jsonl", "--task", "all", "--n", "3", "--seed", "7")
    c = export(capsys, tmp_path, "c.jsonl", "--task", "all", "--n", "3", "--seed", "8")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    records = [json.loads(line) for line in a.read_text().splitlines()]
    assert len(records) == 48 and [r["task"] for r in records[::3]] == list(TASK_NAMES)


@pytest.mark.parametrize("placement", ["random", "relevant-at:5", "query-at:12"])
def test_exported_records_obey_the_rules(capsys, tmp_path, placement):
    path = export(capsys, tmp_path, "x.jsonl", "--task", "all", "--n", "4", "--seed", "1",
                  "--placement", placement, "--n-relevant", "6", "--n-distractor", "14")
    lists = word_lists()
    for line in path.read_text().splitlines():
        r = json.loads(line)
        task = get_task(r["task"])
        assert (r["n_relevant"], r["n_distractor"]) == (6, 14)
        cats = [lists.category_of(w) for w in r["query"]]
        assert len(set(cats)) == 3 and None not in cats and cats.count(task.category) == 1
        assert r["answer"] == r["query"][cats.index(task.category)]
        assert r["prompt"].endswith(f"Input: {r['query'][0]}, {r['query'][1]}, {r['query'][2]}\nOutput:")
        examples = EXAMPLE_RE.findall(r["prompt"]) + EXAMPLE_RE.findall(r["suffix"])
        assert len(examples) == 20 and len(EXAMPLE_RE.findall(r["prompt"])) == r["query_slot"]
        assert [list(e[:3]) for e in examples] == [e["input"] for e in r["examples"]]
        for slot, (*inputs, output) in enumerate(examples):
            if slot in r["relevant_slots"]:
                ecats = [lists.category_of(w) for w in inputs]
                assert len(set(ecats)) == 3 and ecats.count(task.category) == 1
                assert output == inputs[ecats.index(task.category)]
            else:
                values = [int(d) for d in inputs]
                assert len(set(values)) == 3
                assert int(output) == (max if task.distractor == "largest" else min)(values)
        if placement == "relevant-at:5":
            assert r["relevant_slots"] == list(range(5, 11))
        else:
            assert len(r["relevant_slots"]) == 6
        assert r["query_slot"] == (12 if placement == "query-at:12" else 20)
        assert (r["suffix"] == "") == (r["query_slot"] == 20)


def test_show_marks_spans_masks_and_filler(capsys):
    code, out, _ = run(capsys, "tasks", "show", "verb+largest", "--masks", "4", "--n-relevant", "2",
                       "--n-distractor", "3", "--seed", "2")
    assert code == 0
    assert out.count("<mask>") == 4
    assert len(re.findall(r"\[example \d+: RELEVANT \(verb\)\]", out)) == 2
    assert len(re.findall(r"\[example \d+: distractor \(largest\)\]", out)) == 3
    assert "[query, after 5 examples]" in out and "[3 masks after the answer slot]" in out
    code, out, _ = run(capsys, "tasks", "show", "verb+largest", "--masks", "4", "--filler", " .")
    assert code == 0 and out.count("<mask>") == 1 and "[3 fillers ' .' after the answer slot]\n . . .\n" in out
    code, out, _ = run(capsys, "tasks", "show", "verb+largest", "--placement", "query-at:0")
    assert code == 0 and out.index("[query, after 0 examples]") < out.index("[example 0:")


@pytest.mark.parametrize("argv, message", [
    (["show", "colour+largest"], "unknown task 'colour+largest'"),
    (["show", "verb+largest", "--placement", "relevant-at:41"], "K=41 is out of range"),
    (["show", "verb+largest", "--placement", "query-at:51"], "K=51 is out of range"),
    (["show", "verb+largest", "--masks", "0"], "masks must be at least 1 for a diffusion model"),
    (["show", "verb+largest", "--causal", "--masks", "5"], "a causal model takes no masks"),
    (["show", "body+largest", "--n-relevant", "80"], "n_relevant=80 is too large"),
    (["export", "--task", "nope", "--n", "1", "--out", "-"], "unknown task 'nope'"),
    (["export", "--task", "all", "--n", "0", "--out", "-"], "n must be a positive integer"),
    (["words", "--tokenizer", "/nonexistent/dir"], "no tokenizer.json"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, message):
    code, out, err = run(capsys, "tasks", *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err


def test_no_partial_file_on_error(capsys, tmp_path):
    path = tmp_path / "bad.jsonl"
    code, _, _ = run(capsys, "tasks", "export", "--task", "all", "--n", "1", "--n-relevant", "70",
                     "--out", str(path))
    assert code == 2 and not path.exists()


def test_tokenizer_restricts_words(capsys, tmp_path):
    tokenizer = byte_bpe()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    code, out, _ = run(capsys, "tasks", "words", "--tokenizer", str(tmp_path))
    assert code == 0 and len(out.splitlines()) == 8
    assert re.search(r"^body +69 words +\d+ single tokens$", out, re.M)
    path = export(capsys, tmp_path, "t.jsonl", "--task", "all", "--n", "2", "--tokenizer",
                  str(tmp_path / "tokenizer.json"))
    for line in path.read_text().splitlines():
        r = json.loads(line)
        for word in r["query"] + [w for e in r["examples"] for w in e["input"]]:
            assert len(tokenizer.encode(" " + word).ids) == 1


def test_every_flag_has_help():
    parser = build_parser()
    tasks = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["tasks"]
    actions = next(a for a in tasks._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(actions) == {"list", "show", "export", "words"}
    for sub in actions.values():
        for action in sub._actions:
            assert action.help, (sub.prog, action.dest)
