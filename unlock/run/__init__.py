"""The run layer: the config schema and the one reader of the composed Hydra config (config:
``run_settings`` builds the :class:`~unlock.run.settings.RunSettings` once; entry points pass it
down), the plan, the session that caches each stage, the conditions and their evaluation (evaluate,
evaluate_vllm, engines), the results record (record), what a record says on the console (summary), the
one W&B writer (wandb_log), sweeps (track: aggregate, objectives, selection, the multirun callback),
make analyze (analyze) and make report (report)."""
