"""Task affinity between denoising tasks (Go et al. 2023, Sec. 2.1), measured on a model's
weights: seeded gradient sketches (sketch.py), the per-bin gradient estimator (gradients.py), and
the online measurement that chooses the interval tasks of `--clusters affinity:K:auto` (auto.py).
Pure building blocks: no config and no run directory; `antdiff.build` sets them up from a config
and `antdiff.analysis` uses them for observation O1."""
