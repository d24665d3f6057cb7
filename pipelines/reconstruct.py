"""``stdiff reconstruct``: fill, extend, sharpen or reconstruct images with a trained denoiser.

Each selected image is degraded by the task's forward operator (``diffusion.operators``), then
``members`` reconstructions are drawn with a method of ``diffusion.inverse`` around any sampler:

==========  ===========================================  ===========================  ==========
task        operator                                     default method (sampler)     baseline
==========  ===========================================  ===========================  ==========
inpaint     mask ``thin``/``thick``/``half``/``lines``   RePaint (DDPM)               biharmonic
            or a user mask file (PNG, .npy, zarr)
outpaint    mask ``frame`` (a border of size/4 hidden)   RePaint (DDPM)               biharmonic
superres    average pooling by ``factor`` (2, 4)         data consistency (DDPM)      bicubic
deblur      Gaussian blur ``blur_sigma``                 DPS (DDPM)                   the input
mri         1-D Cartesian k-space mask, x``acceleration``  data consistency (PC)      zero-filled
            (``pattern`` uniform/gaussian, 8 % centre)
ct          parallel-beam Radon, ``views`` angles        consistency, CGLS (DDPM)     FBP (iradon)
==========  ===========================================  ===========================  ==========

Masks and member noise are seeded per image (``seed``, image index), so results do not depend
on the batch size. Output zarr (written to a temporary store, then renamed): ``truth``,
``degraded`` (what a person sees of the measurement: masked, low-resolution, zero-filled or FBP
image), ``baseline``, ``samples (image, member, ...)``, ``mean``, ``std`` and, for masks,
``mask``; metrics (PSNR/SSIM of the member mean and of the baseline, data range 2 on the model's
[-1, 1] scale; the share of pixels whose truth lies within mean +- 2 std) in the ``metrics``
attribute and ``OUT.zarr.metrics.json``; a PNG grid (input, baseline, mean, std, truth) beside it.
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
from stdiff.datasets.degradations import INPAINT_KINDS, cartesian_mask, inpaint_mask, load_user_mask
from stdiff.datasets.images import require_images_store
from stdiff.datasets.outputs import claim_store, refuse_earlier, stamp
from stdiff.datasets.store import consolidate, open_store, stdiff_version
from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.inverse import InverseConfig, solve, summarize
from stdiff.diffusion.operators import Blur, Downsample, FourierMask, Mask, Radon
from stdiff.diffusion.rng import member_generators, member_seed
from stdiff.pipelines.config import at_least_one, to_dict
from stdiff.pipelines.device import DeviceName, resolve_device
from stdiff.pipelines.image_metrics import psnr, ssim
from stdiff.pipelines.training_job import load_denoiser

SIDE = (".png", ".metrics.json")  # written beside the store
Task = Literal["inpaint", "outpaint", "superres", "deblur", "mri", "ct"]
TASKS: tuple[str, ...] = ("inpaint", "outpaint", "superres", "deblur", "mri", "ct")
DEFAULTS: dict[str, tuple[str, str]] = {  # task -> (method, sampler)
    "inpaint": ("repaint", "ddpm"),
    "outpaint": ("repaint", "ddpm"),
    "superres": ("consistency", "ddpm"),
    "deblur": ("dps", "ddpm"),
    "mri": ("consistency", "pc"),
    "ct": ("consistency", "ddpm"),  # A^+ by CGLS; DPS with --method dps
}


@dataclass(frozen=True)
class ReconstructConfig:
    """One reconstruction run (see the module docstring); ``method``/``sampler`` default per task.

    ``noise_std``: Gaussian measurement noise added to ``A x`` (model units); ``use_labels``: give
    a class-conditional model the images' labels (otherwise its null class)."""

    checkpoint: str
    data: str
    out: str
    task: Task = "inpaint"
    mask: str = "thick"
    factor: int = 2
    acceleration: int = 4
    pattern: Literal["uniform", "gaussian"] = "uniform"
    views: int = 30
    blur_sigma: float = 1.5
    noise_std: float = 0.0
    method: str | None = None
    sampler: str | None = None
    steps: int = 50
    options: dict[str, Any] = field(default_factory=dict)
    jump_length: int = 10
    resample: int = 10
    zeta: float = 1.0
    members: int = 4
    max_images: int = 16
    split: Literal["test", "train", "valid", "all"] = "test"
    batch_size: int = 16
    seed: int = 0
    use_labels: bool = False
    device: DeviceName = "auto"
    weights: Literal["ema", "model"] = "ema"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not known; choose one of {list(TASKS)}")
        at_least_one(self, "steps", "members", "max_images", "batch_size", "views", "factor")
        if self.noise_std < 0 or self.blur_sigma <= 0:
            raise ValueError("noise_std must be >= 0 and blur_sigma > 0")
        if (
            self.task == "inpaint"
            and self.mask not in INPAINT_KINDS
            and not Path(self.mask).exists()
        ):
            raise ValueError(
                f"mask {self.mask!r} is neither one of {list(INPAINT_KINDS)} nor an existing file"
            )
        self.inverse()  # validates method, sampler and their numbers

    def inverse(self) -> InverseConfig:
        method, sampler = DEFAULTS[self.task]
        return InverseConfig(
            method=self.method or method,  # type: ignore[arg-type]
            sampler=self.sampler or sampler,
            options=self.options,
            jump_length=self.jump_length,
            resample=self.resample,
            zeta=self.zeta,
        )


_SPLIT_CODES = {"train": 0, "test": 1, "valid": 2}


def _images(cfg: ReconstructConfig, meta: dict[str, Any]) -> tuple[np.ndarray, ...]:
    """(indices, images (N, C, H, W) in [-1, 1], labels) of the selected images.

    The pixels are scaled as the checkpoint's training data were: uint8 by ``x / 127.5 - 1``,
    float images by the checkpoint's ``image_mean``/``image_std`` when it has them (never the
    store's: the model's normalisation comes from its training data); a store laid out
    otherwise than the model's training store is refused (:func:`check_layout`)."""
    ds = open_store(cfg.data)
    require_images_store(ds, cfg.data)
    check_layout(ds, cfg, meta)
    if cfg.split == "all" or "split" not in ds:
        idx = np.arange(ds.sizes["sample"])
    else:
        idx = np.flatnonzero(ds["split"].values == _SPLIT_CODES[cfg.split])
    idx = idx[: cfg.max_images]
    if len(idx) == 0:
        raise ValueError(f"{cfg.data}: split {cfg.split!r} selects no image")
    raw = ds["image"].isel(sample=idx).values
    stats = meta.get("stats", {})
    if raw.dtype == np.uint8:
        img = raw.astype(np.float32) / 127.5 - 1.0
    else:
        img = raw.astype(np.float32)
        if "image_mean" in stats and "image_std" in stats:
            shape = (1, -1, 1, 1)
            mean = np.asarray(stats["image_mean"], np.float32).reshape(shape)
            img = (img - mean) / np.asarray(stats["image_std"], np.float32).reshape(shape)
        lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
        if not (np.isfinite(img).all() and lo >= -1.001 and hi <= 1.001):
            raise ValueError(
                f"{cfg.data}: images span [{lo:.3g}, {hi:.3g}], outside the model's range [-1, 1]"
            )
    labels = ds["label"].isel(sample=idx).values if "label" in ds else np.zeros(len(idx), int)
    return idx, img, labels


def check_layout(ds: xr.Dataset, cfg: ReconstructConfig, meta: dict[str, Any]) -> None:
    """Refuse, in one line naming both, images whose channels or size differ from the
    checkpoint's training images, or volume slices in other units or windowed otherwise (a fixed
    window, e.g. HU for CT, is part of what the model learnt; per-scan ``auto`` windows differ
    from scan to scan by design and are only checked to be ``auto`` on both sides)."""
    sizes = meta.get("sizes", {})
    shape = tuple(int(ds.sizes[d]) for d in ("channel", "y", "x"))
    trained = tuple(int(sizes.get(d, n)) for d, n in zip(("channel", "y", "x"), shape, strict=True))
    ckpt = meta.get("checkpoint", cfg.checkpoint)
    if sizes and trained != shape:
        c, h, w = shape
        tc, th, tw = trained
        raise ValueError(
            f"{cfg.data}: images are {h}x{w} with {c} channel(s) but the model {ckpt} was "
            f"trained on {th}x{tw} with {tc} channel(s)"
        )
    trained_on = meta.get("images", {})
    units, trained_units = ds.attrs.get("window_units"), trained_on.get("window_units")
    if units is not None and trained_units is not None and units != trained_units:
        raise ValueError(
            f"{cfg.data}: slices in {_units(units)} but the model {ckpt} was trained on slices "
            f"in {_units(trained_units)}"
        )
    ours, theirs = _window(ds.attrs), _window(trained_on)
    if ours is not None and theirs is not None and ours != theirs:
        raise ValueError(
            f"{cfg.data}: slices windowed {ours} but the model {ckpt} was trained on slices "
            f"windowed {theirs}: ingest with --window {_window_flag(trained_on)}"
        )


def _window(attrs: dict[str, Any]) -> str | None:
    """How volume slices were windowed, in words: ``per scan (auto)`` or ``to [lo, hi] HU``."""
    if attrs.get("window") is None:
        return None
    if attrs.get("window_mode", "auto") == "auto":
        return "per scan (auto)"
    lo, hi = attrs["window"]
    return f"to [{lo:g}, {hi:g}] {attrs.get('window_units', '')}".rstrip()


def _window_flag(attrs: dict[str, Any]) -> str:
    if attrs.get("window_mode", "auto") == "auto":
        return "auto"
    lo, hi = attrs["window"]
    return f"{lo:g},{hi:g}"


def _units(units: str) -> str:
    return f"{units} (a fixed window)" if units else "arbitrary units (a per-scan window)"


def _masks(cfg: ReconstructConfig, idx: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) bool known-pixel masks, one per image (seeded by ``seed`` and the index)."""
    if cfg.task == "inpaint" and cfg.mask not in INPAINT_KINDS:
        m = load_user_mask(cfg.mask, (size, size))
        return np.broadcast_to(m, (len(idx), size, size))
    kind = "frame" if cfg.task == "outpaint" else cfg.mask
    rng = [np.random.default_rng(member_seed(cfg.seed, 7, int(i))) for i in idx]
    return np.stack([inpaint_mask(kind, size, r) for r in rng])


def build_operator(cfg: ReconstructConfig, idx: np.ndarray, shape: tuple[int, ...]):
    """The task's operator for images of ``shape`` (N, C, H, W); errors before any work."""
    h, w = shape[-2:]
    if h != w:
        raise ValueError(f"{cfg.data}: images are {h}x{w}; reconstruct needs square images")
    if cfg.task in ("inpaint", "outpaint"):
        return Mask(torch.from_numpy(_masks(cfg, idx, h)[:, None].astype(np.float32)))
    if cfg.task == "superres":
        op = Downsample(cfg.factor)
    elif cfg.task == "deblur":
        op = Blur(cfg.blur_sigma)
    elif cfg.task == "mri":
        rng = np.random.default_rng(member_seed(cfg.seed, 8))
        cols = cartesian_mask(w, cfg.acceleration, kind=cfg.pattern, rng=rng)
        op = FourierMask(torch.from_numpy(cols.astype(np.float32)))
    else:
        op = Radon(h, n_views=cfg.views)
    op.check(shape)
    return op


def _rows(op, sl: slice):
    """The operator restricted to a batch of images (per-image masks are sliced)."""
    if isinstance(op, Mask) and op.mask.shape[0] > 1:
        return Mask(op.mask[sl])
    return op


def physical(op, y: torch.Tensor) -> torch.Tensor:
    """The measurement of the physical image ``(x + 1) / 2`` (intensities >= 0) from that of
    the model-scale image ``x``: ``A`` is linear, so ``A((x + 1) / 2) = (y + A 1) / 2``."""
    ones = torch.ones((1, *op_image_shape(op, y)), dtype=torch.float32)
    return (y + op(ones)) / 2


def op_image_shape(op, y: torch.Tensor) -> tuple[int, int, int]:
    if isinstance(op, Radon):
        return (y.shape[1], op.size, op.size)
    return (y.shape[1], *y.shape[-2:])


def baseline(op, y: torch.Tensor, masks: np.ndarray | None) -> torch.Tensor:
    """The classical answer on the model scale: biharmonic inpainting, bicubic upsampling, the
    blurred input, the zero-filled inverse FFT magnitude, filtered back-projection (the last two
    of the physical image, as MRI and CT define them)."""
    if isinstance(op, Mask):
        from skimage.restoration import inpaint_biharmonic

        out = [
            inpaint_biharmonic(img[0].numpy(), ~m.astype(bool))[None]
            for img, m in zip(y, masks, strict=True)
        ]
        return torch.from_numpy(np.stack(out)).float()
    if isinstance(op, Downsample):
        return torch.nn.functional.interpolate(
            y, scale_factor=op.factor, mode="bicubic", align_corners=False
        ).clamp(-1, 1)
    if isinstance(op, FourierMask):
        return (op.zero_filled(physical(op, y)) * 2 - 1).float()
    if isinstance(op, Radon):
        return fbp(op, physical(op, y)) * 2 - 1
    return y


def degraded_view(op, y: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """What a person sees of the measurement as an image: the masked image (0 where unknown),
    the nearest-upsampled low-resolution image, or the baseline (blurred, zero-filled, FBP)."""
    return op.pinv(y) if isinstance(op, Mask | Downsample) else base


def fbp(op: Radon, y: torch.Tensor) -> torch.Tensor:
    """Filtered back-projection (scikit-image ``iradon``, ramp filter) of each sinogram."""
    from skimage.transform import iradon

    angles = np.asarray(op.angles, dtype=np.float64)
    out = [
        [iradon(s.double().numpy(), theta=angles, filter_name="ramp", circle=True) for s in img]
        for img in y
    ]
    return torch.from_numpy(np.asarray(out)).float()


def run_reconstruction(cfg: ReconstructConfig, progress: bool = False) -> dict[str, Any]:
    """Run the job; returns ``{"out", "images", "seconds", "evals", "metrics"}``."""
    claim_store(cfg.out, "reconstruct", [cfg.data, cfg.checkpoint], cfg.overwrite, siblings=SIDE)
    refuse_earlier(cfg.out, "reconstruct", cfg.overwrite)
    device = resolve_device(cfg.device)
    denoiser, tcfg, meta = load_denoiser(cfg.checkpoint, cfg.weights, device=str(device))
    if tcfg.data.task != "images":
        raise ValueError(f"{cfg.checkpoint}: trained for {tcfg.data.task!r}, not images")
    idx, truth_np, labels = _images(cfg, meta)
    op = build_operator(cfg, idx, truth_np.shape)
    inv, start = cfg.inverse(), time.perf_counter()
    sigmas = denoiser.schedule.discretize(cfg.steps)
    truth = torch.from_numpy(truth_np)
    masks = op.mask[:, 0].numpy() if isinstance(op, Mask) else None
    samples, ys, evals = [], [], 0
    for b0 in range(0, len(idx), cfg.batch_size):
        sl = slice(b0, b0 + cfg.batch_size)
        bop, x = _rows(op, sl), truth[sl]
        noise = torch.Generator().manual_seed(member_seed(cfg.seed, 9, b0))
        y = bop(x)
        if cfg.noise_std > 0:
            y = y + cfg.noise_std * torch.randn(y.shape, generator=noise, dtype=y.dtype)
        ys.append(y)
        m, nb = cfg.members, x.shape[0]
        gens = [g for i in idx[sl] for g in member_generators(cfg.seed, m, int(i), device=device)]
        rep = _repeat_op(bop, m)
        cond = None
        if getattr(denoiser.net, "num_classes", 0):
            lab = torch.as_tensor(labels[sl]).repeat_interleave(m).to(device)
            cond = Condition(labels=lab)
            cond = cond if cfg.use_labels else cond.dropped()
        x_hat, e = solve(
            denoiser,
            rep.to(device),
            y.repeat_interleave(m, 0).to(device),
            (nb * m, *x.shape[1:]),
            sigmas,
            inv,
            cond,
            generator=gens,
            device=device,
        )
        evals = e
        samples.append(x_hat.float().cpu().reshape(nb, m, *x.shape[1:]).clamp(-1, 1))
        if progress:
            print(f"  {min(b0 + cfg.batch_size, len(idx))}/{len(idx)} images", flush=True)
    draws = torch.cat(samples)
    y_all = torch.cat(ys)
    mean, std = summarize(draws)
    base = baseline(op, y_all, masks)
    seen = degraded_view(op, y_all, base)
    seconds = time.perf_counter() - start
    metrics = _metrics(truth, mean, std, base, draws, evals, seconds, len(idx))
    _write(cfg, idx, truth, seen, base, draws, mean, std, masks, metrics, meta)
    return {"out": cfg.out, "images": len(idx), "seconds": seconds, "evals": evals,
            "metrics": metrics}  # fmt: skip


def _repeat_op(op, m: int):
    if isinstance(op, Mask) and op.mask.shape[0] > 1:
        return Mask(op.mask.repeat_interleave(m, 0))
    return op


def _metrics(truth, mean, std, base, draws, evals, seconds, n) -> dict[str, Any]:
    inside = ((truth - mean).abs() <= 2 * std).float().mean()
    member = psnr(draws.flatten(0, 1), truth.repeat_interleave(draws.shape[1], 0), 2.0)
    return {
        "psnr": float(psnr(mean, truth, 2.0).mean()),
        "ssim": float(ssim(mean, truth, 2.0).mean()),
        "psnr_member": float(member.mean()),
        "baseline_psnr": float(psnr(base, truth, 2.0).mean()),
        "baseline_ssim": float(ssim(base, truth, 2.0).mean()),
        "mean_std": float(std.mean()),
        "within_2std": float(inside),
        "evals": evals,
        "seconds": seconds,
        "images": n,
        "members": int(draws.shape[1]),
    }


def _write(cfg, idx, truth, seen, base, draws, mean, std, masks, metrics, meta) -> None:
    dims = ("image", "channel", "y", "x")
    data = {
        "truth": (dims, truth.numpy()),
        "degraded": (dims, seen.float().numpy()),
        "baseline": (dims, base.float().numpy()),
        "samples": (("image", "member", *dims[1:]), draws.numpy()),
        "mean": (dims, mean.numpy()),
        "std": (dims, std.numpy()),
    }
    if masks is not None:
        data["mask"] = (("image", "y", "x"), np.ascontiguousarray(masks).astype(np.uint8))
    ds = xr.Dataset(data, coords={"image": idx})
    ds.attrs.update(
        {
            "config": to_dict(cfg),
            "metrics": metrics,
            "checkpoint": meta.get("checkpoint", cfg.checkpoint),
            "stdiff_version": stdiff_version(),
        }
    )
    out = Path(cfg.out)
    with atomic_path(out) as tmp:
        ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False)
        stamp(tmp, "reconstruct")
        consolidate(tmp)
    write_json(Path(f"{out}.metrics.json"), metrics)
    plot_grid(ds, Path(f"{out}.png"), title=f"{cfg.task}: {cfg.inverse().method}")


def plot_grid(ds: xr.Dataset, path: Path, title: str = "", rows: int = 6) -> None:
    """A PNG grid: one row per image; input, baseline, mean, std, truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(rows, ds.sizes["image"])
    cols = ["degraded", "baseline", "mean", "std", "truth"]
    fig, axes = plt.subplots(n, len(cols), figsize=(1.6 * len(cols), 1.6 * n), squeeze=False)
    for r in range(n):
        for c, name in enumerate(cols):
            a = ds[name].isel(image=r, channel=0).values
            ax = axes[r, c]
            if name == "std":
                ax.imshow(a, cmap="magma", vmin=0)
            else:
                ax.imshow(a, cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
