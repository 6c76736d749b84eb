"""Pictures of a LOUPE run (matplotlib, Agg canvas, PNG) and its HTML report.

``write_run_report`` writes ``<run_dir>/report/index.html`` with training curves, regions with
their token-level interactions (paper Fig. 5 left), alignment vs semantic-level interaction
matrices (Fig. 5 right) and estimator instability against samples (Fig. 3a).
"""
from .curves import instability_curve, plot_instability, plot_training_curves, read_history
from .matrices import alignment_figure, plot_alignment_matrices
from .pair import PairView, inspect_pair
from .regions import plot_regions, region_interaction_figure
from .report import write_run_report

__all__ = ["PairView", "alignment_figure", "inspect_pair", "instability_curve", "plot_alignment_matrices",
           "plot_instability", "plot_regions", "plot_training_curves", "read_history", "region_interaction_figure",
           "write_run_report"]
