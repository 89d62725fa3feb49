"""Are two HDF5 files the same results? Every dataset and attribute compared, but when and by what command
line each was written (e.g. a run sharded over processes against one process)."""

import h5py
import numpy as np

WHEN_AND_HOW = ("created", "command_line")  # attributes that differ between two runs of the same computation


def file_contents(path, ignore=WHEN_AND_HOW) -> dict:
    """Return every dataset (its values; variable-length rows as lists) and every attribute (as
    "OBJECT@NAME", the root's as "@NAME") of the HDF5 file ``path``, but the attributes named in ``ignore``."""
    found = {}
    with h5py.File(path, "r") as file:
        def visit(name, item):
            if isinstance(item, h5py.Dataset):
                value = item[()]
                found[name] = [np.asarray(v).tolist() for v in value] if value.dtype == object else value
            for key, value in item.attrs.items():
                if key not in ignore:
                    found[f"{name}@{key}"] = value

        visit("", file)
        file.visititems(visit)
    return found


def file_difference(a, b, ignore=WHEN_AND_HOW) -> str | None:
    """Return the first dataset or attribute in which the HDF5 files ``a`` and ``b`` differ, as one line (a
    NaN equals a NaN), or None when they hold the same (the attributes named in ``ignore`` aside)."""
    first, second = file_contents(a, ignore), file_contents(b, ignore)
    if first.keys() != second.keys():
        return f"{sorted(first.keys() ^ second.keys())[0]!r} is in one file only"
    for name in first:
        try:
            np.testing.assert_equal(second[name], first[name])
        except AssertionError:
            return f"{name!r} differs"
    return None
