"""Where the toolkit's bundled data (word lists, model organisms) lives."""

import os
from pathlib import Path


def data_dir() -> Path:
    """Return the directory holding data/words and data/models.

    ``MDLM_INTERP_DATA`` overrides it; the default is the repository's ``data/`` folder next to the
    package (the project is installed editable by ``make``).
    """
    override = os.environ.get("MDLM_INTERP_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "data"
