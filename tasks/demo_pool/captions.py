"""Captions for the demo pool, as varied as web alt-texts.

In:  a concept, a caption kind and a numpy random generator.
Out: a caption string.

Kinds (recorded in the truth file):
- ``named``: an English template naming the concept with a random synonym, sometimes with
  boilerplate (shop and stock-photo phrases) or noise (typos, odd case, filler words);
- ``short``: just the name, two words or fewer;
- ``foreign``: the concept named in German, French or Spanish;
- ``junk``: no concept at all (camera file names, "untitled", empty);
- ``mismatched``: names a different concept than the image shows.
:func:`add_unsafe_term` inserts a term from :data:`UNSAFE_TERMS`; some boilerplate contains
place names such as "Essex" that a careless substring match would flag.
"""

from __future__ import annotations

import numpy as np

from tasks.demo_pool.concepts import Concept

TEMPLATES = (
    "a photo of {a} {c}", "{a} {c}", "{a} {c} on a plain background", "{c} icon",
    "vector illustration of {a} {c}", "close-up of {a} {c}", "{c} clipart png",
    "{a} {c} drawn on paper", "simple {c} logo design", "picture of {a} {c} for kids",
    "stock image: {c}", "{c} sticker", "the {c} in the middle of the picture",
    "an image showing {a} {c}", "beautiful {c}, high resolution", "{c} wallpaper hd",
    "my favourite {c} :)", "here is {a} {c} I made", "{c} pattern for a t-shirt",
)
BOILERPLATE_PREFIX = ("Buy now: ", "New! ", "Free download - ", "HOT SALE ", "Stock photo - ")
BOILERPLATE_SUFFIX = (
    " | Free Download", " - Shutterstock", " © 2021 All rights reserved", " #design #art",
    " – free shipping on orders over $50", " | shipping from Essex", " (made in Middlesex)",
    " - click to enlarge", " | Pinterest",
)
FILLERS = ("nice", "cool", "new", "best", "cute", "great", "awesome")
FOREIGN_TEMPLATES = {
    "de": ("ein Foto: {c} auf hellem Hintergrund", "{c}, Vektorgrafik zum Herunterladen",
           "Bild von einem {c} für Kinder"),
    "fr": ("une photo d'un {c} sur fond clair", "illustration vectorielle : {c}", "image d'un {c} pour enfants"),
    "es": ("una foto de un {c} sobre fondo claro", "ilustración vectorial de un {c}", "imagen de un {c} para niños"),
}
JUNK = (
    "IMG_{n}.JPG", "DSC{n}", "untitled", "image", "click here to enlarge", "product {n}",
    "photo {m} of 12", "", "no description available", "thumbnail", "{n}.jpg", "download (1)",
)
UNSAFE_TERMS = ("nsfw", "nude", "porn", "xxx", "explicit adult", "sexy")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def named_caption(concept: Concept, rng: np.random.Generator) -> str:
    synonyms = concept.synonyms
    name = synonyms[rng.integers(len(synonyms))]
    text = TEMPLATES[rng.integers(len(TEMPLATES))].format(a=_article(name), c=name)
    if rng.random() < 0.25:
        text = BOILERPLATE_PREFIX[rng.integers(len(BOILERPLATE_PREFIX))] + text
    if rng.random() < 0.3:
        text = text + BOILERPLATE_SUFFIX[rng.integers(len(BOILERPLATE_SUFFIX))]
    if rng.random() < 0.2:
        text = _add_noise(text, rng)
    return text


def _add_noise(text: str, rng: np.random.Generator) -> str:
    choice = rng.integers(4)
    if choice == 0:
        words = text.split(" ")
        i = int(rng.integers(len(words)))
        word = words[i]
        if len(word) > 3:
            j = int(rng.integers(len(word) - 1))
            words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2:]
        return " ".join(words)
    if choice == 1:
        return text.upper() if rng.random() < 0.5 else text.title()
    if choice == 2:
        return f"{FILLERS[rng.integers(len(FILLERS))]} {text}"
    return text.replace(" ", "  ", 1) + " "


def short_caption(concept: Concept, rng: np.random.Generator) -> str:
    if concept.kind == "web":
        return {"website screenshot": "screenshot", "text document": "document",
                "barcode": "barcode", "bar chart": "chart"}[concept.name]
    return f"{concept.colour} {concept.shape}"


def foreign_caption(concept: Concept, rng: np.random.Generator) -> str:
    language = ("de", "fr", "es")[rng.integers(3)]
    templates = FOREIGN_TEMPLATES[language]
    return templates[rng.integers(len(templates))].format(c=concept.foreign_name(language))


def junk_caption(rng: np.random.Generator) -> str:
    return JUNK[rng.integers(len(JUNK))].format(n=int(rng.integers(1000, 99999)), m=int(rng.integers(1, 12)))


def add_unsafe_term(text: str, rng: np.random.Generator) -> str:
    term = UNSAFE_TERMS[rng.integers(len(UNSAFE_TERMS))]
    if not text or rng.random() < 0.5:
        return f"{term} {text}".strip()
    return f"{text} {term}"
