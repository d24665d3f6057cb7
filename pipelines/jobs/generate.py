"""``stdiff generate``: class-conditional samples with classifier-free guidance.

``D_w = D_u + w (D_c - D_u)`` (``diffusion.guidance``): ``w = 0`` is the unconditional model,
``w = 1`` the conditional one, ``w > 1`` trades diversity for fidelity. Sample ``i`` has its own
generator seeded from ``(seed, i)``, so results do not depend on the batch size. Output: a zarr
store with ``image (sample, channel, y, x)`` in [-1, 1] and ``label``, a PNG grid beside it and,
with ``classifier``, metrics in ``OUT.zarr.metrics.json``: the accuracy of the classifier on the
samples against the asked labels, and the Fréchet distance between the classifier's penultimate
features of the samples and of ``reference`` images (the store's test split) -- a Fréchet
distance on this project's Fashion-MNIST classifier, not ImageNet FID. An unconditional model
(no classes, e.g. one trained on MRI slices) draws from its prior: no labels, no guidance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr

from stdiff.datasets.atomic import atomic_path, write_json
from stdiff.datasets.outputs import claim_store, refuse_earlier, stamp
from stdiff.datasets.store import consolidate, open_store, stdiff_version
from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.guidance import classifier_free_guidance
from stdiff.diffusion.rng import member_generators
from stdiff.diffusion.samplers import check_options, sample
from stdiff.diffusion.schedules import Spacing
from stdiff.pipelines.engine.config import at_least_one, to_dict
from stdiff.pipelines.engine.device import DeviceName, autocast, resolve_device
from stdiff.pipelines.engine.latent import codec_from_metadata
from stdiff.pipelines.engine.runner import check_sampling, clip_report, load_denoiser
from stdiff.pipelines.tasks import require_job


@dataclass(frozen=True)
class GenerateConfig:
    """labels: the classes to draw (cycled over the ``n`` samples); None = every class.
    guidance: the CFG weight ``w >= 0``; rescale: CFG-rescale phi. reference: images store whose
    test split the Fréchet distance compares against (default: the checkpoint's training store)."""

    checkpoint: str
    out: str
    labels: tuple[int, ...] | None = None
    guidance: float = 1.0
    rescale: float = 0.0
    n: int = 64
    sampler: str = "heun"
    steps: int = 18
    spacing: Spacing = "default"
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    seed: int = 0
    classifier: str | None = None
    reference: str | None = None
    reference_n: int = 2000
    device: DeviceName = "auto"
    weights: Literal["ema", "model"] = "ema"
    clip_x0: bool = True  # clip predictions to the training data's range (engine.runner)
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.guidance >= 0:
            raise ValueError(f"guidance must be >= 0 (0 = unconditional), got {self.guidance}")
        if not 0 <= self.rescale <= 1:
            raise ValueError(f"rescale must lie in [0, 1], got {self.rescale}")
        at_least_one(self, "n", "steps", "batch_size", "reference_n")
        check_options(self.sampler, self.options)


def run_generation(cfg: GenerateConfig) -> dict[str, Any]:
    """Draw the samples, write them, score them; returns ``{"out", "seconds", "metrics"}``."""
    inputs = [cfg.checkpoint, cfg.classifier, cfg.reference]
    claim_store(cfg.out, "generate", inputs, cfg.overwrite, siblings=(".png", ".metrics.json"))
    refuse_earlier(cfg.out, "generate", cfg.overwrite)
    device = resolve_device(cfg.device)
    denoiser, tcfg, meta = load_denoiser(
        cfg.checkpoint, cfg.weights, device=str(device), clip=cfg.clip_x0
    )
    require_job(tcfg.data.task, "generate", cfg.checkpoint)
    check_sampling(tcfg, cfg.sampler, cfg.steps, cfg.checkpoint)
    labels = _labels(cfg, int(getattr(denoiser.net, "num_classes", 0)))
    sizes = meta.get("sizes") or _sizes(tcfg)
    shape = tuple(int(sizes[d]) for d in ("channel", "y", "x"))
    codec = codec_from_metadata(meta, device)  # a latent model: sample latents, then decode
    if codec is not None:
        shape = codec.shape
    y = torch.tensor([labels[i % len(labels)] for i in range(cfg.n)])
    guided = denoiser  # an unconditional model (e.g. MRI slices) draws from its prior
    if getattr(denoiser.net, "num_classes", 0):
        guided = classifier_free_guidance(denoiser, cfg.guidance, rescale=cfg.rescale)
    sigmas = denoiser.schedule.discretize(cfg.steps, cfg.spacing)
    start, out = time.perf_counter(), []
    for b0 in range(0, cfg.n, cfg.batch_size):
        lab = y[b0 : b0 + cfg.batch_size].to(device)
        gens = [
            member_generators(cfg.seed, [i], device=device)[0] for i in range(b0, b0 + len(lab))
        ]
        with autocast(device, True):
            x = sample(guided, (len(lab), *shape), sigmas, Condition(labels=lab),
                       sampler=cfg.sampler, generator=gens, device=device, **cfg.options)  # fmt: skip
        if codec is not None:
            with torch.no_grad():
                x = codec.decode(x.float())
        out.append(x.float().clamp(-1, 1).cpu())
    images = torch.cat(out).numpy()
    seconds = time.perf_counter() - start
    metrics: dict[str, Any] = {"seconds": seconds, "n": cfg.n, "guidance": cfg.guidance}
    if cfg.classifier:
        metrics.update(score_samples(images, y.numpy(), cfg, tcfg.data.store))
    _write(cfg, images, y.numpy(), metrics, meta)
    clip_report(denoiser, cfg.checkpoint, metrics)
    return {"out": cfg.out, "seconds": seconds, "metrics": metrics}


def _labels(cfg: GenerateConfig, classes: int) -> tuple[int, ...]:
    """The labels to draw: the asked ones, every class, or label 0 for an unconditional model
    (which takes no ``labels`` and no guidance other than 1)."""
    if classes == 0:
        if cfg.labels is not None or cfg.guidance != 1.0:
            raise ValueError(
                f"{cfg.checkpoint}: an unconditional model (no classes); drop --label and "
                "--guidance"
            )
        return (0,)
    labels = cfg.labels if cfg.labels is not None else tuple(range(classes))
    bad = [c for c in labels if not 0 <= c < classes]
    if bad or not labels:
        raise ValueError(f"labels {list(labels)}: each must be in 0..{classes - 1}")
    return labels


def _sizes(tcfg) -> dict[str, int]:
    """Image sizes of checkpoints written before ``sizes`` was in their metadata."""
    return dict(open_store(tcfg.data.store).sizes)


def score_samples(images: np.ndarray, labels: np.ndarray, cfg: GenerateConfig, store: str):
    """Classifier accuracy against the asked labels and the Fréchet distance to real images."""
    from stdiff.pipelines.jobs.classifier import classify, load_classifier
    from stdiff.pipelines.metrics.images import frechet_distance

    model, _ = load_classifier(cfg.classifier, device="cpu")
    pred, feats = classify(model, images)
    ref = open_store(cfg.reference or store)
    idx = (
        np.flatnonzero(ref["split"].values == 1)
        if "split" in ref
        else np.arange(ref.sizes["sample"])
    )
    ref_imgs = ref["image"].isel(sample=idx[: cfg.reference_n]).values
    _, ref_feats = classify(model, ref_imgs)
    return {
        "accuracy": float((pred == labels).mean()),
        "frechet_classifier": frechet_distance(feats, ref_feats),
        "reference_images": len(ref_feats),
    }


def _write(cfg: GenerateConfig, images, labels, metrics, meta) -> None:
    ds = xr.Dataset(
        {
            "image": (("sample", "channel", "y", "x"), images.astype(np.float32)),
            "label": ("sample", labels.astype(np.int64)),
        },
        attrs={
            "config": to_dict(cfg),
            "metrics": metrics,
            "stdiff_version": stdiff_version(),
            "checkpoint": meta.get("checkpoint", cfg.checkpoint),
        },
    )
    out = Path(cfg.out)
    with atomic_path(out) as tmp:
        ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False)
        stamp(tmp, "generate")
        consolidate(tmp)
    write_json(Path(f"{out}.metrics.json"), metrics)
    _grid(images, labels, Path(f"{out}.png"), f"guidance w = {cfg.guidance:g}")


def _grid(images: np.ndarray, labels: np.ndarray, path: Path, title: str, n: int = 64) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(images))
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.9 + 0.3), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i, 0], cmap="gray", vmin=-1, vmax=1)
            ax.set_title(str(int(labels[i])), fontsize=6, pad=1)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
