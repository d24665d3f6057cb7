"""Distillation, latent diffusion, learned variances and energy-based models on Fashion-MNIST.

    .venv/bin/python -m benchmarks.theory distill --write BENCHMARKS.md
    .venv/bin/python -m benchmarks.theory latent --write BENCHMARKS.md
    .venv/bin/python -m benchmarks.theory variance --write BENCHMARKS.md
    .venv/bin/python -m benchmarks.theory energy --write BENCHMARKS.md

Sample quality is the Fréchet distance between the penultimate features of the project's
Fashion-MNIST classifier (90.6 % test accuracy) on the samples and on 2,000 held-back test images
(not ImageNet FID; lower is better), and for class-conditional models the classifier's accuracy
on the asked labels. Wall times are for the whole batch on this CPU, one process.

* ``distill``: the teacher (train_fmnist_dit_cpu) with DDIM on the ``uniform_t`` grid and with
  Heun / DPM-Solver++(2M) on Karras steps, against its progressive students (8, 4, 2 steps) and
  its consistency-distilled student (1, 2 steps), at equal evaluations.
* ``latent``: the latent DiT (train_fmnist_ldm_cpu on the train_fmnist_ae latents) against the
  pixel DiT of the same size at equal training compute (wall time), plus the autoencoder's
  reconstruction PSNR on test images.
* ``variance``: the IDDPM model (train_fmnist_iddpm_cpu): variational bound in bits/dim on test
  images with its learned variances and with the fixed ones (beta, beta-tilde) of the same mean
  network, over the full T = 1000 steps and respaced to 100; samples at 25 / 50 / 100 steps.
* ``distill_impute``: the CSDI imputation teacher against its progressive students (PhysioNet).
* ``energy``: the energy-parameterised model against its score-parameterised twin: bits/dim from
  the probability-flow ODE (Hutchinson trace), samples with Heun, and annealed MALA correction.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.report import emit_section
from stdiff.datasets.store import open_store
from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.likelihood import log_likelihood
from stdiff.diffusion.samplers import sample
from stdiff.pipelines.engine.latent import codec_from_metadata
from stdiff.pipelines.engine.runner import load_denoiser
from stdiff.pipelines.jobs.classifier import classify, load_classifier
from stdiff.pipelines.metrics.images import frechet_distance

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "outputs"


class Scorer:
    """Classifier accuracy and Fréchet distance against held-back test images."""

    def __init__(self, classifier: Path, store: Path, n_ref: int = 2000) -> None:
        self.model, _ = load_classifier(classifier, device="cpu")
        ds = open_store(store)
        idx = np.flatnonzero(ds["split"].values == 1)[:n_ref]
        self.test = ds["image"].isel(sample=idx).values
        _, self.ref = classify(self.model, self.test)

    def __call__(self, images: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
        pred, feats = classify(self.model, images)
        out = {"fd": frechet_distance(feats, self.ref)}
        if labels is not None:
            out["acc"] = float((pred == labels).mean())
        return out

    def test_images(self, n: int) -> torch.Tensor:
        """The first ``n`` test images in [-1, 1], float32."""
        return torch.from_numpy(self.test[:n].astype(np.float32) / 127.5 - 1)


def draw(den, n, sampler, steps, spacing="default", *, labels=True, codec=None, seed=0, **opt):
    """``n`` samples (labels cycling 0..9 when ``labels``), decoded when ``codec``; returns
    ``(images uint8-range float in [-1, 1], labels, seconds)``."""
    shape = codec.shape if codec is not None else (1, 28, 28)
    y = torch.arange(n) % 10 if labels else None
    cond = Condition(labels=y) if labels else None
    sig = den.schedule.discretize(steps, spacing)
    t = time.perf_counter()
    x = sample(den, (n, *shape), sig, cond, sampler=sampler,
               generator=torch.Generator().manual_seed(seed), **opt)  # fmt: skip
    if codec is not None:
        with torch.no_grad():
            x = codec.decode(x)
    sec = time.perf_counter() - t
    return x.clamp(-1, 1).numpy(), (y.numpy() if labels else None), sec


def _row(label, evals, scores, sec, extra=""):
    acc = f"{scores['acc']:.3f}" if "acc" in scores else "-"
    return f"| {label} | {evals} | {scores['fd']:.2f} | {acc} | {sec:.1f} |{extra}"


HEAD = "| model / sampler | evaluations | Fréchet (classifier) | accuracy | seconds |\n|---|---|---|---|---|"


def distill(args, scorer: Scorer) -> str:
    teacher, _, _ = load_denoiser(args.teacher)
    rows = []
    for steps in (2, 4, 8, 16):
        x, y, s = draw(teacher, args.n, "ddim", steps, "uniform_t")
        rows.append(_row(f"teacher, DDIM {steps} (uniform_t)", steps, scorer(x, y), s))
    for name, steps, evals in (("heun", 5, 9), ("heun", 18, 35), ("dpmpp_2m", 8, 8)):
        x, y, s = draw(teacher, args.n, name, steps)
        rows.append(_row(f"teacher, {name} {steps} (Karras)", evals, scorer(x, y), s))
    info = json.loads((args.progressive / "distill.json").read_text())
    for st in info["students"]:
        den, _, _ = load_denoiser(st["run"])
        x, y, s = draw(den, args.n, "ddim", st["steps"], "uniform_t")
        rows.append(_row(f"progressive student, DDIM {st['steps']}", st["steps"], scorer(x, y), s))
    cd, _, _ = load_denoiser(args.consistency / "consistency")
    for steps in (1, 2, 4):
        x, y, s = draw(cd, args.n, "consistency", steps, "uniform_t")
        rows.append(_row(f"consistency student, {steps} step(s)", steps, scorer(x, y), s))
    return _table(rows, args.n, "class-conditional, labels cycling 0-9, no guidance")


def _table(rows, n, what) -> str:
    return f"{n} samples each ({what}).\n\n{HEAD}\n" + "\n".join(rows) + "\n"


def _speed(run: Path) -> tuple[float, int]:
    """(median samples/s, last step) from a run's metrics.jsonl."""
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln]
    return float(np.median([r["samples_per_s"] for r in recs])), recs[-1]["step"]


def latent(args, scorer: Scorer) -> str:
    lat, _, meta = load_denoiser(args.latent)
    codec = codec_from_metadata(meta, "cpu")
    rows = []
    test = scorer.test_images(500)
    with torch.no_grad():
        rec = codec.ae.decode(codec.ae.encode(test).mean, (28, 28))
    psnr = float((10 * torch.log10(4 / ((rec - test) ** 2).flatten(1).mean(1))).mean())
    ae_scores = scorer(rec.clamp(-1, 1).numpy(), None)
    pix_sps, _ = _speed(args.pixel)
    lat_sps, lat_steps = _speed(args.latent)
    for label, den, cdc in (("pixel DiT (4 x 96, patch 2, 196 tokens)", load_denoiser(args.pixel)[0], None),
                            ("latent DiT (4 x 96, patch 1, 49 tokens) + decoder", lat, codec)):  # fmt: skip
        x, y, s = draw(den, args.n, "heun", 18, codec=cdc)
        rows.append(_row(label + ", Heun 18", 35, scorer(x, y), s))
    # the pixel model at the training compute the latent model used
    lat_seconds = lat_steps * 32 / lat_sps
    step_eq = round(lat_seconds * pix_sps / 32)
    ck = sorted((args.pixel / "checkpoints").glob("step_*"))
    near = min(ck, key=lambda p: abs(int(p.name.split("_")[1]) - step_eq))
    den, _, _ = load_denoiser(near)
    x, y, s = draw(den, args.n, "heun", 18)
    rows.append(
        _row(f"pixel DiT at {near.name} (nearest to equal compute), Heun 18", 35, scorer(x, y), s)
    )
    head = (
        f"Autoencoder (train_fmnist_ae, 28x28x1 -> 7x7x4): reconstruction PSNR {psnr:.2f} dB on "
        f"500 test images; Fréchet of the reconstructions {ae_scores['fd']:.2f} (the floor for "
        f"the latent model).\n\nTraining throughput (median samples/s in metrics.jsonl, same "
        f"machine): pixel DiT {pix_sps:.1f}, latent DiT {lat_sps:.1f} (x{lat_sps / pix_sps:.1f}); "
        f"the latent run's {lat_steps} steps took ~{lat_seconds / 60:.1f} min, which the pixel "
        f"DiT spends on ~{step_eq} steps.\n\n"
    )
    return (
        head
        + _table(rows, args.n, "class-conditional, labels cycling, no guidance")
        + (
            "\n" + weather_autoencoder(args.weather_ae)
            if (args.weather_ae / "checkpoints").is_dir()
            else ""
        )
    )


def latent_speed(args, scorer: Scorer | None) -> str:
    """Seconds per training step (batch 32, forward + backward + Adam) of the trained pixel and
    latent DiTs, the latent one including the autoencoder's encoder, median of ``--repeats``
    after 3 warm-up steps; and seconds per sampler evaluation of 500 samples (the latent one
    without the final decode)."""
    import statistics

    from stdiff.diffusion.losses import denoising_loss
    from stdiff.pipelines.engine.latent import load_autoencoder

    ae, _, _ = load_autoencoder(args.fmnist_ae)
    rows = ["| model | tokens | train step (s) | one evaluation, 500 samples (s) |",
            "|---|---|---|---|"]  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 28, 28, generator=g) * 2 - 1
    y = torch.arange(32) % 10
    for name, run in (("pixel DiT (patch 2)", args.pixel), ("latent DiT (patch 1)", args.latent)):
        den, tcfg, _ = load_denoiser(run)
        latent = tcfg.data.latent is not None
        opt = torch.optim.Adam(den.train().parameters(), lr=1e-4)
        times = []
        for i in range(3 + args.repeats):
            t = time.perf_counter()
            with torch.no_grad():
                x0 = ae.encode(x).sample(g) if latent else x
            loss = denoising_loss(den, x0, den.schedule, Condition(labels=y), generator=g)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= 3:
                times.append(time.perf_counter() - t)
        den.eval()
        xs = torch.randn(500, *x0.shape[1:], generator=g)
        lab = Condition(labels=torch.arange(500) % 10)
        with torch.no_grad():
            t = time.perf_counter()
            for _ in range(3):
                den(xs, torch.full((500,), 1.0), lab)
            ev = (time.perf_counter() - t) / 3
        tokens = (x0.shape[-1] // tcfg.model.params["patch_size"]) ** 2
        rows.append(f"| {name} | {tokens} | {statistics.median(times):.3f} | {ev:.3f} |")
    return (
        f"Median of {args.repeats} steps, {torch.get_num_threads()} thread(s).\n\n"
        + "\n".join(rows)
        + "\n"
    )


def weather_autoencoder(run: Path) -> str:
    """Reconstruction RMSE (K) of the weather autoencoder on every 2014 state of the store,
    beside 2x2 average pooling + bilinear upsampling (4x fewer values; the latents: 3.4x)."""
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from stdiff.pipelines.engine.config import from_dict
    from stdiff.pipelines.engine.latent import load_autoencoder
    from stdiff.pipelines.engine.runner import TrainJobConfig, task_data

    ae, config, ckpt = load_autoencoder(run)
    cfg = from_dict(TrainJobConfig, config)
    test = replace(cfg.data, train_period=["2014-01-01", "2014-12-30"], valid_period=None)
    data = task_data(replace(cfg, data=test))
    ds, to_batch, meta = data.train, data.to_batch, data.metadata
    std = float(np.asarray(meta["weather"]["std"]).mean())  # one variable: its std (K)
    se_ae = se_pool = n = 0.0
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for batch in DataLoader(ds, batch_size=64):
            x0 = to_batch(batch, gen)[0]
            rec = ae.decode(ae.encode(x0).mean, tuple(x0.shape[-2:]))
            pooled = F.interpolate(F.avg_pool2d(x0, 2, ceil_mode=True), size=x0.shape[-2:],
                                   mode="bilinear", align_corners=False)  # fmt: skip
            se_ae += float(((rec - x0) ** 2).sum())
            se_pool += float(((pooled - x0) ** 2).sum())
            n += x0.numel()
    h, w = x0.shape[-2:]
    lat = ae.latent_channels * np.prod(ae.latent_size(h, w))
    return (
        f"Weather autoencoder ({ckpt.relative_to(REPO) if ckpt.is_relative_to(REPO) else ckpt}, "
        f"NCEP air {h}x{w} -> {ae.latent_channels}x{'x'.join(map(str, ae.latent_size(h, w)))}, "
        f"{h * w / lat:.1f}x fewer values) on all {len(ds)} 2014 states: reconstruction RMSE "
        f"{np.sqrt(se_ae / n) * std:.3f} K; 2x2 average pooling + bilinear upsampling (4x fewer "
        f"values): {np.sqrt(se_pool / n) * std:.3f} K.\n"
    )


def variance(args, scorer: Scorer) -> str:
    from stdiff.diffusion.variance import vlb_bits_per_dim

    models = [("L_hybrid", load_denoiser(args.iddpm)[0], ("learned", "small", "large"))]
    if (args.ddpm / "checkpoints").is_dir():
        models.append(("L_simple", load_denoiser(args.ddpm)[0], ("small", "large")))
    x0 = scorer.test_images(args.nll_images)
    # the discretised decoder scores the 8-bit data directly: no dequantisation
    rows = ["| model | variances | steps | bits/dim (VLB) | seconds |", "|---|---|---|---|---|"]
    for name, den, variances in models:
        for steps in (1000, 100):
            sig = None if steps == 1000 else den.schedule.discretize(steps, "linspace")
            # the full bound costs 1000 evaluations per variant: the two that matter most
            full = (
                (("learned", "small") if name == "L_hybrid" else ())
                if args.short_vlb
                else variances
            )
            for var in variances if steps < 1000 else full:
                t = time.perf_counter()
                with torch.no_grad():
                    bpd = vlb_bits_per_dim(den, x0, den.schedule, variance=var, sigmas=sig,
                                           generator=torch.Generator().manual_seed(0))  # fmt: skip
                sec = time.perf_counter() - t
                rows.append(f"| {name} | {var} | {steps} | {float(bpd.mean()):.3f} | {sec:.0f} |")
    srows = []
    for steps in args.variance_steps:
        for name, den, variances in models:
            for var in variances[:2] if name == "L_hybrid" else variances[:1]:
                x, _, s = draw(den, args.n, "iddpm", steps, "linspace", labels=False, variance=var)
                label = f"{name}, iddpm sampler, {var} variances, {steps} steps"
                srows.append(_row(label, steps, scorer(x, None), s))
    return (
        f"Variational bound on {len(x0)} test images ('small' = beta-tilde, 'large' = beta; the "
        "L_simple model is the same DiT trained without the VLB term):\n\n"
        + "\n".join(rows)
        + "\n\n"
        + _table(srows, args.n, "unconditional")
    )


def energy(args, scorer: Scorer) -> str:
    x0 = scorer.test_images(args.nll_images)
    g = torch.Generator().manual_seed(0)
    x_deq = x0 + torch.rand(x0.shape, generator=g) * (2 / 256)  # uniform dequantisation
    rows = ["| model | bits/dim (PF-ODE) | NFE | seconds |", "|---|---|---|---|"]
    srows = []
    for label, run in (("score", args.score), ("energy", args.energy)):
        den, _, _ = load_denoiser(run)
        t = time.perf_counter()
        ll = log_likelihood(den, x_deq, sigma_min=0.002, sigma_max=80.0, trace="hutchinson",
                            generator=torch.Generator().manual_seed(1), rtol=1e-3, atol=1e-3)  # fmt: skip
        bpd = float(ll.bits_per_dim(data_scale=2 / 256).mean())
        rows.append(f"| {label} | {bpd:.3f} | {ll.nfe} | {time.perf_counter() - t:.0f} |")
        x, _, s = draw(den, args.n, "heun", 18, labels=False)
        srows.append(_row(f"{label} model, Heun 18", 35, scorer(x, None), s))
        if label == "energy":
            for steps, k, scale in ((18, 1, 0.1), (18, 2, 0.1), (10, 2, 0.1)):
                x, _, s = draw(den, args.n, "mala", steps, labels=False,
                               corrector_steps=k, step_scale=scale)  # fmt: skip
                ev = 1 + (steps - 1) * (1 + k)
                srows.append(_row(f"energy model, annealed MALA {steps} steps x {k} correctors "
                                  f"(step {scale} sigma^2)", ev, scorer(x, None), s))  # fmt: skip
    return (
        f"Likelihood of {len(x0)} dequantised test images by the probability-flow ODE "
        "(RK45, rtol 1e-3, one Hutchinson probe):\n\n"
        + "\n".join(rows)
        + "\n\n"
        + _table(srows, args.n, "unconditional")
    )


def distill_impute(args, scorer: Scorer | None) -> str:
    """The CSDI teacher (raw weights) and its progressive students on PhysioNet fold 0."""
    import tempfile

    from stdiff.pipelines.jobs.impute import ImputeConfig, run_imputation

    info = json.loads((args.physio_students / "distill.json").read_text())
    rows_in = [(f"teacher, DDPM {n} (CSDI's sampler)", args.csdi, "ddpm", n, "default", "model")
               for n in (50,)]  # fmt: skip
    rows_in += [(f"teacher, DDIM {n} (uniform_t)", args.csdi, "ddim", n, "uniform_t", "model")
                for n in (16, 8, 4, 2)]  # fmt: skip
    rows_in += [(f"teacher, DPM-Solver++(2M) {n}", args.csdi, "dpmpp_2m", n, "default", "model")
                for n in (8, 4)]  # fmt: skip
    rows_in += [(f"progressive student, DDIM {s['steps']}", Path(s["run"]), "ddim", s["steps"],
                 "uniform_t", "ema") for s in info["students"]]  # fmt: skip
    rows = ["| model / sampler | evaluations | CRPS | MAE | RMSE | 90 % coverage | seconds |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    with tempfile.TemporaryDirectory() as t:
        for i, (label, ckpt, sampler, n, spacing, weights) in enumerate(rows_in):
            cfg = ImputeConfig(checkpoint=str(ckpt), data=str(args.physio), out=f"{t}/{i}.zarr",
                               sampler=sampler, steps=n, spacing=spacing, members=args.members,
                               member_chunk=args.members, eval_ratio=0.1, max_stays=args.stays,
                               device="cpu", weights=weights)  # fmt: skip
            r = run_imputation(cfg, progress=False)
            m = r["metrics"]
            rows.append(f"| {label} | {r['evals']} | {m['crps']:.3f} | {m['mae']:.3f} | "
                        f"{m['rmse']:.3f} | {m['cover_90']:.2f} | {r['seconds']:.1f} |")  # fmt: skip
    return (
        f"First {args.stays} fold-0 test stays, 10 % of the observed values hidden (CSDI's mask, "
        f"seed 1), {args.members} samples; teacher = the 350-step CSDI run (raw weights), "
        "students from configs/distill_physionet_progressive.yaml (EMA weights).\n\n"
        + "\n".join(rows)
        + "\n"
    )


PHASES = {
    "distill": distill,
    "distill_impute": distill_impute,
    "latent_speed": latent_speed,
    "latent": latent,
    "variance": variance,
    "energy": energy,
}
TITLES = {
    "distill": "Distillation: progressive and consistency students against the teacher",
    "distill_impute": "Distillation of the CSDI imputation model (PhysioNet)",
    "latent_speed": "Latent diffusion: cost per training step and per evaluation",
    "latent": "Latent diffusion against pixel space at equal compute",
    "variance": "Learned variances (IDDPM): bits/dim and few-step sampling",
    "energy": "Energy-based parameterisation against the score model",
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("phase", choices=sorted(PHASES))
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--nll-images", type=int, default=32)
    ap.add_argument("--store", type=Path, default=OUT / "fmnist.zarr")
    ap.add_argument("--classifier", type=Path, default=OUT / "fmnist_classifier")
    ap.add_argument("--teacher", type=Path, default=OUT / "train_fmnist_dit_cpu")
    ap.add_argument("--progressive", type=Path, default=OUT / "distill_fmnist")
    ap.add_argument("--consistency", type=Path, default=OUT / "distill_fmnist_cd")
    ap.add_argument("--pixel", type=Path, default=OUT / "train_fmnist_dit_cpu")
    ap.add_argument("--latent", type=Path, default=OUT / "train_fmnist_ldm_cpu")
    ap.add_argument("--weather-ae", type=Path, default=OUT / "train_ncep_ae")
    ap.add_argument("--iddpm", type=Path, default=OUT / "train_fmnist_iddpm_cpu")
    ap.add_argument("--ddpm", type=Path, default=OUT / "train_fmnist_ddpm_cpu")
    ap.add_argument("--score", type=Path, default=OUT / "train_fmnist_score_cpu")
    ap.add_argument("--energy", type=Path, default=OUT / "train_fmnist_ebm_cpu")
    ap.add_argument("--csdi", type=Path, default=OUT / "csdi_ms350")
    ap.add_argument("--physio", type=Path, default=OUT / "physio.zarr")
    ap.add_argument("--physio-students", type=Path, default=OUT / "distill_physionet")
    ap.add_argument("--stays", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--variance-steps", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--short-vlb", action="store_true", help="variance: fewer full-T bounds")
    ap.add_argument("--fmnist-ae", type=Path, default=OUT / "train_fmnist_ae")
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--write", type=Path, help="markdown file whose section to replace")
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    torch.set_grad_enabled(True)
    no_scorer = ("distill_impute", "latent_speed")
    scorer = None if args.phase in no_scorer else Scorer(args.classifier, args.store)
    body = PHASES[args.phase](args, scorer)
    cmd = "`.venv/bin/python -m benchmarks.theory " + " ".join(argv) + "`"
    emit_section(f"theory-{args.phase}", TITLES[args.phase], cmd, body, args.write)


if __name__ == "__main__":
    main()
