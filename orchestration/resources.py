"""Resources: where the pipeline reads and writes. Local folders by default."""


from pathlib import Path

import dagster as dg

from mmpipe.config import scaled_params
from mmpipe.params import project_root


class PipelinePaths(dg.ConfigurableResource):
    """The raw landing zone (DVC-tracked ``data/raw``) and derived storage (``storage/``).

    Relative paths are taken from the project root, so the CLI, the web UI and DVC stages
    started from the checkout all see the same files.
    """

    raw_dir: str = "data/raw"
    storage_dir: str = "storage"
    dvc_file: str = "data.dvc"

    def _absolute(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else project_root() / path

    @property
    def raw_root(self) -> Path:
        return self._absolute(self.raw_dir)

    @property
    def dvc_path(self) -> Path:
        return self._absolute(self.dvc_file)

    def storage(self, *parts: str) -> Path:
        path = self._absolute(self.storage_dir).joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path


class ValidationPolicy(dg.ConfigurableResource):
    """How much bad input a table may carry before downstream assets are blocked."""

    max_quarantine_rate: float = float(scaled_params()["validation"]["max_quarantine_rate"])
