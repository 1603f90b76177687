"""Observations O1 and O2 of Go et al. (2023) on the user's own model: task affinity between
denoising tasks (affinity.py) and the negative-transfer gap of interval specialists
(transfer.py), above the run directory, training and evaluation; antdiff.report renders both
into HTML. The affinity estimator itself is the lower package antdiff.affinity."""
