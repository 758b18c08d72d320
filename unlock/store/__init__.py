"""What is kept on disk: artifact files (safetensors and JSON, written atomically) and the stage cache
that keys them by the config that determines them, checks them on load, and shares work between jobs."""
