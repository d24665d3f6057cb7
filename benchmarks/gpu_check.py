"""The prepared GPU check (`make gpu-check`): one script for a short window on a GPU machine.

Needs torch, timm and einops only (``stdiff.diffusion``; no zarr, dask or Prefect), so it runs
on a bare box given a copy of the tree. Phases, each under its own time budget:

1. ``cuda``: CUDA-only correctness: CSDI's fused SDPA attention equals the reference maths
   attention, a bf16-autocast DiT forward stays within 2 % of fp32, a stochastic sampler is
   reproducible per generator on the device.
2. ``dit``: DiT-B/2 and DiT-XL/2 training throughput on 32 x 32 x 4 latents (256 x 256 images
   through an 8x VAE, the DiT paper's ImageNet-256 setting) in bf16 with fused attention, with
   and without ``torch.compile``: samples/s, peak memory and model FLOP utilisation (FLOPs of
   one step counted by ``torch.utils.flop_counter``) against the chip's measured bf16 peak.
3. ``csdi``: CSDI training steps/s at the paper's shapes (batch 16, 48 steps x 35 features,
   64 channels, 4 layers) and imputation of the paper's protocol (100 samples per stay) with
   DDPM-50 and SDE-DPM-Solver++(2M) at 10 evaluations: stays per minute.
4. ``forecast``: the ensemble forecast cost per member per step on a 1-degree global grid
   (181 x 360, 5 variables, 2 context states), members batched, GenCast's sampler (20 steps,
   39 evaluations).

``--tiny`` shrinks every shape so the whole check runs on a CPU in about a minute (a test does).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.losses import denoising_loss
from stdiff.diffusion.nets.csdi import CSDINet, attention
from stdiff.diffusion.nets.dit import DiT, make_dit
from stdiff.diffusion.precond import Denoiser, Preconditioning
from stdiff.diffusion.samplers import sample
from stdiff.diffusion.schedules import karras_sigmas, make_schedule

GENCAST = {"s_churn": 2.5, "s_tmin": 0.75, "s_tmax": 80.0, "s_noise": 1.05}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, reps: int) -> float:
    """Median seconds of ``reps`` calls after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def bf16_peak(device: torch.device, tiny: bool) -> float:
    """Measured bf16 matrix-product FLOP/s (the MFU denominator)."""
    n = 256 if tiny else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    sec = _timed(lambda: a @ b, device, 3 if tiny else 20)
    return 2 * n**3 / sec


def check_cuda(device: torch.device, tiny: bool) -> dict[str, Any]:
    """Correctness checks that only mean something on CUDA (run anyway on the CPU)."""
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(8, 4, 48, 16, device=device, generator=g) for _ in range(3))
    ref = (torch.softmax(q @ k.transpose(-1, -2) / 4.0, -1) @ v).transpose(1, 2)  # (N, S, h, d)
    fused = attention(q, k, v)
    net = DiT(4, patch_size=2, depth=2 if tiny else 4, hidden=64, num_heads=4).to(device).eval()
    for p in net.parameters():  # the output layer starts at zero: give every weight a value
        p.data.normal_(0.0, 0.05, generator=g)
    x = torch.randn(4, 4, 16, 16, device=device, generator=g)
    c = torch.zeros(4, device=device)
    with torch.no_grad():
        full = net(x, c, None)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            half = net(x, c, None).float()
    rel = float((half - full).norm() / full.norm().clamp_min(1e-12))
    den = Denoiser(net, Preconditioning("edm", 1.0), make_schedule("edm"))
    sig = karras_sigmas(4, 0.03, 80.0)
    gens = [torch.Generator(device=device).manual_seed(s) for s in (1, 1)]
    with torch.no_grad():
        a, b = (sample(den, (1, 4, 16, 16), sig, sampler="euler_maruyama", generator=[gi],
                       device=device) for gi in gens)  # fmt: skip
    out = {
        "attention_max_err": float((fused - ref).abs().max()),
        "dit_bf16_rel_err": rel,
        "sampler_reproducible": bool(torch.equal(a, b)),
    }
    out["passed"] = out["attention_max_err"] < 1e-2 and rel < 0.02 and out["sampler_reproducible"]
    return out


def _dit_step(name: str, batch: int, size: int, device: torch.device, compiled: bool, tiny: bool):
    if tiny:
        net = DiT(4, patch_size=2, depth=1, hidden=32, num_heads=2, num_classes=10)
    else:
        net = make_dit(name, in_channels=4, num_classes=1000)
    den = Denoiser(net.to(device), Preconditioning("edm", 0.5), make_schedule("edm"))
    opt = torch.optim.AdamW(den.parameters(), lr=1e-4)
    fwd = torch.compile(den) if compiled else den
    g = torch.Generator(device=device).manual_seed(0)
    x0 = torch.randn(batch, 4, size, size, device=device, generator=g)
    cond = Condition(labels=torch.randint(0, 10, (batch,), device=device, generator=g))

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = denoising_loss(fwd, x0, den.schedule, cond, generator=g, precond=den.precond)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _fitting_step(name: str, batch: int, size: int, device, compiled: bool, tiny: bool):
    """The largest batch (halving from ``batch``) whose step fits the memory, warmed up."""
    while True:
        try:
            step = _dit_step(name, batch, size, device, compiled, tiny)
            step()  # compile and warm up before counting
            return step, batch
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2
            torch.cuda.empty_cache()


def dit_throughput(device: torch.device, tiny: bool, peak: float) -> list[dict[str, Any]]:
    """Samples/s, peak memory and MFU for DiT-B/2 and DiT-XL/2, eager and compiled."""
    size, rows = (8 if tiny else 32), []
    for name, batch in (("B/2", 256), ("XL/2", 128)):
        batch = 4 if tiny else batch
        for compiled in (False, True):
            if compiled and (tiny or device.type != "cuda"):
                continue  # torch.compile is timed on the GPU only
            step, batch = _fitting_step(name, batch, size, device, compiled, tiny)
            with FlopCounterMode(display=False) as counter:
                step()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sec = _timed(step, device, 2 if tiny else 10)
            mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0
            flops = counter.get_total_flops()
            rows.append({"model": f"DiT-{name}" + (" (tiny)" if tiny else ""), "compile": compiled, "batch": batch,
                         "samples_per_s": batch / sec, "peak_gib": mem,
                         "tflops": flops / sec / 1e12, "mfu": flops / sec / peak})  # fmt: skip
    return rows


def csdi_costs(device: torch.device, tiny: bool) -> dict[str, Any]:
    """CSDI training steps/s at the paper's shapes and imputation stays per minute."""
    length, k, batch = (12, 5, 4) if tiny else (48, 35, 16)
    net = CSDINet(k, channels=16 if tiny else 64, layers=1 if tiny else 4, heads=2 if tiny else 8)
    den = Denoiser(
        net.to(device), Preconditioning("eps", 1.0, "timestep"), make_schedule("csdi_quad")
    )
    opt = torch.optim.Adam(den.parameters(), lr=1e-3)
    g = torch.Generator(device=device).manual_seed(0)
    x0 = torch.randn(batch, length, k, device=device, generator=g)
    mask = (torch.rand(batch, length, k, device=device, generator=g) < 0.5).float()
    cond = Condition(observed=x0 * mask, mask=mask)

    def step() -> None:
        loss = denoising_loss(den, x0, den.schedule, cond, mask=1 - mask, generator=g,
                              precond=den.precond)  # fmt: skip
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    out: dict[str, Any] = {"train_steps_per_s": 1 / _timed(step, device, 2 if tiny else 20)}
    den.eval()
    members = 4 if tiny else 100
    obs, m = x0[:1].repeat(members, 1, 1), mask[:1].repeat(members, 1, 1)
    for sampler, steps in (("ddpm", 50), ("dpmpp_2m_sde", 10)):
        sig = den.schedule.discretize(4 if tiny else steps)

        def impute(sampler=sampler, sig=sig) -> None:
            with torch.no_grad():
                sample(den, (members, length, k), sig, Condition(observed=obs * m, mask=m),
                       sampler=sampler, generator=torch.Generator(device=device).manual_seed(0),
                       device=device)  # fmt: skip

        out[f"{sampler}_stays_per_min"] = 60 / _timed(impute, device, 1 if tiny else 3)
    return out


def forecast_cost(device: torch.device, tiny: bool) -> dict[str, Any]:
    """Seconds per member per lead step on a 1-degree global grid, members batched."""
    h, w, chans, members = (19, 36, 2, 2) if tiny else (181, 360, 5, 8)
    net = DiT(chans, patch_size=4 if not tiny else 2, depth=1 if tiny else 8,
              hidden=32 if tiny else 384, num_heads=2 if tiny else 6,
              context_channels=2 * chans, periodic_lon=True).to(device).eval()  # fmt: skip
    den = Denoiser(net, Preconditioning("edm", 1.0), make_schedule("edm"))
    g = torch.Generator(device=device).manual_seed(0)
    ctx = torch.randn(members, 2 * chans, h, w, device=device, generator=g)
    sig = karras_sigmas(4 if tiny else 20, 0.03, 80.0)

    def one_step() -> None:
        with (
            torch.no_grad(),
            torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"),
        ):
            sample(den, (members, chans, h, w), sig, Condition(context=ctx), sampler="dpmpp_2s",
                   generator=[torch.Generator(device=device).manual_seed(i) for i in range(members)],
                   device=device, **GENCAST)  # fmt: skip

    sec = _timed(one_step, device, 1 if tiny else 3)
    return {"grid": f"{h}x{w}", "variables": chans, "members": members,
            "seconds_per_member_step": sec / members}  # fmt: skip


def _table(result: dict[str, Any]) -> str:
    lines = [f"Device: {result['device']}; measured bf16 peak {result['peak_tflops']:.1f} TFLOP/s.",
             "", f"CUDA checks: {json.dumps(result['cuda'])}", "",
             "| model | compile | batch | samples/s | peak GiB | TFLOP/s | MFU |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["dit"]:
        lines.append(f"| {r['model']} | {r['compile']} | {r['batch']} | {r['samples_per_s']:.1f} | "
                     f"{r['peak_gib']:.1f} | {r['tflops']:.1f} | {100 * r['mfu']:.1f} % |")  # fmt: skip
    c, f = result["csdi"], result["forecast"]
    lines += ["", f"CSDI: {c['train_steps_per_s']:.2f} training steps/s; imputation "
              f"{c['ddpm_stays_per_min']:.1f} stays/min (DDPM-50, 100 samples), "
              f"{c['dpmpp_2m_sde_stays_per_min']:.1f} stays/min (SDE solver, 10 evaluations).",
              "", f"Forecast: {f['seconds_per_member_step']:.3f} s per member per step on a "
              f"{f['grid']} grid, {f['variables']} variables, {f['members']} members batched."]  # fmt: skip
    return "\n".join(lines)


def run(tiny: bool, device: torch.device) -> dict[str, Any]:
    """Every phase; returns the figures (also what the test checks)."""
    t0 = time.perf_counter()
    peak = bf16_peak(device, tiny)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    result = {"device": name, "tiny": tiny, "peak_tflops": peak / 1e12,
              "cuda": check_cuda(device, tiny), "dit": dit_throughput(device, tiny, peak),
              "csdi": csdi_costs(device, tiny), "forecast": forecast_cost(device, tiny)}  # fmt: skip
    result["seconds"] = time.perf_counter() - t0
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (a CPU test)")
    ap.add_argument("--write", type=Path, help="BENCHMARKS.md to write the section into")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = run(args.tiny, device)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    from benchmarks.report import emit_section

    cmd = "`make gpu-check` (`python -m benchmarks.gpu_check --write BENCHMARKS.md`)"
    emit_section("gpu-check", "GPU check", cmd, _table(result),
                 args.write if not args.tiny else None)  # fmt: skip
    return 0 if result["cuda"]["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
