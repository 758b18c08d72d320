"""What a run's numbers mean: transfer fidelity and its ceiling, paired comparisons and power, the
logit lens, generation analyses, the rank x N grid (``python -m unlock.analysis``), plots, and the
paper report (``python -m unlock.analysis.report``)."""
