"""``store.compare``: two HDF5 files are the same results when every dataset and attribute agrees, but when
and by what command line they were written."""

import h5py
import numpy as np

from mdlm_interp.store.compare import file_difference


def write(path, *, values=(1.0, np.nan), created="monday", command_line="a", seed=0, rows=((1, 2), (3,))):
    with h5py.File(path, "w") as file:
        file.attrs.update(created=created, command_line=command_line)
        file["group/values"] = np.array(values)
        file["group"].attrs["seed"] = seed
        column = file.create_dataset("group/rows", (len(rows),), dtype=h5py.vlen_dtype(np.int32))
        for index, row in enumerate(rows):
            column[index] = row
    return path


def test_files_differing_only_in_time_and_command_line_are_the_same(tmp_path):
    a = write(tmp_path / "a.h5")
    assert file_difference(a, write(tmp_path / "b.h5", created="tuesday", command_line="b")) is None  # NaN = NaN


def test_a_value_an_attribute_a_row_or_a_dataset_that_differs_is_named(tmp_path):
    a = write(tmp_path / "a.h5")
    assert file_difference(a, write(tmp_path / "v.h5", values=(1.0, 2.0))) == "'group/values' differs"
    assert file_difference(a, write(tmp_path / "s.h5", seed=1)) == "'group@seed' differs"
    assert file_difference(a, write(tmp_path / "r.h5", rows=((1, 2), (4,)))) == "'group/rows' differs"
    with h5py.File(write(tmp_path / "x.h5"), "a") as file:
        file["extra"] = [1]
    assert file_difference(a, tmp_path / "x.h5") == "'extra' is in one file only"
