"""Multi-process training for a lifecycle's training asset: ``torchrun`` as a subprocess of the
asset, through Dagster Pipes.

With ``compute.processes`` above 1 (``params.yaml``: ``pinclip: {compute: {processes: 2}}``,
or the launchpad) the training asset runs::

    python -m torch.distributed.run --standalone --nproc-per-node N -m orchestration.distributed \\
        --system pinclip --settings '{...}' --paths '{...}' --run-context '{...}'

Every process loads the system's inputs and trains (data-parallel: ``mmpipe.train.distributed``);
rank 0 alone logs to MLflow, registers the version, streams each logged step to Dagster
(``pipes.log``) and reports the materialization's metadata (metrics, ``mlflow_run_id``,
the registered version) back through Pipes. Every process's stdout and stderr reach the
asset's compute logs. The same command runs outside Dagster (then only the MLflow run and
the printed metadata say what happened)::

    torchrun --standalone --nproc-per-node 2 -m orchestration.distributed --system pinclip
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import sys
from typing import Any

import dagster as dg
import dagster_pipes

from mmpipe.config import apply_overrides, resolve_settings, settings_from_dict
from mmpipe.params import project_root
from mmpipe.registry.mlflow_registry import RunContext
from mmpipe.spec import SystemSpec
from mmpipe.systems import spec_named
from mmpipe.train.distributed import compute_of, process_group
from orchestration.resources import PipelinePaths

WORKER_MODULE = "orchestration.distributed"  # this module, run by every torchrun process (main)


def torchrun_command(processes: int, args: list[str]) -> list[str]:
    """torchrun (``torch.distributed.run``, from this interpreter) with ``processes`` workers
    on this machine; ``--standalone`` picks a free rendezvous port."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", WORKER_MODULE, *args]


def worker_args(spec: SystemSpec, settings: Any, paths: PipelinePaths, run_context: RunContext,
                variant: str | None, registers: bool, resume: bool) -> list[str]:
    """The command-line arguments of :func:`main` that train ``settings`` as the asset would."""
    args = ["--system", spec.name, "--settings", json.dumps(dataclasses.asdict(settings)),
            "--paths", json.dumps(paths.model_dump()), "--run-context", json.dumps(dataclasses.asdict(run_context))]
    if variant is not None:
        args += ["--variant", variant]
    if not registers:
        args.append("--no-register")
    if not resume:
        args.append("--fresh")
    return args


def launch(context: dg.AssetExecutionContext, spec: SystemSpec, settings: Any, paths: PipelinePaths,
           run_context: RunContext, variant: str | None, registers: bool, resume: bool) -> dg.MaterializeResult:
    """Train in ``compute.processes`` torchrun processes; the materialization rank 0 reports."""
    processes = compute_of(settings).processes
    context.log.info(f"training {spec.name} in {processes} processes (torchrun, through Dagster Pipes)")
    command = torchrun_command(processes, worker_args(spec, settings, paths, run_context, variant, registers, resume))
    client = dg.PipesSubprocessClient(cwd=str(project_root()))
    return client.run(context=context, command=command).get_materialize_result()


@contextlib.contextmanager
def _pipes(rank: int):
    """The Pipes session on rank 0 when Dagster launched us, else None: one process speaks
    for the run (several would each open and close the same session)."""
    if rank != 0 or dagster_pipes.DAGSTER_PIPES_CONTEXT_ENV_VAR not in os.environ:
        yield None
        return
    with dagster_pipes.open_dagster_pipes() as pipes:
        yield pipes


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="orchestration.distributed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", required=True, help="the system to train (pinclip, mac, ...)")
    parser.add_argument("--variant", default=None, help="an ablation or sweep of the SPEC (its overrides apply)")
    parser.add_argument("--settings", default=None,
                        help="the settings as JSON (default: the dataclass with params.yaml's overrides)")
    parser.add_argument("--paths", default="{}", help="PipelinePaths fields as JSON (default: data/raw, storage)")
    parser.add_argument("--run-context", default="{}", help="RunContext fields as JSON (tags of the MLflow run)")
    parser.add_argument("--fresh", action="store_true", help="train afresh instead of resuming the checkpoint")
    parser.add_argument("--no-register", action="store_true", help="do not register the trained version")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from orchestration.lifecycle import run_training  # the asset's own training; lifecycle imports launch from here

    args = _parse(argv)
    spec = spec_named(args.system)
    if args.settings is not None:
        settings = settings_from_dict(spec.settings, json.loads(args.settings))
    else:
        overrides = {**spec.ablations, **spec.sweeps}.get(args.variant, {}) if args.variant else {}
        settings = apply_overrides(resolve_settings(spec.settings, spec.name), overrides)
    paths = PipelinePaths(**json.loads(args.paths))
    run_context = RunContext(**{"asset_key": spec.variant_asset(args.variant) if args.variant else spec.model_asset,
                                **json.loads(args.run_context)})
    # The system's loader lives beside its lifecycle (orchestration/systems/<name>.py: INPUTS).
    inputs = importlib.import_module(f"orchestration.systems.{spec.name}").INPUTS
    with process_group() as (rank, size), _pipes(rank) as pipes:
        data = inputs.load(paths, settings)
        log = None
        if pipes is not None:
            pipes.log.info(f"{spec.name}: {size} processes, {compute_of(settings)}")

            def log(step: int, metrics: dict) -> None:
                pipes.log.info(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

        metadata = run_training(spec, settings, data, spec.model_dir(paths.storage(), args.variant), run_context,
                                registers=not args.no_register, resume=not args.fresh, log=log)
        if rank == 0:
            if pipes is not None:
                pipes.report_asset_materialization(metadata=metadata)
            print(json.dumps({"system": spec.name, "processes": size, **metadata}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
