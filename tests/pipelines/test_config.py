"""Typed config loading: defaults, overrides and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from stdiff.pipelines.engine.config import from_dict, load_config, to_dict
from stdiff.pipelines.jobs.toy import ToyDemoConfig

REPO = Path(__file__).resolve().parents[2]


def test_demo_config_loads_and_roundtrips() -> None:
    cfg = load_config(REPO / "configs/demo_toy2d.yaml", ToyDemoConfig)
    assert cfg.model.prediction == "edm" and cfg.sample.runs[0].name == "heun"
    assert from_dict(ToyDemoConfig, to_dict(cfg)) == cfg


def test_overrides(tmp_path: Path) -> None:
    cfg = load_config(
        REPO / "configs/demo_toy2d.yaml", ToyDemoConfig, {"train.steps": 5, "seed": 9}
    )
    assert cfg.train.steps == 5 and cfg.seed == 9


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("seed: [1]", r"cfg\.yaml: seed: expected int"),
        ("trian: {}", r"unknown key\(s\) \['trian'\]"),
        ("model: {prediction: score}", r"model\.prediction: 'score' is not valid; choose one of"),
        ("schedule: {name: cosine}", r"schedule 'cosine' is not known; choose one of"),
        ("sample: {runs: [{name: heun, steps: 0}]}", "steps must be positive"),
        ("sample: {runs: [{name: heun, steps: 3, options: {eta: 1}}]}", "valid options"),
        ("train: {steps: 1.5}", r"train\.steps: expected int"),
        ("[1, 2]", "expected a mapping"),
        ("a: [", "not valid YAML"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_config(path, ToyDemoConfig)


def test_every_shipped_config_loads() -> None:
    """Each YAML in configs/ is a valid config of its job (paths filled in where the CLI gives them)."""
    from stdiff.pipelines.engine.runner import TrainJobConfig
    from stdiff.pipelines.jobs.impute import ImputeConfig

    kinds = {"demo_": (ToyDemoConfig, {}), "train_": (TrainJobConfig, {})}
    kinds["impute_"] = (ImputeConfig, {"checkpoint": "c", "data": "d", "out": "o"})
    kinds["quickstart_"] = (TrainJobConfig, {})  # the quickstart's forecaster
    from stdiff.pipelines.jobs.distill import DistillConfig

    kinds["distill_"] = (DistillConfig, {})

    from stdiff.flows.serve import ServeConfig

    kinds["serve"] = (ServeConfig, {})
    paths = sorted((REPO / "configs").glob("*.yaml"))
    assert len(paths) >= 5
    for path in paths:
        cls, extra = next(v for k, v in kinds.items() if path.name.startswith(k))
        assert isinstance(load_config(path, cls, extra), cls)


def test_yaml_dates_become_strings_and_optional_fields_check_types(tmp_path) -> None:
    from stdiff.pipelines.engine.runner import DataConfig

    path = tmp_path / "d.yaml"
    path.write_text("store: s\ntask: forecast\ntrain_period: [2013-01-01, 2013-11-30]\n")
    cfg = load_config(path, DataConfig)
    assert cfg.train_period == ("2013-01-01", "2013-11-30")
    path.write_text("store: s\ntask: forecast\ntrain_period: [2013-01-01]\nvariables: 3\n")
    with pytest.raises(ValueError, match="variables: expected a list"):
        load_config(path, DataConfig)


def test_a_float_or_list_key_names_the_bad_list_entry() -> None:
    """``float | list[float]`` (the forecast's ``spread``): a list with a bad entry is reported
    by its index, not as "expected float, got [...]"."""
    from dataclasses import dataclass

    @dataclass
    class Knob:
        factor: float | list[float] = 1.0

    assert from_dict(Knob, {"factor": [1, 2.5]}).factor == (1.0, 2.5)
    assert from_dict(Knob, {"factor": 2}).factor == 2.0
    with pytest.raises(ValueError, match=r"factor\[1\]: expected float, got 'abc'"):
        from_dict(Knob, {"factor": [1.2, "abc"]})
    with pytest.raises(ValueError, match=r"factor: expected float, got 'x'"):
        from_dict(Knob, {"factor": "x"})
