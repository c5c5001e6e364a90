"""Load a CLIP checkpoint and embed images and texts.

In:  an open_clip model name and a checkpoint (a training checkpoint in the store, local or
     ``s3://``, or an open_clip pretrained tag such as ``openai`` for users with internet).
Out: a :class:`ClipEmbedder` with ``embed_images(list of PIL images)`` and
     ``embed_texts(list of str)``, both returning L2-normalised float32 numpy arrays.
"""

from __future__ import annotations

import os
import tempfile

import fsspec
import numpy as np

from tasks.common.errors import InputError


def _local_checkpoint(checkpoint: str) -> str:
    """A local path for ``checkpoint`` (remote files are copied to a temporary file once)."""
    if "://" not in checkpoint or checkpoint.startswith("file://"):
        path = checkpoint.removeprefix("file://")
        if not os.path.exists(path):
            raise InputError(f"checkpoint {checkpoint}: no such file")
        return path
    fs, path = fsspec.core.url_to_fs(checkpoint)
    if not fs.exists(path):
        raise InputError(f"checkpoint {checkpoint}: no such file")
    local = os.path.join(tempfile.gettempdir(), "clip-curation-checkpoints", path.replace("/", "_"))
    if not os.path.exists(local) or os.path.getsize(local) != fs.size(path):
        os.makedirs(os.path.dirname(local), exist_ok=True)
        fs.get_file(path, local + ".tmp")
        os.replace(local + ".tmp", local)
    return local


class ClipEmbedder:
    def __init__(self, model: str, checkpoint: str, device: str | None = None, batch_size: int = 256):
        import open_clip
        import torch

        from tasks.train.launch import register_model_configs

        register_model_configs()
        if model not in open_clip.list_models():
            raise InputError(f"model {model!r}: not an open_clip model config")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        is_tag = checkpoint in open_clip.list_pretrained_tags_by_model(model)
        pretrained = checkpoint if is_tag else _local_checkpoint(checkpoint)
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                model, pretrained=pretrained, device=self.device)
        except Exception as exc:  # noqa: BLE001 - open_clip raises several kinds on a mismatch
            raise InputError(f"checkpoint {checkpoint} does not fit model {model!r}: {str(exc)[:300]}") from exc
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model)
        self.batch_size = batch_size
        self._torch = torch

    def embed_images(self, images) -> np.ndarray:
        torch = self._torch
        out = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                batch = torch.stack([self.preprocess(im) for im in images[start:start + self.batch_size]])
                features = self.model.encode_image(batch.to(self.device), normalize=True)
                out.append(features.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(texts[start:start + self.batch_size]).to(self.device)
                out.append(self.model.encode_text(tokens, normalize=True).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
