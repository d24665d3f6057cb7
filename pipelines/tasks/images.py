"""The images task (``task: images``): ``x0`` is the image in [-1, 1], the condition its class
label (with ``loop.cfg_dropout`` the label is dropped for classifier-free guidance). Its
checkpoints are read by ``stdiff generate`` (class-conditional samples) and ``stdiff
reconstruct`` (inverse problems: inpainting, super-resolution, MRI, CT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from stdiff.datasets.images import require_images_store
from stdiff.datasets.store import open_store
from stdiff.datasets.windows import SampleWindows
from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.precond import Denoiser
from stdiff.diffusion.rng import member_seed
from stdiff.diffusion.samplers import sample
from stdiff.pipelines.tasks.base import SampleFn, TaskData, limit, store_metadata
from stdiff.pipelines.tasks.dumps import pyplot, save_figure

VARIABLES = ["image", "label"]


def image_condition(labels: torch.Tensor | None) -> Condition | None:
    """The condition of class ``labels`` ``(B,)`` (None: unconditional)."""
    return None if labels is None else Condition(labels=labels.long())


def images_batch(batch: dict, gen: torch.Generator):
    """``to_batch`` of the images task: the image and its label; every pixel is scored."""
    return batch["image"], image_condition(batch["label"]), None


def image_split(ds, store: str) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation samples of an images store (validation: split 2 when the store
    has one, else the test split 1); a store the image tasks cannot read or without training
    images is refused in one line."""
    require_images_store(ds, store)
    if "split" not in ds:
        return np.arange(ds.sizes["sample"]), np.arange(0)
    split = ds["split"].values
    train_idx = np.flatnonzero(split == 0)
    if len(train_idx) == 0:
        raise ValueError(
            f"{store}: no training images (split train), only {len(split)} for inference; train "
            "on a store with a training split, or ingest this source again with --split train"
        )
    val_idx = np.flatnonzero(split == 2)
    return train_idx, val_idx if len(val_idx) else np.flatnonzero(split == 1)


def image_metadata(ds) -> dict[str, Any]:
    """How an images store's pixels were made, kept in the checkpoint so that inference on
    another store can check it: the intensity window of volume slices (``[lo, hi]``, its units),
    the display orientation, the classes and the pixel type."""
    keys = ("window", "window_mode", "window_units", "display_up", "display_left", "classes")
    out = {k: ds.attrs[k] for k in keys if k in ds.attrs}
    return {**out, "dtype": str(ds["image"].dtype)}


class ImagesTask:
    """``task: images`` (see the module docstring)."""

    name = "images"
    channel_dim = 1  # x0's image channels: each clipped to its own training range
    jobs = ("generate", "reconstruct")

    def validate(self, data) -> None:
        return None

    def check_store(self, ds, data) -> None:
        require_images_store(ds, data.store)

    def net_params(self, data, model) -> dict[str, Any]:
        """``in_channels`` follows the store's image channels (filled in when the config omits
        it; a different value is refused, naming the key). Not for latent models, whose net
        sees the codec's channels, nor for the autoencoder, which names its own."""
        params = dict(model.params)
        if data.latent or model.net not in ("dit", "dit_custom", "unet"):
            return params
        have = int(open_store(data.store).sizes["channel"])
        given = params.setdefault("in_channels", have)
        if given != have:
            raise ValueError(
                f"model.params.in_channels is {given} but the images of {data.store} have "
                f"{have} channel(s); set model.params.in_channels={have} or leave it out"
            )
        return params

    def datasets(self, data) -> TaskData:
        ds = open_store(data.store)
        train_idx, val_idx = image_split(ds, data.store)
        train = SampleWindows(data.store, "sample", VARIABLES, indices=limit(train_idx, data.max_samples))  # fmt: skip
        valid = SampleWindows(data.store, "sample", VARIABLES, indices=val_idx) if len(val_idx) else None  # fmt: skip
        meta = {**store_metadata(ds, VARIABLES), "images": image_metadata(ds)}
        return TaskData(train, valid, images_batch, meta)

    def sample_dump(self, data, model, seed, items) -> SampleFn | None:
        shape = tuple(items[0]["image"].shape)
        return image_dump(shape, int(model.params.get("num_classes", 0)), seed)


TASK = ImagesTask()


def image_dump(
    shape: tuple[int, ...], num_classes: int, seed: int, n: int = 16, steps: int = 20
) -> SampleFn:
    """A grid of ``n`` images (labels ``0, 1, ...`` cycling when class-conditional)."""

    @torch.no_grad()
    def dump(ema: Denoiser, step: int, folder: Path) -> dict[str, float]:
        device = next(ema.parameters()).device
        labels = torch.arange(n, device=device) % num_classes if num_classes else None
        cond = image_condition(labels)
        gen = torch.Generator(device=device).manual_seed(member_seed(seed, 7))
        sigmas = ema.schedule.discretize(steps)
        x = sample(ema, (n, *shape), sigmas, cond, sampler="dpmpp_2m", generator=gen, device=device)
        img = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
        cols = int(np.ceil(np.sqrt(n)))
        plt = pyplot()
        fig, axes = plt.subplots(cols, cols, figsize=(cols * 1.2, cols * 1.2 + 0.3))
        for i, ax in enumerate(np.ravel(axes)):
            ax.axis("off")
            if i < n:
                im = img[i].transpose(1, 2, 0)
                ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray", vmin=0, vmax=255)
                if labels is not None:
                    ax.set_title(str(int(labels[i])), fontsize=7)
        fig.suptitle(f"step {step}", fontsize=8)
        save_figure(fig, folder / f"step_{step:09d}.png")
        return {}

    return dump
