"""The model module: known models without torch, the factory, and which of its errors are retried."""

import subprocess
import sys

import numpy as np
import pytest
from prefect.states import Failed

from tasks.common.errors import GpuSetupError, InputError, TransientError
from tasks.common.models import create_clip, is_out_of_memory
from tasks.common.prefect_support import retry_unless_input_error

TINY = "Tiny-ViT-48px"


def test_known_models_and_the_training_entry_import_neither_torch_nor_open_clip():
    code = ("import sys; from tasks.common.models import known_models; import tasks.train.launch; "
            "names = known_models(); assert {'Tiny-ViT-48px', 'ViT-B-32'} <= names, names; "
            "heavy = {'torch', 'open_clip'} & set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_training_entry_registers_through_the_model_module():
    from tasks.common import models
    from tasks.train import launch

    assert launch.register_model_configs is models.register_model_configs
    assert (models.MODEL_CONFIGS / f"{TINY}.json").exists()


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A checkpoint file of the tiny model (random weights, saved as open_clip_train saves them)."""
    import open_clip
    import torch

    from tasks.common.models import register_model_configs

    register_model_configs()
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save({"epoch": 1, "state_dict": open_clip.create_model(TINY).state_dict()}, path)
    return path


def test_factory_loads_a_checkpoint_file(tiny_weights):
    import torch

    network, preprocess, tokenizer = create_clip(TINY, str(tiny_weights), "cpu")
    assert not network.training
    saved = torch.load(tiny_weights, weights_only=True)["state_dict"]
    name, tensor = next(iter(saved.items()))
    assert torch.equal(network.state_dict()[name], tensor)
    with torch.no_grad():
        texts = network.encode_text(tokenizer(["a red circle", "a blue square"]), normalize=True)
    np.testing.assert_allclose(texts.norm(dim=1).numpy(), 1.0, rtol=1e-4)


def test_the_embedder_uses_the_factory(tiny_weights):
    from PIL import Image

    from tasks.evaluate.model import ClipEmbedder

    embedder = ClipEmbedder(TINY, f"file://{tiny_weights}", device="cpu", batch_size=2)
    images = embedder.embed_images([Image.new("RGB", (60, 40), colour) for colour in ("red", "blue", "green")])
    assert images.shape[0] == 3 and images.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, rtol=1e-4)


def test_the_users_mistakes_are_input_errors(tiny_weights, tmp_path):
    import torch

    with pytest.raises(InputError, match="model 'No-Such-Model': not an open_clip model config"):
        create_clip("No-Such-Model", str(tiny_weights), "cpu")
    with pytest.raises(InputError, match="nope.pt: no such file"):
        create_clip(TINY, str(tmp_path / "nope.pt"), "cpu")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(InputError, match="garbage.pt does not fit model"):
        create_clip(TINY, str(garbage), "cpu")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"some.weight": torch.zeros(3)}}, other)
    with pytest.raises(InputError, match="other.pt does not fit model 'Tiny-ViT-48px'"):
        create_clip(TINY, str(other), "cpu")


def test_out_of_memory_is_recognised():
    import torch

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                                         "can't allocate memory: you tried to allocate 1073741824 bytes"))
    assert not is_out_of_memory(RuntimeError("Error(s) in loading state_dict for CLIP: size mismatch"))
    assert not is_out_of_memory(OSError("memory card"))


def test_out_of_memory_while_loading_is_transient(tiny_weights, monkeypatch):
    import open_clip
    import torch

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", exhausted)  # open_clip's, not ours
    with pytest.raises(TransientError, match="out of memory on cpu while loading"):
        create_clip(TINY, str(tiny_weights), "cpu")


@pytest.mark.parametrize("error, retried", [(InputError("bad column"), False),
                                            (TransientError("out of memory while loading"), True),
                                            (GpuSetupError("cupy fails"), True)])
def test_which_errors_prefect_retries(error, retried):
    assert retry_unless_input_error(None, None, Failed(data=error)) is retried
