"""Observations O1 and O2 of Go et al. (2023) on the user's own model: task affinity between
denoising tasks (affinity.py) and the negative-transfer gap of interval specialists
(transfer.py); report.py renders both into HTML."""
