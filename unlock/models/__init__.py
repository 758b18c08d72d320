"""Where models come from: Hugging Face ids or paths, tiny random models, packaged GGUF weights; one
loader per source (``loading.SOURCES``), and the dry run's memory plan."""
