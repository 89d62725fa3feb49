"""record under block attention: the answer reads only its own block, so n masks read as the masks in that block."""

import numpy as np

from cli_run import run_cli
from mdlm_interp.store import open_store

TASK = "adjective+largest"


def record_store(path, checkpoint, masks, *flags):
    result = run_cli("record", "--model", checkpoint, "--task", TASK, "--n", "1", "--masks", masks, "--record", "lens",
                     "--no-progress", "--n-distractor", "4", "--out", path, *flags)
    assert result.returncode == 0, result.stderr
    return result


def test_block_attention_reads_only_the_masks_of_the_answer_block(tmp_path, tiny_checkpoint):
    checkpoint = tiny_checkpoint("llada")
    printed = record_store(tmp_path / "blocks.h5", checkpoint, "1,50", "--block-length", "8")
    assert "masks in block" in printed.stdout
    with open_store(tmp_path / "blocks.h5") as store:
        assert store.attrs["settings"]["block_length"] == 8
        rows = store.examples
        in_block = store.array("blocks/masks_in_block")
        start = store.array("blocks/block_start")
    answer = rows["answer_position"].to_numpy()
    masks = rows["masks"].to_numpy()
    assert np.array_equal(start, answer // 8 * 8)
    assert np.array_equal(in_block, np.minimum(masks, 8 - answer % 8))
    assert (in_block[masks == 50] < 50).all()
    # the masks after the answer's block are unseen: recording only those of the block gives the same answer
    for (example, seen) in {(e, int(m)) for e, m, n in zip(rows["example"], in_block, masks) if n == 50}:
        record_store(tmp_path / f"cut{example}.h5", checkpoint, str(seen), "--block-length", "8")
        with open_store(tmp_path / f"cut{example}.h5") as cut:
            expected = cut.examples.set_index("example").loc[example, "p_answer"]
        got = rows[(rows["example"] == example) & (rows["masks"] == 50)]["p_answer"].item()
        assert abs(got - expected) < 1e-5
    from mdlm_interp.analyses import data
    from mdlm_interp.analyses.blocks import ANALYSIS

    table = ANALYSIS.tables(data.load([tmp_path / "blocks.h5"]))["block_attention"].set_index("masks")
    assert table.loc[50, "masks_in_block"] == in_block[masks == 50].mean()
    assert "of 50 masks" in ANALYSIS.paragraph({"block_attention": table.reset_index()})
    full = record_store(tmp_path / "full.h5", checkpoint, "50", "--block-length", "0")
    assert "masks in block" not in full.stdout
    with open_store(tmp_path / "full.h5") as store:
        assert "blocks" not in store.groups and "block_length" not in store.attrs["settings"]
        assert not np.allclose(store.examples["p_answer"], rows[rows["masks"] == 50]["p_answer"])


def test_bad_block_lengths_are_one_line(tmp_path, tiny_checkpoint):
    for flags, message in ((["--block-length", "-1"], "--block-length must be an integer >= 0"),
                           (["--block-length", "4", "--decode", "llada"], "record with --block-length 0 (full attention) to decode")):
        result = run_cli("record", "--model", tiny_checkpoint("llada"), "--task", TASK, "--n", "1", "--out",
                         tmp_path / "x.h5", *flags)
        assert result.returncode == 2 and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.h5").exists()
