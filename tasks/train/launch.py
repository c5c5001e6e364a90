"""Child-process entry of a training run: ``python -m tasks.train.launch <open_clip_train args>``.

Registers this project's model configs (``model_configs/``, the ``tiny`` scale's model among
them) with open_clip, then hands the arguments to ``open_clip_train.main.main`` unchanged. Under
``torchrun`` every rank runs this module.
"""

from __future__ import annotations

import sys
from pathlib import Path

MODEL_CONFIGS = Path(__file__).with_name("model_configs")


def known_models() -> set[str]:
    """Names of open_clip's built-in model configs and of this project's, read from the config files
    (without importing open_clip and torch)."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    builtin = Path(next(iter(spec.submodule_search_locations))) / "model_configs"
    return {p.stem for folder in (builtin, MODEL_CONFIGS) for p in folder.glob("*.json")}


def register_model_configs() -> None:
    import open_clip

    if "Tiny-ViT-48px" not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIGS)


def main(argv: list[str]) -> int:
    register_model_configs()
    from open_clip_train.main import main as open_clip_main

    status = open_clip_main(argv)
    return 0 if status in (None, 0) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
