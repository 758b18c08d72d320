"""lm-evaluation-harness integration: the registered model classes (``unlock`` on HF, ``unlock_vllm``
on vLLM with per-request steering), the start-up hook that registers them, and prompt sets read from
the project's lm-eval tasks (unlock/tasks)."""
