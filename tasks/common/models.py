"""The project's CLIP models: which exist, on which device they run, and how one is made.

In:  an open_clip model name and a checkpoint: an open_clip pretrained tag (``openai``,
     ``datacomp_xl_s13b_b90k``: downloaded the normal way, which needs internet the first time) or
     a checkpoint file, local or any fsspec URI (``s3://...``, copied to a local cache once).
Out: :func:`known_models`: the model names (read from the config files, without importing torch
     or open_clip); :func:`register_model_configs`: this project's configs (``MODEL_CONFIGS``)
     added to open_clip; :func:`model_device`: the torch device a model runs on;
     :func:`create_clip`: an open_clip model in eval mode on its device, its image preprocess and
     its tokenizer. A checkpoint file is read with ``torch.load(weights_only=True)``: tensors and plain
    values only, no pickled code.

Errors: a name that is no model config, a checkpoint file that does not exist, is not a checkpoint
or does not fit the model: :class:`InputError`. Out of memory while loading: :class:`TransientError`
(retried). GPUs that torch cannot use: :class:`GpuSetupError`. Network and storage failures
propagate as they are (retried).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from tasks.common.errors import InputError, TransientError
from tasks.common.gpu import gpu_setup_error, visible_gpus

# the folder stays beside the training entry: it is the package data open_clip_train's children read
MODEL_CONFIGS = Path(__file__).parents[1] / "train" / "model_configs"


def known_models() -> set[str]:
    """Names of open_clip's built-in model configs and of this project's, read from the config files
    (without importing open_clip and torch)."""
    spec = importlib.util.find_spec("open_clip")
    builtin = Path(next(iter(spec.submodule_search_locations))) / "model_configs"
    return {p.stem for folder in (builtin, MODEL_CONFIGS) for p in folder.glob("*.json")}


def register_model_configs() -> None:
    """Add this project's model configs to open_clip's registry (once per process)."""
    import open_clip

    project = {p.stem for p in MODEL_CONFIGS.glob("*.json")}
    if not project <= set(open_clip.list_models()):
        open_clip.add_model_config(MODEL_CONFIGS)


def model_device(device: str | None = None) -> str:
    """``device`` as given, else ``cuda`` where the driver lists a visible GPU (as
    :func:`~tasks.common.gpu.visible_gpus` counts them), else ``cpu``.

    Raises :class:`GpuSetupError` when the driver lists GPUs but torch cannot use them.
    """
    if device:
        return device
    gpus = visible_gpus()
    if not gpus:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise gpu_setup_error(gpus, f"torch {torch.__version__} ({build}) cannot use them")
    return "cuda"


def local_checkpoint(checkpoint: str, storage_options: dict | None = None) -> str:
    """A local path for ``checkpoint`` (a remote file is copied to a local cache once, read with
    ``storage_options``: the store's fsspec options when the checkpoint is in the store)."""
    import fsspec

    if "://" not in checkpoint or checkpoint.startswith("file://"):
        path = checkpoint.removeprefix("file://")
        if not os.path.exists(path):
            raise InputError(f"checkpoint {checkpoint}: no such file")
        return path
    fs, path = fsspec.core.url_to_fs(checkpoint, **(storage_options or {}))
    if not fs.exists(path):
        raise InputError(f"checkpoint {checkpoint}: no such file")
    local = os.path.join(tempfile.gettempdir(), "clip-curation-checkpoints", path.replace("/", "_"))
    if not os.path.exists(local) or os.path.getsize(local) != fs.size(path):
        os.makedirs(os.path.dirname(local), exist_ok=True)
        fs.get_file(path, local + ".tmp")
        os.replace(local + ".tmp", local)
    return local


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says that host or device memory ran out (torch reports both as RuntimeErrors)."""
    import torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def create_clip(model: str, checkpoint: str, device: str | None = None, storage_options: dict | None = None):
    """``(network, preprocess, tokenizer)``: the open_clip ``model`` with the weights of ``checkpoint``
    (a pretrained tag or a checkpoint file), in eval mode on :func:`model_device` ``(device)``;
    ``preprocess`` turns a PIL image into the network's input tensor, ``tokenizer`` a list of texts
    into token ids."""
    import open_clip
    import torch

    register_model_configs()
    if model not in open_clip.list_models():
        raise InputError(f"model {model!r}: not an open_clip model config")
    device = model_device(device)
    is_tag = checkpoint in open_clip.list_pretrained_tags_by_model(model)
    pretrained = checkpoint if is_tag else local_checkpoint(checkpoint, storage_options)
    try:
        # weights_only: a checkpoint file (from the store, say) is unpickled without running its code
        network, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained, device=device,
                                                                       weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load and load_state_dict raise several kinds
        if is_out_of_memory(exc):
            raise TransientError(f"model {model!r} with checkpoint {checkpoint}: out of memory on {device} while "
                                 f"loading ({type(exc).__name__}: {str(exc)[:300]})") from exc
        if is_tag or isinstance(exc, (OSError, ImportError, torch.AcceleratorError)):
            raise  # a failed download, disk read, missing dependency or device: not the file's content
        raise InputError(f"checkpoint {checkpoint} does not fit model {model!r} (or is not an open_clip "
                         f"checkpoint): {type(exc).__name__}: {str(exc)[:300]}") from exc
    network.eval()
    return network, preprocess, open_clip.get_tokenizer(model)
