"""Plots for reports: matplotlib without a display, a figure as PNG bytes for the store, and a PNG as
markdown that Prefect's UI shows inline."""

from __future__ import annotations

import io


def subplots(*args, **kwargs):
    """``matplotlib.pyplot.subplots`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def png_bytes(fig) -> bytes:
    """The figure laid out and rendered as PNG (110 dpi); the figure is closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def png_markdown(png: bytes, title: str, max_bytes: int = 150_000, max_width: int = 900) -> str:
    """Markdown that shows the PNG ``png`` inline (a ``data:`` URI), for a Prefect markdown artifact.

    The image is scaled to at most ``max_width`` pixels wide and reduced to a 256-colour palette,
    then halved until its encoding is under ``max_bytes`` (Prefect stores an artifact's text in its
    database), so an artifact stays under about 200 KB.
    """
    import base64

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    if image.width > max_width:
        image = image.resize((max_width, max(1, round(image.height * max_width / image.width))), Image.LANCZOS)
    while True:
        buffer = io.BytesIO()
        image.quantize(256).save(buffer, format="PNG", optimize=True)
        data = buffer.getvalue()
        if len(data) * 4 // 3 <= max_bytes or image.width <= 64:
            break
        image = image.resize((image.width // 2, max(1, image.height // 2)), Image.LANCZOS)
    alt = title.replace("[", "(").replace("]", ")")
    return f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode('ascii')})"
