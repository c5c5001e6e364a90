"""Training scales: DataComp's values, overrides, derived epochs."""

import pytest

from tasks.common.errors import InputError
from tasks.train.scales import SCALES, scale_config


def test_datacomp_scales():
    small, xlarge = SCALES["small"], SCALES["xlarge"]
    assert (small.model, small.batch_size, small.lr, small.warmup, small.samples_seen) == (
        "ViT-B-32", 4096, 5e-4, 500, 12_800_000)
    assert (SCALES["medium"].samples_seen, SCALES["large"].model, SCALES["large"].batch_size) == (
        128_000_000, "ViT-B-16", 8192)
    assert (xlarge.model, xlarge.batch_size, xlarge.lr, xlarge.warmup, xlarge.beta2) == (
        "ViT-L-14", 90112, 1e-3, 10_000, 0.95)
    for scale in ("small", "medium", "large", "xlarge"):
        config = SCALES[scale]
        assert config.epochs == 5  # DataComp's 5 checkpoints per run
        assert abs(config.realised_samples_seen - config.samples_seen) <= config.epochs * config.batch_size


def test_overrides_and_derived_epochs():
    config = scale_config("tiny", {"samples_seen": 1000, "batch_size": 100, "checkpoint_steps": 3})
    assert config.epochs == 3 and config.steps_per_epoch == 3 and config.samples_per_epoch == 300
    assert config.realised_samples_seen == 900
    assert scale_config("tiny", {"extra_args": ["--grad-checkpointing"]}).extra_args == ("--grad-checkpointing",)


@pytest.mark.parametrize("scale,overrides,message", [
    ("huge", None, "scale: 'huge'"),
    ("tiny", {"learning_rate": 1}, r"unknown parameter\(s\) \['learning_rate'\]"),
    ("tiny", {"batch_size": 0}, "batch_size"),
    ("tiny", {"lr": -1.0}, "lr"),
    ("tiny", {"precision": "fp8"}, "precision"),
])
def test_bad_configs_name_the_parameter(scale, overrides, message):
    with pytest.raises(InputError, match=message):
        scale_config(scale, overrides)
