"""LLaVA-1.5 evaluation: prompts, scorers, answer-file I/O and the runner (`docs/benchmarks.md`)."""
