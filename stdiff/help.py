"""What each job's ``--help`` shows below its options: an example and the config keys it takes.

The keys are read from the config dataclasses' source with ``ast`` (no import of torch or the
pipelines, so ``--help`` stays instant) and can therefore never drift from the code; a test
compares them with ``dataclasses.fields``.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import cache

# command -> (example, [(module, config class, key prefix)])
JOBS: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "train": (
        "stdiff train --config configs/train_physionet_csdi.yaml --set loop.steps=2000 "
        "--set data.store=outputs/physio.zarr",
        [("engine.runner", "TrainJobConfig", ""), ("tasks.base", "DataConfig", "data."),
         ("engine.models", "ModelConfig", "model."), ("engine.train", "LoopConfig", "loop."),
         ("engine.train", "OptimConfig", "optim.")],
    ),
    "impute": (
        "stdiff impute --checkpoint outputs/csdi --data outputs/physio.zarr --out imputed.zarr "
        "--sampler dpmpp_2m_sde --steps 10 --members 50 --set max_stays=8",
        [("jobs.impute_core", "ImputeConfig", "")],
    ),
    "forecast": (
        "stdiff forecast --checkpoint outputs/train_ncep_dit --data outputs/ncep.zarr "
        "--out fc.zarr --init 2014-01-01T00/2014-01-31T00/24h --lead 72h --members 8",
        [("jobs.forecast", "ForecastConfig", "")],
    ),
    "reconstruct": (
        "stdiff reconstruct --checkpoint outputs/fmnist_unet --data outputs/fmnist.zarr "
        "--out inpainted.zarr --task inpaint --method repaint --set mask=box",
        [("jobs.reconstruct", "ReconstructConfig", "")],
    ),
    "generate": (
        "stdiff generate --checkpoint outputs/fmnist_dit --out samples.zarr --label 3 "
        "--guidance 2 --n 64",
        [("jobs.generate", "GenerateConfig", "")],
    ),
    "distill": (
        "stdiff distill --config configs/distill_fmnist_progressive.yaml "
        "--teacher outputs/fmnist_ddpm --out outputs/students",
        [("jobs.distill", "DistillConfig", "")],
    ),
}  # fmt: skip


@cache
def config_keys(module: str, cls: str) -> list[str]:
    """The field names of dataclass ``cls`` in ``stdiff.pipelines.<module>``, from its source."""
    spec = importlib.util.find_spec(f"stdiff.pipelines.{module}")
    if spec is None or spec.origin is None:
        return []
    tree = ast.parse(open(spec.origin, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return [
                s.target.id
                for s in node.body
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
            ]
    return []


def epilog(command: str) -> str:
    """The text below ``stdiff COMMAND --help``: an example, then the accepted config keys."""
    example, classes = JOBS[command]
    keys = [f"{prefix}{k}" for m, c, prefix in classes for k in config_keys(m, c)]
    return (
        f"Example:  {example}\n\n"
        f"Config keys (YAML via --config, or --set KEY=VALUE): {', '.join(keys)}"
    )
