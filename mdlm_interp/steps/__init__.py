"""Across denoising steps: step caches (``steps.cache``), patching between trajectories (``steps.patching``),
the trajectory and its replayable decode (``steps.trajectory``), the step stores' schemas (``steps.schemas``)."""
