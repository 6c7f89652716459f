"""Command-line entry points (absl apps), installed as console scripts by setup.cfg.

`marft-train`, `marft-evaluate`, `marft-export`, `marft-study` and `marft-generate` run
`main()` of `train`, `evaluate`, `export`, `study` and `generate`; the scripts in
`experiments/` are thin wrappers around the same functions. Each module defines its flags
at import, so import only the one that runs.
"""
