"""The analyses as a registry: each one is data (what it needs, how to tabulate, draw and describe).

Adding an analysis is one module defining ``ANALYSIS = Analysis(...)`` plus one line in ``ANALYSIS_MODULES``.
``tables`` gets ``Recordings`` restricted to the stores that have every group in ``needs`` and
returns named DataFrames (each written to tables/NAME.csv); it raises ``Skip`` when the data lack
what it needs. ``figures`` and ``paragraph`` get those tables only.
"""

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FigureOut:
    """One figure of a report: file stem (figures/NAME.png), a matplotlib Figure, one caption sentence.
    A figure an analysis does not draw (e.g. one x value only) has ``figure`` None and says why in
    ``caption``; the report turns it into a note."""

    name: str
    figure: object
    caption: str


@dataclass(frozen=True)
class Analysis:
    """One analysis: name, report title, needed store groups, and its three functions.

    tables(recordings) -> {name: DataFrame}; figures(tables) -> [FigureOut]; paragraph(tables) -> str
    (the findings in words and numbers); shown(tables) -> {caption: DataFrame}, compact views printed in
    report.md (default: every table as written). ``store_kind`` "record" (the default) reads record
    stores (``tables`` gets ``Recordings``); "patching", "expert_patching" or "ablation" reads result stores of that kind
    (``tables`` gets the list of their paths, and ``needs`` is unused); "activations" reads activation
    stores (``tables`` gets the whole ``Recordings``: ``results["activations"]`` and ``options``).
    """

    name: str
    title: str
    needs: tuple
    tables: Callable
    figures: Callable
    paragraph: Callable
    shown: Callable | None = field(default=None)
    store_kind: str = "record"


# modules defining ANALYSIS, in report order (modules by path: the package re-exports functions of the same names)
ANALYSIS_MODULES = [
    "inverse_scaling",
    "locality",
    "attribution",
    "attention",
    "lens",
    "wrong_predictions",
    "context_benefit",
    "heads",
    "patching",
    "expert_patching",
    "ablation",
    "iterative",
    "sinks",
    "settle_steps",
    "features",
    "routing",
    "blocks",
]


def analyses() -> list[Analysis]:
    """Return every registered analysis, in report order."""
    import importlib

    return [importlib.import_module(f"mdlm_interp.analyses.{name}").ANALYSIS for name in ANALYSIS_MODULES]
