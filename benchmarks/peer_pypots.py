"""The PyPOTS side of benchmarks/imputation.py; runs inside the PyPOTS venv.

    <peer venv>/bin/python benchmarks/peer_pypots.py step-time --batch 16 --length 48 \\
        --features 35 --steps 10 --warmup 2 --threads 1 --seed 0 --out RESULT.json
    <peer venv>/bin/python benchmarks/peer_pypots.py train-impute --data IN.npz --epochs E \\
        --samples S --batch 16 --threads 1 --seed 0 --out OUT.npz

Both build PyPOTS 1.5's ``pypots.imputation.CSDI`` with the CSDI paper's PhysioNet configuration
(``PAPER`` below: 4 residual layers, 64 channels, 8 heads, 128-d time, 16-d feature and 128-d
diffusion embeddings, 50 steps, quad schedule 1e-4..0.5, conditional, target_strategy "random"),
Adam with lr 1e-3 (``pypots.optim.Adam``), ``patience=None`` (no early stopping),
``saving_path=None`` and ``model_saving_strategy=None`` (nothing written to disk), on ``--device``
(default cpu). Only torch, numpy and pypots are needed; nothing is imported from the project.

PyPOTS does not normalise: the arrays go to the model as given (NaN filled with 0 plus an
observed mask), so callers pass already-normalised data. Its training masks are made per stay in
``DatasetForCSDI.__getitem__`` (``get_rand_mask``): a ratio r ~ U(0, 1) is drawn with
``np.random.rand`` and round(r * n_observed) of the stay's observed entries become targets; the
loss is the noise MSE over those targets (``BackboneCSDI.calc_loss``, one t ~ U{0..49} per stay).

step-time: times ``--steps`` training steps after ``--warmup`` untimed ones on one random batch
(``--batch`` x ``--length`` x ``--features``, N(0, 1) values, 80 % NaN). The batches are collated
beforehand by a torch ``DataLoader`` over PyPOTS's ``DatasetForCSDI`` (a fresh random target mask
per step, as in fit), so data loading and mask drawing are not timed. Each timed step is exactly the
body of PyPOTS's ``BaseNNModel._train_model`` loop: ``_assemble_input_for_training`` (device
transfer, permute to (B, K, L)), ``optimizer.zero_grad()``, ``model.model(inputs,
calc_criterion=True)`` (side info + ``calc_loss``), ``loss.sum().backward()``,
``optimizer.step()`` and ``loss.item()``, under PyPOTS's ``autocast(enabled=amp_enabled)``
(disabled here). Writes JSON {step_seconds, params, pypots, torch, threads}.

train-impute: ``CSDI.fit({"X": train_X})`` for ``--epochs`` epochs (timed as a whole; train_steps
= epochs * ceil(n / batch), last batch partial), then ``CSDI.predict({"X": test_X},
n_sampling_times=S)`` (timed). PyPOTS returns every sample: ``predict(...)["imputation"]`` is
(m, S, L, K), each sample being the observed entries of test_X with the sampled values in the
NaN entries; that array goes to OUT.npz as ``samples`` (float32). Note that ``fit`` ends by
loading the epoch with the lowest mean loss (the training loss when there is no validation set),
which need not be the last epoch; the sidecar reports it as ``best_epoch``. If IN.npz holds
``val_X``, it is passed to fit as ``{"X_ori": val_X, "X": val_X with 10 % of its observed entries
hidden}`` (PyPOTS's validation needs X_ori), so the best epoch is chosen by PyPOTS's validation
loss (50 diffusion steps per stay), and those validation passes are inside train_seconds. The
sidecar OUT.npz.json holds {train_seconds, impute_seconds, epochs, train_steps, samples, pypots,
threads, best_epoch, validated}.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pypots
import torch
from pypots.imputation import CSDI
from pypots.imputation.csdi.data import DatasetForCSDI
from pypots.nn.functional import autocast
from pypots.optim import Adam
from torch.utils.data import DataLoader

PAPER = dict(
    n_layers=4,
    n_heads=8,
    n_channels=64,
    d_time_embedding=128,
    d_feature_embedding=16,
    d_diffusion_embedding=128,
    n_diffusion_steps=50,
    target_strategy="random",
    is_unconditional=False,
    schedule="quad",
    beta_start=1e-4,
    beta_end=0.5,
)
LR = 1e-3
MISSING = 0.8  # fraction of NaN in the step-time batch, about PhysioNet's
VAL_HIDDEN = 0.1  # fraction of val_X's observed entries hidden for PyPOTS's validation loss


def seed_all(seed: int) -> None:
    """Seed torch, numpy's global generator (PyPOTS's mask ratio) and ``random``."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (PyPOTS draws its mask ratios from np.random)
    torch.manual_seed(seed)


def build(length: int, features: int, batch: int, epochs: int, device: str) -> CSDI:
    """PyPOTS CSDI with the paper configuration, Adam(lr 1e-3), no early stopping or saving."""
    return CSDI(
        n_steps=length,
        n_features=features,
        **PAPER,
        batch_size=batch,
        epochs=epochs,
        patience=None,
        optimizer=Adam(lr=LR),
        num_workers=0,
        device=device,
        saving_path=None,
        model_saving_strategy=None,
        verbose=False,
    )


def n_params(model: CSDI) -> int:
    """Parameters of the torch module behind the PyPOTS model."""
    return sum(p.numel() for p in model.model.parameters())


def step_time(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per PyPOTS training step; see the module docstring for what is timed."""
    seed_all(args.seed)
    model = build(args.length, args.features, args.batch, 1, args.device)
    x = torch.randn(args.batch, args.length, args.features)
    x[torch.rand(x.shape) < MISSING] = float("nan")
    dataset = DatasetForCSDI({"X": x.numpy()}, PAPER["target_strategy"], return_X_ori=False)
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=False, num_workers=0)
    batches = [next(iter(loader)) for _ in range(args.warmup + args.steps)]
    cuda = torch.device(args.device).type == "cuda"
    model.model.train()
    times = []
    for data in batches:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        inputs = model._assemble_input_for_training(data)
        with autocast(enabled=model.amp_enabled):
            model.optimizer.zero_grad()
            results = model.model(inputs, calc_criterion=True)
            loss = results["loss"].sum()
            loss.backward()
            model.optimizer.step()
        loss.item()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return dict(
        step_seconds=times[args.warmup :],
        params=n_params(model),
        pypots=pypots.__version__,
        torch=torch.__version__,
        threads=args.threads,
    )


def val_set(val_x: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """PyPOTS's validation dict: X_ori = val_x, X = val_x with some observed entries hidden."""
    hide = np.random.default_rng(seed).random(val_x.shape) < VAL_HIDDEN
    x = val_x.copy()
    x[hide & ~np.isnan(val_x)] = np.nan
    return {"X_ori": val_x, "X": x}


def train_impute(args: argparse.Namespace) -> dict[str, Any]:
    """Fit on train_X, sample test_X; write OUT.npz and return the sidecar dict."""
    seed_all(args.seed)
    with np.load(args.data) as data:
        train_x = data["train_X"].astype(np.float32)
        test_x = data["test_X"].astype(np.float32)
        val_x = data["val_X"].astype(np.float32) if "val_X" in data else None
    n, length, features = train_x.shape
    model = build(length, features, args.batch, args.epochs, args.device)
    val = None if val_x is None else val_set(val_x, args.seed + 1)
    t0 = time.perf_counter()
    model.fit({"X": train_x}, val_set=val)
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = model.predict({"X": test_x}, n_sampling_times=args.samples)
    impute_seconds = time.perf_counter() - t0
    samples = np.asarray(result["imputation"], dtype=np.float32)
    expected = (test_x.shape[0], args.samples, length, features)
    if samples.shape != expected:
        raise RuntimeError(f"PyPOTS returned samples of shape {samples.shape}, not {expected}")
    np.savez(args.out, samples=samples)
    return dict(
        train_seconds=train_seconds,
        impute_seconds=impute_seconds,
        epochs=args.epochs,
        train_steps=args.epochs * math.ceil(n / args.batch),
        samples=args.samples,
        pypots=pypots.__version__,
        threads=args.threads,
        best_epoch=int(model.best_epoch),
        validated=val is not None,
    )


def main() -> None:
    """Parse the subcommand, run it, write its outputs."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True)
    st = sub.add_parser("step-time", help="seconds per training step")
    st.add_argument("--length", type=int, default=48)
    st.add_argument("--features", type=int, default=35)
    st.add_argument("--steps", type=int, default=10)
    st.add_argument("--warmup", type=int, default=2)
    ti = sub.add_parser("train-impute", help="fit on train_X, impute test_X")
    ti.add_argument("--data", required=True, help="npz with train_X, test_X (NaN = missing)")
    ti.add_argument("--epochs", type=int, required=True)
    ti.add_argument("--samples", type=int, required=True)
    for p in (st, ti):
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="cpu")
        p.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.command == "step-time":
        Path(args.out).write_text(json.dumps(step_time(args)))
    else:
        Path(args.out + ".json").write_text(json.dumps(train_impute(args)))


if __name__ == "__main__":
    main()
