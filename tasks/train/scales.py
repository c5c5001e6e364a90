"""Training scales: DataComp's four, and ``tiny`` for a laptop.

In:  a scale name and optional overrides of any field of :class:`TrainConfig`.
Out: a validated :class:`TrainConfig`, with derived epochs ("virtual epochs" of
     ``checkpoint_steps`` steps, as DataComp does, so that a checkpoint lands in the store every
     ``checkpoint_steps`` steps) and the realised number of samples seen.

DataComp's values (its ``scale_configs.py``): samples seen equals the pool size of the scale,
whatever the size of the curated subset; 5 checkpoints per run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from tasks.common.errors import InputError


@dataclass(frozen=True)
class TrainConfig:
    scale: str
    model: str
    batch_size: int  # global, over all devices
    lr: float
    warmup: int
    samples_seen: int
    checkpoint_steps: int
    beta2: float | None = None
    wd: float = 0.2
    precision: str = "auto"  # "auto": amp on GPU, fp32 on CPU
    workers: int = 1
    seed: int = 0
    grad_clip_norm: float | None = None
    log_every_n_steps: int = 10
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def epochs(self) -> int:
        """Virtual epochs: one checkpoint each."""
        return max(1, round(self.samples_seen / (self.checkpoint_steps * self.batch_size)))

    @property
    def steps_per_epoch(self) -> int:
        return max(1, round(self.samples_seen / self.epochs / self.batch_size))

    @property
    def samples_per_epoch(self) -> int:
        return self.steps_per_epoch * self.batch_size

    @property
    def realised_samples_seen(self) -> int:
        return self.epochs * self.samples_per_epoch

    def validate(self) -> None:
        whole = ("batch_size", "samples_seen", "checkpoint_steps", "warmup", "log_every_n_steps", "workers", "seed")
        for name in whole:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"training parameter {name}: must be a whole number, got {value!r}")
        for name in ("lr", "wd", "beta2", "grad_clip_norm"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise InputError(f"training parameter {name}: must be a number, got {value!r}")
        positive = ("batch_size", "samples_seen", "checkpoint_steps", "warmup", "log_every_n_steps")
        for name in positive:
            if getattr(self, name) < (0 if name == "warmup" else 1):
                raise InputError(f"training parameter {name}: invalid value {getattr(self, name)!r}")
        if not self.lr > 0:
            raise InputError(f"training parameter lr: must be positive, got {self.lr}")
        if self.precision not in ("auto", "fp32", "amp", "amp_bf16", "amp_bfloat16", "bf16", "fp16"):
            raise InputError(f"training parameter precision: unknown value {self.precision!r}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["extra_args"] = list(self.extra_args)
        return data


def _datacomp(scale: str, model: str, batch: int, lr: float, warmup: int, samples: int,
              beta2: float | None = None) -> TrainConfig:
    return TrainConfig(scale=scale, model=model, batch_size=batch, lr=lr, warmup=warmup, samples_seen=samples,
                       checkpoint_steps=math.ceil(samples / 5 / batch), beta2=beta2, workers=4, log_every_n_steps=100)


SCALES: dict[str, TrainConfig] = {
    # A small ViT on 48 px images: about 250 samples/s on 2 CPU cores, so the demo trains in minutes.
    "tiny": TrainConfig(scale="tiny", model="Tiny-ViT-48px", batch_size=256, lr=2e-3, warmup=20,
                        samples_seen=51_200, checkpoint_steps=40, beta2=0.98, workers=1),
    "small": _datacomp("small", "ViT-B-32", 4096, 5e-4, 500, 12_800_000),
    "medium": _datacomp("medium", "ViT-B-32", 4096, 5e-4, 500, 128_000_000),
    "large": _datacomp("large", "ViT-B-16", 8192, 5e-4, 500, 1_280_000_000),
    "xlarge": _datacomp("xlarge", "ViT-L-14", 90112, 1e-3, 10_000, 12_800_000_000, beta2=0.95),
}


def scale_config(scale: str, overrides: dict | None = None) -> TrainConfig:
    """The config of ``scale`` with ``overrides`` applied (unknown names are an error)."""
    if scale not in SCALES:
        raise InputError(f"scale: {scale!r} is not one of {sorted(SCALES)}")
    overrides = dict(overrides or {})
    known = {f.name for f in fields(TrainConfig)} - {"scale"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InputError(f"training overrides: unknown parameter(s) {unknown}; known: {sorted(known)}")
    if "extra_args" in overrides:
        overrides["extra_args"] = tuple(overrides["extra_args"])
    config = replace(SCALES[scale], **overrides)
    config.validate()
    return config
