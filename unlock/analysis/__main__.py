"""`python -m unlock.analysis` (make analyze): the rank x N grid from cached activations, composed by
Hydra like a run (same groups and overrides). The Hydra entry point lives here, in the file run as
``__main__``, so that Hydra finds conf/ relative to this file."""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from unlock.run.analyze import report
from unlock.run.config import register_configs, run_settings

register_configs()


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    report(run_settings(cfg), Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
