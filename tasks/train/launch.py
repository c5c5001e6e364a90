"""Child-process entry of a training run: ``python -m tasks.train.launch <open_clip_train args>``.

Registers this project's model configs (:func:`tasks.common.models.register_model_configs`, the
``tiny`` scale's model among them) with open_clip, then hands the arguments to
``open_clip_train.main.main`` unchanged. Under ``torchrun`` every rank runs this module.

Every ``torch.load`` in this process (open_clip_train's resume from ``epoch_latest.pt``, a checkpoint
restored from the store, and any pretrained file) is forced to ``weights_only=True``
(``TORCH_FORCE_WEIGHTS_ONLY_LOAD``): a checkpoint cannot run code when it is read.
"""

from __future__ import annotations

import os
import sys

from tasks.common.models import register_model_configs


def main(argv: list[str]) -> int:
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)  # torch refuses both at once
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    register_model_configs()
    import torch
    from open_clip_train.main import main as open_clip_main

    print(f"torch threads: {torch.get_num_threads()}", flush=True)  # read back into the run's manifest

    status = open_clip_main(argv)
    return 0 if status in (None, 0) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
