"""Training: the model organisms (word-level vocabulary, LLaDA / causal / Dream objectives, trainer,
recipes). See docs/organisms.md; ``mdlm-interp pretrain`` and ``make organisms`` are the entry points."""
