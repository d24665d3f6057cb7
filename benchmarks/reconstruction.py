"""Reconstruction and class-conditional generation on real images: Fashion-MNIST and the brain MRI.

    .venv/bin/python -m benchmarks.reconstruction recon --write BENCHMARKS.md
    .venv/bin/python -m benchmarks.reconstruction guidance --write BENCHMARKS.md

* ``recon``: every task of ``stdiff reconstruct`` on held-back images, the diffusion answer
  (mean of ``--members`` samples) against the classical baseline (biharmonic inpainting, bicubic,
  zero-filled inverse FFT, filtered back-projection), and inpainting with RePaint's full schedule
  (250 steps, jump 10, 10 resamples: 2,410 evaluations) against cheaper schedules and plain
  replacement. PSNR/SSIM on the [-1, 1] scale (data range 2), member mean against the truth.
* ``guidance``: the class-conditional DiT sampled at several classifier-free guidance weights;
  the project's Fashion-MNIST classifier gives the accuracy of the samples against the asked
  labels and a Fréchet distance between its penultimate features of the samples and of held-back
  test images (a Fréchet distance on this classifier, not ImageNet FID); the mean per-class
  feature spread measures diversity.

Figures: PNG grids go to ``benchmarks/figures/recon_*.png`` and ``guidance_*.png``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from benchmarks.report import emit_section
from stdiff.pipelines.jobs.generate import GenerateConfig, run_generation
from stdiff.pipelines.jobs.reconstruct import ReconstructConfig, run_reconstruction

REPO = Path(__file__).resolve().parent.parent
FIG = REPO / "benchmarks/figures"

# (label, model, store, task, overrides)
FMNIST, BRAIN = "fmnist", "brain"
RECON_ROWS: list[tuple[str, str, str, dict]] = [
    ("inpaint thick: RePaint full (250 steps, jump 10, 10 resamples)", FMNIST, "inpaint",
     {"steps": 250, "jump_length": 10, "resample": 10}),
    ("inpaint thick: RePaint 100 steps, jump 10, 5 resamples", FMNIST, "inpaint",
     {"steps": 100, "jump_length": 10, "resample": 5}),
    ("inpaint thick: RePaint 50 steps, jump 5, 5 resamples", FMNIST, "inpaint",
     {"steps": 50, "jump_length": 5, "resample": 5}),
    ("inpaint thick: replacement, DDPM 50", FMNIST, "inpaint", {"method": "replacement"}),
    ("inpaint thick: DiffPIR 20 steps (lam 7, mix 0.3)", FMNIST, "inpaint",
     {"method": "diffpir", "steps": 20}),
    ("inpaint thick: DiffPIR 100 steps (lam 7, mix 0.3)", FMNIST, "inpaint",
     {"method": "diffpir", "steps": 100}),
    ("inpaint thick: DiffPIR 100 steps (lam 7, mix 1)", FMNIST, "inpaint",
     {"method": "diffpir", "steps": 100, "mix": 1.0}),
    ("inpaint thick: DPS, DDPM 50", FMNIST, "inpaint", {"method": "dps", "zeta": 1.0}),
    ("inpaint half: RePaint 50 steps, jump 5, 5 resamples", FMNIST, "inpaint",
     {"mask": "half", "steps": 50, "jump_length": 5, "resample": 5}),
    ("outpaint (frame): RePaint 50 steps, jump 5, 5 resamples", FMNIST, "outpaint",
     {"steps": 50, "jump_length": 5, "resample": 5}),
    ("super-resolution x2: data consistency, DDPM 50", FMNIST, "superres", {"factor": 2}),
    ("super-resolution x4: data consistency, DDPM 50", FMNIST, "superres", {"factor": 4}),
    ("super-resolution x4: DiffPIR 20 steps (lam 7, mix 0.3)", FMNIST, "superres",
     {"factor": 4, "method": "diffpir", "steps": 20}),
    ("super-resolution x4: DiffPIR 100 steps (lam 7, mix 0.3)", FMNIST, "superres",
     {"factor": 4, "method": "diffpir", "steps": 100}),
    ("MRI x4 uniform: data consistency, PC 50", BRAIN, "mri", {"acceleration": 4}),
    ("MRI x8 uniform: data consistency, PC 50", BRAIN, "mri", {"acceleration": 8}),
    ("MRI x4 uniform: DiffPIR 100 steps (lam 7, mix 0.3)", BRAIN, "mri",
     {"acceleration": 4, "method": "diffpir", "steps": 100}),
    ("MRI x8 uniform: DiffPIR 100 steps (lam 7, mix 0.3)", BRAIN, "mri",
     {"acceleration": 8, "method": "diffpir", "steps": 100}),
    ("MRI x4 Gaussian: data consistency, PC 50", BRAIN, "mri",
     {"acceleration": 4, "pattern": "gaussian"}),
    ("MRI x8 Gaussian: data consistency, PC 50", BRAIN, "mri",
     {"acceleration": 8, "pattern": "gaussian"}),
    ("CT 30 views: consistency (CGLS 30), DDPM 50", BRAIN, "ct", {"views": 30}),
    ("CT 15 views: consistency (CGLS 30), DDPM 50", BRAIN, "ct", {"views": 15}),
    ("CT 30 views: DiffPIR 100 steps (lam 7, mix 0.3)", BRAIN, "ct",
     {"views": 30, "method": "diffpir", "steps": 100}),
    ("CT 30 views: DPS (zeta 0.1), DDPM 50", BRAIN, "ct",
     {"views": 30, "method": "dps", "zeta": 0.1}),
    ("deblur sigma 1.5: consistency (CGLS 30), DDPM 50", BRAIN, "deblur",
     {"method": "consistency"}),
    ("deblur sigma 1.5: DPS (zeta 0.1), DDPM 50", BRAIN, "deblur", {"zeta": 0.1}),
    ("super-resolution x4 (brain): data consistency, DDPM 50", BRAIN, "superres", {"factor": 4}),
    ("inpaint thick (brain): RePaint 50 steps, jump 5, 5 resamples", BRAIN, "inpaint",
     {"steps": 50, "jump_length": 5, "resample": 5}),
    ("inpaint thick (brain): DiffPIR 100 steps (lam 7, mix 0.3)", BRAIN, "inpaint",
     {"method": "diffpir", "steps": 100}),
    ("inpaint thick (brain): DiffPIR 100 steps (lam 7, mix 1)", BRAIN, "inpaint",
     {"method": "diffpir", "steps": 100, "mix": 1.0}),
    ("CT 15 views: DiffPIR 100 steps (lam 7, mix 0.3)", BRAIN, "ct",
     {"views": 15, "method": "diffpir", "steps": 100}),
]  # fmt: skip
BASELINES = {"inpaint": "biharmonic", "outpaint": "biharmonic", "superres": "bicubic",
             "mri": "zero-filled", "ct": "FBP (iradon, ramp)", "deblur": "blurred input"}  # fmt: skip


def recon(args, tmp: Path) -> str:
    models = {
        FMNIST: (args.fmnist_model, args.fmnist_store),
        BRAIN: (args.brain_model, args.brain_store),
    }
    rows = [
        f"Held-back images: {args.images} per row (Fashion-MNIST test split; brain slices held back "
        f"in blocks), {args.members} samples each; PSNR/SSIM of the sample mean. Models: "
        f"`{args.fmnist_model}`, `{args.brain_model}`.",
        "",
        "| task and method | model | evals | PSNR dB | SSIM | baseline | baseline PSNR / SSIM | "
        "truth within mean ± 2 std | wall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, model, task, over in RECON_ROWS:
        if (args.only and not any(k in label for k in args.only)) or (
            args.model and model != args.model
        ):
            continue
        ckpt, store = models[model]
        out = tmp / f"r{len(rows)}.zarr"
        cfg = ReconstructConfig(checkpoint=str(ckpt), data=str(store), out=str(out), task=task,
                                members=args.members, max_images=args.images,
                                batch_size=args.images, seed=0, **over)  # type: ignore[arg-type]  # fmt: skip
        r = run_reconstruction(cfg)
        m = r["metrics"]
        rows.append(
            f"| {label} | {model} | {m['evals']} | {m['psnr']:.2f} | {m['ssim']:.3f} | "
            f"{BASELINES[task]} | {m['baseline_psnr']:.2f} / {m['baseline_ssim']:.3f} | "
            f"{m['within_2std']:.2f} | {m['seconds']:.0f} s |"
        )
        print(rows[-1], flush=True)
        name = label.split(":")[0].replace(" ", "_").replace("(", "").replace(")", "")
        FIG.mkdir(parents=True, exist_ok=True)
        if "full" in label or not (FIG / f"recon_{model}_{name}.png").exists() or args.figures:
            shutil.copy(f"{out}.png", FIG / f"recon_{model}_{name}.png")
    return "\n".join(rows)


def _spread(feats: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes of the RMS distance of a class's features to their class mean."""
    out = []
    for c in np.unique(labels):
        f = feats[labels == c]
        out.append(float(np.sqrt(((f - f.mean(0)) ** 2).sum(1).mean())))
    return float(np.mean(out))


def guidance(args, tmp: Path) -> str:
    from stdiff.pipelines.jobs.classifier import classify, load_classifier

    model, info = load_classifier(args.classifier)
    rows = [
        f"{args.n} samples per weight ({args.n // 10} per class), Heun {args.steps} steps "
        f"({2 * args.steps - 1} evaluations, each a doubled CFG batch); model `{args.dit_model}`; "
        f"classifier `{args.classifier}` (test accuracy {info.get('test_accuracy', float('nan')):.3f}). "
        "Fréchet distance on the classifier's 128-d features against 2,000 test images.",
        "",
        "| guidance w | classifier accuracy | Fréchet (classifier features) | per-class feature spread | wall |",
        "|---|---|---|---|---|",
    ]
    ref = xr.open_zarr(args.fmnist_store, consolidated=False)
    test = np.flatnonzero(ref["split"].values == 1)[:2000]
    _, ref_feats = classify(model, ref["image"].isel(sample=test).values)
    ref_spread = _spread(ref_feats, ref["label"].isel(sample=test).values)
    for w in args.weights:
        out = tmp / f"g{w}.zarr"
        r = run_generation(GenerateConfig(checkpoint=str(args.dit_model), out=str(out), guidance=w,
                                          n=args.n, steps=args.steps, classifier=str(args.classifier),
                                          batch_size=100, seed=0))  # fmt: skip
        m = r["metrics"]
        ds = xr.open_zarr(out, consolidated=False)
        _, feats = classify(model, ds["image"].values)
        spread = _spread(feats, ds["label"].values)
        rows.append(f"| {w:g} | {m['accuracy']:.3f} | {m['frechet_classifier']:.2f} | "
                    f"{spread:.2f} | {r['seconds']:.0f} s |")  # fmt: skip
        print(rows[-1], flush=True)
        FIG.mkdir(parents=True, exist_ok=True)
        shutil.copy(f"{out}.png", FIG / f"guidance_w{w:g}.png")
    rows.append(f"| test images (reference) | {info.get('test_accuracy', float('nan')):.3f} | 0 | "
                f"{ref_spread:.2f} | |")  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("phase", choices=["recon", "guidance"])
    ap.add_argument("--fmnist-model", type=Path, default=REPO / "outputs/train_fmnist_dit_cpu")
    ap.add_argument("--fmnist-store", type=Path, default=REPO / "outputs/fmnist.zarr")
    ap.add_argument("--brain-model", type=Path, default=REPO / "outputs/train_brain_unet")
    ap.add_argument("--brain-store", type=Path, default=REPO / "outputs/brain64.zarr")
    ap.add_argument("--dit-model", type=Path, default=REPO / "outputs/train_fmnist_dit_cpu")
    ap.add_argument("--classifier", type=Path, default=REPO / "outputs/fmnist_classifier")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--only", nargs="*", help="recon: rows whose label contains one of these")
    ap.add_argument("--figures", action="store_true", help="recon: overwrite every figure")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0, 7.0])
    ap.add_argument("--write", type=Path, help="markdown file whose section to replace")
    ap.add_argument("--section", help="section name in the markdown file (default: the phase)")
    ap.add_argument("--model", choices=[FMNIST, BRAIN], help="recon: only this model's rows")
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as t:
        body = recon(args, Path(t)) if args.phase == "recon" else guidance(args, Path(t))
    cmd = "`.venv/bin/python -m benchmarks.reconstruction " + " ".join(argv) + "`"
    title = {
        "recon": "Reconstruction: inpainting, super-resolution, MRI and CT against baselines",
        "guidance": "Class-conditional Fashion-MNIST: classifier-free guidance sweep",
    }[args.phase]
    if args.model:
        title += f" ({args.model})"
    name = args.section or args.phase
    emit_section(name, title, cmd, body, args.write)


if __name__ == "__main__":
    main()
