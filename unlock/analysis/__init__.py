"""What a run's numbers mean, as a library below the run layer (it imports nothing of ``unlock.run``):
statistics and the decision rule, transfer fidelity and its ceiling, the logit lens, generation
analyses, the rank x N grid's pieces, the paper's numbers, and plots. ``python -m unlock.analysis``
(make analyze) is an entry point here that hands over to unlock.run.analyze; the paper report is
``python -m unlock.run.report`` (make report)."""
