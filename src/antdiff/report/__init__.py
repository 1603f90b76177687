"""Figures and self-contained HTML pages, made from what a run or an analysis recorded."""

from antdiff.report.analysis import summary_table, write_experiment_report
from antdiff.report.figures import plot_affinity, plot_partition, plot_transfer
from antdiff.report.run import write_report

__all__ = [
    "plot_affinity",
    "plot_partition",
    "plot_transfer",
    "summary_table",
    "write_experiment_report",
    "write_report",
]
