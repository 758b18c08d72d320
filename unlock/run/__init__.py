"""The run layer: the config schema (the only reader of the composed Hydra config), the plan, the
session that caches each stage, the conditions and their evaluation, and the results record, table,
W&B runs and sweep aggregates."""
