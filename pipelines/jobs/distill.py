"""``stdiff distill``: a trained model becomes a few-step student (``diffusion.distill``).

* ``progressive``: stages of halving, ``teacher_steps -> teacher_steps/2 -> ... -> min_steps``.
  Stage ``N`` trains in ``OUT/steps_N`` (a normal run folder: checkpoints, metrics, exact resume)
  and its EMA weights are the next stage's teacher. A student of ``N`` steps is sampled with
  ``--sampler ddim --steps N --spacing uniform_t``.
* ``consistency``: one consistency model in ``OUT/consistency`` (``model.kind: consistency``),
  sampled with ``--sampler consistency --steps 1`` (or 2, 4 with ``--spacing uniform_t``).
* ``crps``: the teacher's network, fine-tuned on the data as a one-evaluation generator with the
  fair CRPS of two members (``loop.objective: crps``, :func:`diffusion.losses.crps_loss`), in
  ``OUT/crps``; sampled with ``--sampler consistency --steps 1``. No teacher calls: the teacher
  is the starting point, whose prediction at the top noise level is already the conditional
  mean, and the CRPS teaches it to spread its members by the noise. With ``rollout: N``
  (forecast teachers) the two members are rolled out ``N`` steps, each conditioned on its own
  states, and scored at every step (``tasks.forecast.rollout_crps_loss``); the teacher may then
  be a CRPS generator already (a second, rollout stage).

Every student is trained on the teacher's own training data (its checkpoint names the store) with
the same task rules (labels, CSDI target masks), so ``stdiff generate/impute --checkpoint
OUT/steps_4`` work unchanged. ``OUT/distill.json`` lists the students and how to sample them.
A killed run resumes where it stopped: finished stages are skipped, the current one resumes from
its last checkpoint.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from stdiff.datasets.atomic import write_json
from stdiff.diffusion.distill import (
    ConsistencyDenoiser,
    Distance,
    consistency_grid,
    consistency_loss,
    progressive_loss,
)
from stdiff.diffusion.losses import crps_loss
from stdiff.diffusion.precond import NoisePool
from stdiff.diffusion.rng import member_seed
from stdiff.pipelines.engine.checkpoint import latest_checkpoint
from stdiff.pipelines.engine.config import at_least_one, to_dict
from stdiff.pipelines.engine.device import DeviceName, resolve_device
from stdiff.pipelines.engine.runner import load_denoiser, task_data
from stdiff.pipelines.engine.train import LoopConfig, OptimConfig, top_sigma, train
from stdiff.pipelines.tasks import get_task
from stdiff.pipelines.tasks.forecast import rollout_crps_loss


@dataclass(frozen=True)
class DistillConfig:
    """teacher: a training run folder (or ``step_*`` checkpoint); out: the students' folder;
    method: ``progressive``, ``consistency`` or ``crps``; teacher_steps / min_steps: the
    progressive stages (powers of two apart); stage_steps: optimiser steps per stage (or of consistency training);
    levels, distance: consistency distillation's grid size N and metric; rollout: the CRPS
    method's autoregressive steps per target (forecast teachers; 1: one step from true states);
    noise_pool: the CRPS student's ``model.noise_pool`` (block-constant input noise; None: the
    teacher's);
    store: the training store when it moved since the teacher was trained; optim, loop: as in
    training (``loop.steps`` is set from ``stage_steps``)."""

    teacher: str
    out: str
    method: Literal["progressive", "consistency", "crps"] = "progressive"
    teacher_steps: int = 16
    min_steps: int = 1
    stage_steps: int = 500
    levels: int = 18
    distance: Distance = "pseudo_huber"
    rollout: int = 1
    noise_pool: int | None = None
    store: str | None = None
    weights: Literal["ema", "model"] = "ema"
    seed: int = 0
    device: DeviceName = "auto"
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=0, lr_schedule="constant")
    )
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(checkpoint_every=250))

    def __post_init__(self) -> None:
        at_least_one(self, "teacher_steps", "min_steps", "stage_steps", "rollout")
        if self.rollout > 1 and self.method != "crps":
            raise ValueError(f"rollout={self.rollout} needs method: crps, got {self.method}")
        if self.noise_pool is not None and self.method != "crps":
            raise ValueError(f"noise_pool needs method: crps, got {self.method}")
        if self.method == "progressive":
            ratio = self.teacher_steps / self.min_steps
            if self.teacher_steps <= self.min_steps or ratio != 2 ** round(math.log2(ratio)):
                raise ValueError(
                    f"teacher_steps={self.teacher_steps} must be min_steps={self.min_steps} "
                    "times a power of two (at least 2)"
                )
        if self.levels < 2:
            raise ValueError(f"levels must be at least 2, got {self.levels}")


def progressive_stages(cfg: DistillConfig) -> list[int]:
    """The student step counts, largest first: ``teacher_steps/2, ..., min_steps``."""
    out, n = [], cfg.teacher_steps // 2
    while n >= cfg.min_steps:
        out.append(n)
        n //= 2
    return out


def _stage_done(run_dir: Path, steps: int) -> bool:
    ckpt = latest_checkpoint(run_dir) if run_dir.exists() else None
    return ckpt is not None and ckpt.name == f"step_{steps:09d}"


def run_distillation(cfg: DistillConfig) -> dict[str, Any]:
    """Run every stage (skipping finished ones); returns and writes ``OUT/distill.json``."""
    device = resolve_device(cfg.device)
    # a CRPS student starts from the teacher's weights unclipped: a clip would stop the gradient
    # of the spread (the teacher is not called)
    teacher, tcfg, meta = load_denoiser(
        cfg.teacher, cfg.weights, device=str(device), clip=cfg.method != "crps"
    )
    if cfg.store is not None:
        tcfg = replace(tcfg, data=replace(tcfg.data, store=cfg.store))
    _check_teacher(cfg, tcfg)
    schedule = teacher.schedule
    if cfg.method == "consistency":
        consistency_grid(schedule, cfg.levels)  # a bad grid fails before any work
    data, layout = _data(cfg, tcfg)
    train_ds, val_ds, to_batch, store_meta = data.train, data.valid, data.to_batch, data.metadata
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    # the teacher's label dropout, so that the guided (unconditional) branch is distilled too
    loop = replace(
        cfg.loop, steps=cfg.stage_steps, sample_every=0, cfg_dropout=tcfg.loop.cfg_dropout
    )
    sd = tcfg.model.sigma_data
    students, start = [], time.perf_counter()
    stages = progressive_stages(cfg) if cfg.method == "progressive" else [0]
    for k, n in enumerate(stages):
        name = f"steps_{n}" if n else cfg.method
        run_dir = out / name
        scfg = _student_config(cfg, tcfg, run_dir)
        # a teacher drawing the same pool already has the hook, and its copy keeps it
        new_pool = 0 if scfg.model.noise_pool == tcfg.model.noise_pool else scfg.model.noise_pool
        student, sampling, loss_fn = _student(cfg, teacher, n, device, sd, layout, new_pool)
        info = {"method": cfg.method, "teacher": str(meta["checkpoint"]), **sampling}
        if cfg.rollout > 1:
            info["rollout"] = cfg.rollout
        if not _stage_done(run_dir, cfg.stage_steps):
            train(
                student,
                schedule,
                train_ds,
                to_batch,
                loop=loop,
                optim=cfg.optim,
                run_dir=run_dir,
                config=to_dict(scfg),
                seed=member_seed(cfg.seed, 7, k),
                device=device,
                resume=run_dir if latest_checkpoint(run_dir) else None,
                val_dataset=val_ds,
                metadata={**store_meta, "distilled": info},
                loss_fn=loss_fn,
            )
        students.append({"run": str(run_dir), **info})
        if cfg.method == "progressive":
            teacher, _, _ = load_denoiser(run_dir, "ema", device=str(device))
    summary = {
        "teacher": cfg.teacher,
        "method": cfg.method,
        "students": students,
        "seconds": time.perf_counter() - start,
        "config": to_dict(cfg),
    }
    write_json(out / "distill.json", summary)
    return summary


def _check_teacher(cfg: DistillConfig, tcfg) -> None:
    """Refuse teachers that cannot be distilled this way: regression models, CRPS generators
    (except for a CRPS rollout stage), kinds other than score models, another noise pool."""
    crps_stage = tcfg.loop.objective == "crps" and cfg.method == "crps" and cfg.rollout > 1
    if tcfg.loop.objective in ("regression", "crps") and not crps_stage:
        raise ValueError(
            f"{cfg.teacher}: cannot distil a loop.objective: {tcfg.loop.objective} model"
        )
    if tcfg.model.noise_pool and cfg.noise_pool not in (None, tcfg.model.noise_pool):
        raise ValueError(f"noise_pool: {cfg.noise_pool}: the teacher {cfg.teacher} draws "
                         f"model.noise_pool: {tcfg.model.noise_pool}; leave noise_pool unset")  # fmt: skip
    if tcfg.model.kind not in ("score", "learned_variance") or (
        cfg.method == "crps" and tcfg.model.kind != "score"
    ):
        raise ValueError(f"{cfg.teacher}: cannot distil a {tcfg.model.kind!r} model")


def _student_config(cfg: DistillConfig, tcfg, run_dir: Path):
    """The student's job config: the teacher's, with the student's model kind, noise pool and
    (CRPS) ``loop.objective: crps`` so that the jobs sample it as one (runner.check_sampling)."""
    kind = "consistency" if cfg.method == "consistency" else tcfg.model.kind
    pool = tcfg.model.noise_pool if cfg.noise_pool is None else cfg.noise_pool
    loop = replace(tcfg.loop, objective="crps") if cfg.method == "crps" else tcfg.loop
    model = replace(tcfg.model, kind=kind, noise_pool=pool)
    return replace(tcfg, out=str(run_dir), model=model, loop=loop)


def _data(cfg: DistillConfig, tcfg):
    """The teacher's training data, and (``rollout > 1``) the forecast layout of the rollout."""
    if cfg.rollout == 1:
        return task_data(tcfg), None
    if tcfg.data.task != "forecast":
        raise ValueError(f"rollout: {cfg.rollout} needs a forecast teacher (data.task: "
                         f"forecast); {cfg.teacher} is data.task: {tcfg.data.task}; "
                         "set rollout: 1")  # fmt: skip
    return get_task("forecast").rollout_data(tcfg.data, cfg.rollout)


def _student(cfg: DistillConfig, teacher, n: int, device, sd: float, layout=None, new_pool=0):
    """The student to train (a fresh module), how it is sampled, and its loss: progressive
    stage ``n``, the consistency model, or the CRPS generator (rolled out over ``layout``)."""
    schedule = teacher.schedule
    frozen = teacher.eval().requires_grad_(False)  # loaded fresh: no copy needed
    if cfg.method == "progressive":
        student = copy.deepcopy(teacher).train().requires_grad_(True)

        def loss_fn(fwd, den, x0, cond, mask, gen):
            return progressive_loss(fwd, frozen, x0, schedule, n, cond, mask=mask,
                                    sigma_data=sd, generator=gen)  # fmt: skip

        return student, {"sampler": "ddim", "steps": n, "spacing": "uniform_t"}, loss_fn
    if cfg.method == "crps":
        student = copy.deepcopy(teacher)
        top = top_sigma(schedule)  # as training's loop.objective: crps

        def loss_fn(fwd, den, x0, cond, mask, gen):
            return crps_loss(fwd, x0, top, cond, mask=mask, generator=gen)

        if cfg.rollout > 1:
            loss_fn = rollout_crps_loss(layout, top)
        if new_pool:  # a teacher with model.noise_pool has its hook already (copied)
            NoisePool(new_pool).attach(student)
        sampling = {"sampler": "consistency", "steps": 1, "spacing": "default"}
        return student.train().requires_grad_(True), sampling, loss_fn
    student = ConsistencyDenoiser(copy.deepcopy(teacher.net), teacher.precond, schedule)
    grid = consistency_grid(schedule, cfg.levels)

    def loss_fn(fwd, den, x0, cond, mask, gen):
        return consistency_loss(fwd, frozen, x0, grid, cond, mask=mask,
                                distance=cfg.distance, generator=gen)  # fmt: skip

    sampling = {"sampler": "consistency", "steps": 1, "spacing": "uniform_t"}
    return student.to(device).train().requires_grad_(True), sampling, loss_fn
