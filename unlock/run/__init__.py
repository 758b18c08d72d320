"""The run layer: the config schema (config), the plan, the session that caches each stage, the
conditions and their evaluation (evaluate, evaluate_vllm, engines), the results record (record), what
a record says on the console (summary), the one W&B writer (wandb_log), sweeps (track: aggregate,
objectives, selection, the multirun callback), make analyze (analyze) and make report (report). The
composed Hydra config still reaches several of these modules (issue 29 moves it into one settings
object)."""
