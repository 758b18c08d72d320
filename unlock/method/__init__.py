"""The method (docs/method.md): capture activations, extract a direction, fit the map, steer.

Small, exact modules with one job each, and no configuration framework: they take tensors, models
and frozen settings objects and know nothing of Hydra or the run layer (tests/test_layout.py).
``blocks`` finds a model's decoder blocks for capture and steering."""
