"""Load a CLIP checkpoint and embed images and texts.

In:  an open_clip model name and a checkpoint (a training checkpoint in the store, local or
     ``s3://``, or an open_clip pretrained tag such as ``openai`` for users with internet).
Out: a :class:`ClipEmbedder` with ``embed_images(list of PIL images)`` and
     ``embed_texts(list of str)``, both returning L2-normalised float32 numpy arrays.

The model is made, and its errors decided, by :func:`tasks.common.models.create_clip`.
"""

from __future__ import annotations

import numpy as np

from tasks.common.models import create_clip, model_device


class ClipEmbedder:
    """An open_clip model made by :func:`~tasks.common.models.create_clip`, embedding in batches."""

    def __init__(self, model: str, checkpoint: str, device: str | None = None, batch_size: int = 256,
                 storage_options: dict | None = None):
        import torch

        self.device = model_device(device)
        self.model, self.preprocess, self.tokenizer = create_clip(model, checkpoint, self.device, storage_options)
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
