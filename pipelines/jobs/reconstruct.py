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

Any task also takes ``--method diffpir`` (DiffPIR: a proximal data step per evaluation, its own
sampler, ``lam`` and ``mix``; 20-100 evaluations where RePaint takes hundreds).

Masks and member noise are seeded per image (``seed``, image index), so results do not depend
on the batch size. Output zarr (written to a temporary store, then renamed): ``truth``,
``degraded`` (what a person sees of the measurement: masked, low-resolution, zero-filled or FBP
image), ``baseline``, ``samples (image, member, ...)``, ``mean``, ``std`` and, for masks,
``mask``; metrics (PSNR/SSIM of the member mean and of the baseline, data range 2 on the model's
[-1, 1] scale; the share of pixels whose truth lies within mean +- 2 std) in the ``metrics``
attribute and ``OUT.zarr.metrics.json``; a PNG grid (input, baseline, mean, std, truth) beside it.
"""

from __future__ import annotations

import json
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
from stdiff.datasets.outputs import claim_store, store_attrs
from stdiff.datasets.regions import RegionStore
from stdiff.datasets.store import open_store, stdiff_version
from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.inverse import InverseConfig, solve, summarize
from stdiff.diffusion.operators import Blur, Downsample, FourierMask, Mask, Radon
from stdiff.diffusion.rng import member_generators, member_seed
from stdiff.pipelines.engine.config import at_least_one, to_dict
from stdiff.pipelines.engine.device import DeviceName, resolve_device, trim_host_memory
from stdiff.pipelines.engine.runner import check_sampling, clip_report, load_denoiser
from stdiff.pipelines.metrics.images import psnr, ssim
from stdiff.pipelines.tasks import require_job

SIDE = (".png", ".metrics.json")  # written beside the store
Task = Literal["inpaint", "outpaint", "superres", "deblur", "mri", "ct"]
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
    a class-conditional model the images' labels (otherwise its null class); ``lam``, ``mix``:
    DiffPIR's data weight and noise mixing (``--method diffpir``, ``diffusion.inverse``)."""

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
    lam: float = 7.0
    mix: float = 0.3
    members: int = 4
    max_images: int = 16
    split: Literal["test", "train", "valid", "all"] = "test"
    batch_size: int = 16
    seed: int = 0
    use_labels: bool = False
    device: DeviceName = "auto"
    weights: Literal["ema", "model"] = "ema"
    clip_x0: bool = True  # clip predictions to the training data's range (engine.runner)
    overwrite: bool = False
    chunks: list[int] | None = None

    def __post_init__(self) -> None:
        if self.task not in OPERATORS:
            raise ValueError(f"task {self.task!r} is not known; choose one of {list(OPERATORS)}")
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
            lam=self.lam,
            mix=self.mix,
            sigma_y=self.noise_std,
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


def _masks(cfg: ReconstructConfig, idx: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) bool known-pixel masks, one per image (seeded by ``seed`` and the index)."""
    if cfg.task == "inpaint" and cfg.mask not in INPAINT_KINDS:
        m = load_user_mask(cfg.mask, size)
        return np.broadcast_to(m, (len(idx), *size))
    kind = "frame" if cfg.task == "outpaint" else cfg.mask
    rng = [np.random.default_rng(member_seed(cfg.seed, 7, int(i))) for i in idx]
    return np.stack([inpaint_mask(kind, size, r) for r in rng])


def _mri(cfg: ReconstructConfig, idx: np.ndarray, size: tuple[int, int]):
    rng = np.random.default_rng(member_seed(cfg.seed, 8))
    cols = cartesian_mask(size[1], cfg.acceleration, kind=cfg.pattern, rng=rng)
    return FourierMask(torch.from_numpy(cols.astype(np.float32)))


def _mask(cfg: ReconstructConfig, idx: np.ndarray, size: tuple[int, int]):
    return Mask(torch.from_numpy(_masks(cfg, idx, size)[:, None].astype(np.float32)))


# --task -> the forward operator for images of ``size`` (H, W) pixels (CT: square ones)
OPERATORS = {
    "inpaint": _mask,
    "outpaint": _mask,
    "superres": lambda cfg, idx, size: Downsample(cfg.factor),
    "deblur": lambda cfg, idx, size: Blur(cfg.blur_sigma),
    "mri": _mri,
    "ct": lambda cfg, idx, size: Radon(size[0], n_views=cfg.views),
}


def build_operator(cfg: ReconstructConfig, idx: np.ndarray, shape: tuple[int, ...]):
    """The task's operator for images of ``shape`` (N, C, H, W); errors before any work."""
    h, w = shape[-2:]
    if h != w and cfg.task == "ct":
        raise ValueError(
            f"{cfg.data}: images are {h}x{w}; CT reconstruction needs square images (ingest the "
            f"volume again with --image-size N, and train on that store)"
        )
    op = OPERATORS[cfg.task](cfg, idx, (h, w))
    if not isinstance(op, Mask):
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
    """Run the job; returns ``{"out", "images", "seconds", "evals", "metrics"?, "complete"}``.

    The output store is filled batch by batch (``datasets.regions``): a killed run computes only
    the missing batches, ``chunks`` restricts a run to some (a fan-out), and the store is scored
    and published once every batch is done."""
    claim_store(cfg.out, "reconstruct", [cfg.data, cfg.checkpoint], cfg.overwrite, siblings=SIDE)
    device = resolve_device(cfg.device)
    denoiser, tcfg, meta = load_denoiser(
        cfg.checkpoint, cfg.weights, device=str(device), clip=cfg.clip_x0
    )
    require_job(tcfg.data.task, "reconstruct", cfg.checkpoint)
    check_sampling(tcfg, None, 0, cfg.checkpoint)
    idx, truth_np, labels = _images(cfg, meta)
    op = build_operator(cfg, idx, truth_np.shape)
    masks = op.mask[:, 0].numpy() if isinstance(op, Mask) else None
    n_chunks = -(-len(idx) // cfg.batch_size)
    bad = [c for c in cfg.chunks or [] if not 0 <= c < n_chunks]
    if bad:
        raise ValueError(f"chunks {bad} are out of range: this job has {n_chunks} chunks")
    store = RegionStore(cfg.out, _fingerprint(cfg, meta), n_chunks, "reconstruct", cfg.overwrite)
    store.open(_template(idx, truth_np.shape, cfg, masks is not None))
    todo = [c for c in (cfg.chunks if cfg.chunks is not None else range(n_chunks))
            if not store.done(c)]  # fmt: skip
    start, sigmas = time.perf_counter(), denoiser.schedule.discretize(cfg.steps)
    job = (denoiser, op, torch.from_numpy(truth_np), labels, idx, masks, sigmas, device)
    for c in todo:
        sl = slice(c * cfg.batch_size, min(len(idx), (c + 1) * cfg.batch_size))
        if not store.write(c, _batch(cfg, job, sl), {"image": sl}):
            break  # an identical run published the output meanwhile
        trim_host_memory()  # else glibc's heap grows with every batch on the CPU
        if progress:
            print(f"  {sl.stop}/{len(idx)} images", flush=True)
    result: dict[str, Any] = {"out": cfg.out, "images": len(idx), "computed": todo,
                              "seconds": time.perf_counter() - start}  # fmt: skip
    clip_report(denoiser, cfg.checkpoint, result)

    def prepare(path: Path) -> None:
        result["metrics"] = _store_metrics(path, result["seconds"])
        result["evals"] = result["metrics"]["evals"]
        _attrs(path, cfg, result["metrics"], meta)

    result["complete"] = store.finish(prepare)
    result["pending"] = store.pending()
    if "metrics" in result:  # this run published: the metrics file and the picture beside it
        write_json(Path(f"{cfg.out}.metrics.json"), result["metrics"])
        published = xr.open_zarr(cfg.out, consolidated=False)
        plot_grid(published, Path(f"{cfg.out}.png"), title=f"{cfg.task}: {cfg.inverse().method}")
    elif store.is_published:  # an identical earlier run
        result["metrics"] = (store_attrs(cfg.out) or {}).get("metrics", {})
        result.update(evals=result["metrics"].get("evals"), unchanged=True)
    return result


def plan_chunks(cfg: ReconstructConfig) -> int:
    """How many output chunks (batches of images) the job has: what a fan-out distributes."""
    _, _, meta = load_denoiser(cfg.checkpoint, cfg.weights, device="cpu")
    return -(-len(_images(cfg, meta)[0]) // cfg.batch_size)


def _fingerprint(cfg: ReconstructConfig, meta: dict[str, Any]) -> str:
    """What changes the numbers of a run (not where it runs, its chunks or its output path)."""
    keep = {k: v for k, v in to_dict(cfg).items()
            if k not in ("out", "device", "chunks", "overwrite")}  # fmt: skip
    keep["checkpoint_path"] = meta.get("checkpoint", cfg.checkpoint)
    keep["checkpoint_id"] = meta.get("checkpoint_id", "")  # the weights, not only their path
    keep["data_hash"] = (store_attrs(cfg.data) or {}).get("content_hash", str(cfg.data))
    return json.dumps(keep, sort_keys=True, default=str)


def _template(idx: np.ndarray, shape: tuple[int, ...], cfg, with_mask: bool) -> xr.Dataset:
    """The lazy output store: one zarr chunk per batch of images."""
    import dask.array as da

    n, bs, img = len(idx), cfg.batch_size, tuple(shape[1:])
    dims = ("image", "channel", "y", "x")

    def zeros(sh, dtype=np.float32):
        return da.zeros(sh, dtype=dtype, chunks=(bs, *sh[1:]))

    data = {k: (dims, zeros((n, *img))) for k in ("truth", "degraded", "baseline", "mean", "std")}
    data["samples"] = (("image", "member", *dims[1:]), zeros((n, cfg.members, *img)))
    data["evals"] = (("image",), zeros((n,), np.int64))
    if with_mask:
        data["mask"] = (("image", "y", "x"), zeros((n, *img[1:]), np.uint8))
    return xr.Dataset(data, coords={"image": idx})


def _batch(cfg: ReconstructConfig, job: tuple, sl: slice) -> xr.Dataset:
    """Reconstruct the images ``sl``: measurement, members, their mean and std, the baseline."""
    denoiser, op, truth, labels, idx, masks, sigmas, device = job
    bop, x = _rows(op, sl), truth[sl]
    noise = torch.Generator().manual_seed(member_seed(cfg.seed, 9, sl.start))
    y = bop(x)
    if cfg.noise_std > 0:
        y = y + cfg.noise_std * torch.randn(y.shape, generator=noise, dtype=y.dtype)
    m, nb = cfg.members, x.shape[0]
    gens = [g for i in idx[sl] for g in member_generators(cfg.seed, m, int(i), device=device)]
    cond = None
    if getattr(denoiser.net, "num_classes", 0):
        cond = Condition(labels=torch.as_tensor(labels[sl]).repeat_interleave(m).to(device))
        cond = cond if cfg.use_labels else cond.dropped()
    x_hat, evals = solve(denoiser, _repeat_op(bop, m).to(device),
                         y.repeat_interleave(m, 0).to(device), (nb * m, *x.shape[1:]), sigmas,
                         cfg.inverse(), cond, generator=gens, device=device)  # fmt: skip
    draws = x_hat.float().cpu().reshape(nb, m, *x.shape[1:]).clamp(-1, 1)
    mean, std = summarize(draws)
    base = baseline(bop, y, None if masks is None else masks[sl])
    dims = ("image", "channel", "y", "x")
    data = {"truth": (dims, x.numpy()), "degraded": (dims, degraded_view(bop, y, base).float().numpy()),
            "baseline": (dims, base.float().numpy()), "mean": (dims, mean.numpy()),
            "std": (dims, std.numpy()), "samples": (("image", "member", *dims[1:]), draws.numpy()),
            "evals": (("image",), np.full(nb, int(evals), np.int64))}  # fmt: skip
    if masks is not None:
        data["mask"] = (("image", "y", "x"), np.ascontiguousarray(masks[sl]).astype(np.uint8))
    return xr.Dataset(data)


def _store_metrics(path: Path, seconds: float) -> dict[str, Any]:
    """The job's scores from the complete (not yet published) store."""
    ds = xr.open_zarr(path, consolidated=False)
    t = {k: torch.from_numpy(np.asarray(ds[k].values)) for k in
         ("truth", "mean", "std", "baseline", "samples")}  # fmt: skip
    evals = int(np.asarray(ds["evals"].values).max())
    return _metrics(t["truth"], t["mean"], t["std"], t["baseline"], t["samples"], evals,
                    seconds, ds.sizes["image"])  # fmt: skip


def _attrs(path: Path, cfg: ReconstructConfig, metrics: dict, meta: dict[str, Any]) -> None:
    """Provenance and metrics into the store's attributes."""
    import zarr

    attrs = {"config": to_dict(cfg), "metrics": metrics, "stdiff_version": stdiff_version(),
             "checkpoint": meta.get("checkpoint", cfg.checkpoint)}  # fmt: skip
    zarr.open_group(str(path), mode="r+").attrs.update(attrs)


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
