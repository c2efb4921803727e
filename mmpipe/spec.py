"""What a system declares so the shared lifecycle can train, judge, promote and serve it.

Each system package (``mmpipe/systems/<name>/``) exports one :class:`SystemSpec` as
``SPEC``. The orchestration layer turns a spec into its Dagster assets, checks, jobs and
sensors (``orchestration/lifecycle.py``) without knowing anything else about the system,
and shared code reads names and metrics from here instead of spelling them out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: a model's code and its benchmarks run without MLflow
    from mmpipe.registry.mlflow_registry import RunContext
    from mmpipe.serving.service import Service, ServingPaths


class NothingToTrain(ValueError):
    """A system's inputs hold no usable example (a landing zone without videos, say): its
    training, evaluation and whatever its champion feeds have nothing to do. Raised by a
    system's input builder; the lifecycle reports it as "nothing to do" instead of failing."""


@dataclass
class Trained:
    """One finished training run, as the lifecycle logs it."""

    model: Any
    steps: int
    seconds: float
    final: dict[str, float]  # the last logged value of each metric
    params: dict[str, Any] = field(default_factory=dict)  # what the run trained on, for MLflow


@dataclass
class EvalOutcome:
    """A system's evaluation of the registered challenger, ready for the report and the gate."""

    metrics: dict[str, dict[str, float]]  # method -> metric -> value
    markdown: str
    plots: dict[str, bytes]
    summary: dict  # the report summary (mmpipe.eval.report.write_report; eval.overview reads it)
    challenger_value: float  # the primary metric of the challenger
    champion_value: float | None = None  # the champion re-scored on the same data, when it could be
    note: str = ""  # why the champion was not re-scored, if it was not


@dataclass(frozen=True)
class Requirement:
    """A bound the model's own eval row must meet before the gate may promote it, beside
    beating the champion (say, every codebook level in use). ``metric`` is a key of
    ``EvalOutcome.metrics[model_method]``; a missing or non-finite value is unmet."""

    metric: str
    minimum: float | None = None
    maximum: float | None = None

    def describe(self) -> str:
        bounds = [f">= {self.minimum:g}" if self.minimum is not None else "",
                  f"<= {self.maximum:g}" if self.maximum is not None else ""]
        return f"{self.metric} {' and '.join(b for b in bounds if b)}"

    def unmet(self, row: Mapping[str, float]) -> str | None:
        """Why ``row`` (one method's metrics) fails the requirement, or None when it holds."""
        value = row.get(self.metric)
        if value is None or not math.isfinite(float(value)):
            return f"{self.describe()}: not measured"
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            return f"{self.describe()}: is {float(value):.4g}"
        return None


def describe_requirements(requirements: Iterable[Requirement]) -> str:
    """``requirements`` for a report's prose: each in backticks, joined by "and"."""
    return " and ".join(f"`{r.describe()}`" for r in requirements)


@dataclass(frozen=True)
class SystemSpec:
    """A system's identity, its judged metric and its entry points (plain functions)."""

    name: str  # package and asset prefix: <name>_model, eval_<name>, <name>_champion
    registered_model: str  # MLflow registered model name (never renamed: the registry keeps history)
    settings: type  # the dataclass holding every default; params.yaml[<name>] overrides it
    primary_metric: str  # a key of EvalOutcome.metrics[model_method], on the validation window
    higher_is_better: bool
    model_method: str  # the report row of the model itself
    baselines: tuple[str, ...]  # report rows the challenger must beat before it may be promoted
    # (settings, inputs, out_dir, resume, log) -> Trained
    train: Callable[..., Trained]
    # (trained, settings, run_context) -> registered version
    register: Callable[[Trained, Any, RunContext], str]
    # (inputs, settings, challenger_version, champion_version | None, ablation_dirs) -> EvalOutcome
    evaluate: Callable[..., EvalOutcome]
    # trained in the default run beside the model: name -> settings overrides
    ablations: Mapping[str, Mapping] = field(default_factory=dict)
    # trained only by the separate ablations job: name -> settings overrides
    sweeps: Mapping[str, Mapping] = field(default_factory=dict)
    # (inputs, settings, model_dir, {sweep: dir}) -> EvalOutcome of the sweeps against the model
    evaluate_sweeps: Callable[..., EvalOutcome] | None = None
    description: str = ""
    # what its DVC stage reads under storage/ (the derived data its inputs come from)
    data_deps: tuple[str, ...] = ("storage/validated", "storage/graph", "storage/features")
    # bounds the model's eval row must meet before promotion (the gate refuses otherwise)
    requirements: tuple[Requirement, ...] = ()
    # the model asset's name when the system's own vocabulary names it (default <name>_model)
    model_asset_name: str | None = None
    # (paths) -> its warm serving side for `mmpipe serve` (mmpipe.serving.service.Service);
    # None: the system answers nothing online
    service: Callable[[ServingPaths], Service] | None = None

    def __post_init__(self) -> None:
        if self.sweeps and self.evaluate_sweeps is None:
            raise ValueError(f"{self.name}: sweeps need evaluate_sweeps to report them")

    @property
    def model_asset(self) -> str:
        return self.model_asset_name or f"{self.name}_model"

    @property
    def eval_asset(self) -> str:
        return f"eval_{self.name}"

    @property
    def champion_asset(self) -> str:
        return f"{self.name}_champion"

    def variant_asset(self, variant: str) -> str:
        return f"{self.name}_{variant}_model"

    def model_dir(self, storage: Path, variant: str | None = None) -> Path:
        """Where a training run of the model (or of one of its ablations) keeps its checkpoint."""
        return Path(storage) / "models" / (self.name if variant is None else f"{self.name}_{variant}")

    def report_dir(self, storage: Path) -> Path:
        return Path(storage) / "reports" / self.name

    def ablations_report_dir(self, storage: Path) -> Path:
        """Where the ablations job's report of the sweeps goes, beside the eval report."""
        return Path(storage) / "reports" / f"{self.name}_ablations"
