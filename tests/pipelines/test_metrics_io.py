"""Metrics against brute force; atomic writes; checkpoints that refuse bad files."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from stdiff.datasets.atomic import atomic_path, write_json
from stdiff.pipelines.engine.checkpoint import load_checkpoint, save_checkpoint
from stdiff.pipelines.metrics.distances import energy_distance


def _brute_energy(x: torch.Tensor, y: torch.Tensor) -> float:
    def mean_dist(a, b):
        return sum(
            math.dist(a[i].tolist(), b[j].tolist())
            for i, j in itertools.product(range(len(a)), range(len(b)))
        ) / (len(a) * len(b))

    return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


@pytest.mark.parametrize("d", [1, 2, 5])
def test_energy_distance_brute_force(d: int) -> None:
    g = torch.Generator().manual_seed(d)
    x, y = torch.randn(17, d, generator=g), torch.randn(23, d, generator=g) + 0.5
    assert math.isclose(energy_distance(x, y), _brute_energy(x, y), rel_tol=1e-6, abs_tol=1e-9)
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="feature sizes"):
        energy_distance(x, torch.randn(3, d + 1))


def test_energy_distance_chunks_agree() -> None:
    from stdiff.pipelines.metrics.distances import _mean_pairwise_distance

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 3, generator=g), torch.randn(40, 3, generator=g)
    assert float(_mean_pairwise_distance(a, b, chunk=7)) == pytest.approx(
        float(_mean_pairwise_distance(a, b, chunk=1000)), rel=1e-12
    )


def test_atomic_path_keeps_original_on_error(tmp_path: Path) -> None:
    target = write_json(tmp_path / "m.json", {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text().strip().startswith("{")
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    store = tmp_path / "s.zarr"
    for content in ("one", "two"):
        with atomic_path(store) as tmp:
            tmp.mkdir()
            (tmp / "f").write_text(content)
    assert (store / "f").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "s.zarr"]


def test_checkpoint_roundtrip_and_errors(tmp_path: Path) -> None:
    sd = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}
    path = save_checkpoint(tmp_path / "c.safetensors", {"model": sd}, {"seed": 3}, {"step": 7})
    groups, config, meta = load_checkpoint(path)
    assert (
        torch.equal(groups["model"]["w"], sd["w"]) and config == {"seed": 3} and meta == {"step": 7}
    )
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(ValueError, match=r"bad\.safetensors: not a readable"):
        load_checkpoint(bad)
    with pytest.raises(ValueError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
