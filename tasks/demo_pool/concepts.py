"""The demo pool's visual concepts.

100 concepts: 96 coloured shapes (12 shapes x 8 colours) and 4 "web" concepts (website
screenshot, text document, barcode, bar chart) that, as in real web pools, dominate the head
of the frequency distribution. Each concept has an id (its position in :data:`CONCEPTS`), a
canonical name, and English synonyms used in captions; foreign-language names feed the
non-English captions.
"""

from __future__ import annotations

from dataclasses import dataclass

SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "round dot"),
    "square": ("square", "box", "square tile"),
    "triangle": ("triangle", "three-sided shape"),
    "star": ("star", "five-pointed star"),
    "hexagon": ("hexagon", "six-sided polygon"),
    "cross": ("cross", "plus sign"),
    "ring": ("ring", "donut shape", "hoop"),
    "diamond": ("diamond", "rhombus", "lozenge"),
    "heart": ("heart", "love heart"),
    "crescent": ("crescent", "crescent moon", "half moon"),
    "arrow": ("arrow", "arrow sign"),
    "pentagon": ("pentagon", "five-sided polygon"),
}

COLOURS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "tangerine"),
    "yellow": ("yellow", "golden", "lemon"),
    "green": ("green", "emerald", "lime green"),
    "blue": ("blue", "navy", "azure"),
    "purple": ("purple", "violet", "lilac"),
    "pink": ("pink", "magenta", "rose"),
    "black": ("black", "jet-black", "ebony"),
}

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (210, 30, 30),
    "orange": (240, 130, 20),
    "yellow": (235, 205, 25),
    "green": (40, 160, 50),
    "blue": (30, 70, 200),
    "purple": (120, 40, 170),
    "pink": (240, 100, 180),
    "black": (20, 20, 20),
}

WEB_CONCEPTS: dict[str, tuple[str, ...]] = {
    "website screenshot": ("website screenshot", "screenshot of a web page", "screen capture of a website"),
    "text document": ("text document", "scanned page of text", "document page"),
    "barcode": ("barcode", "bar code", "product barcode"),
    "bar chart": ("bar chart", "bar graph", "chart with bars"),
}

FOREIGN_SHAPES = {
    "de": {"circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck", "star": "Stern",
           "hexagon": "Sechseck", "cross": "Kreuz", "ring": "Ring", "diamond": "Raute",
           "heart": "Herz", "crescent": "Mondsichel", "arrow": "Pfeil", "pentagon": "Fünfeck"},
    "fr": {"circle": "cercle", "square": "carré", "triangle": "triangle", "star": "étoile",
           "hexagon": "hexagone", "cross": "croix", "ring": "anneau", "diamond": "losange",
           "heart": "cœur", "crescent": "croissant de lune", "arrow": "flèche", "pentagon": "pentagone"},
    "es": {"circle": "círculo", "square": "cuadrado", "triangle": "triángulo", "star": "estrella",
           "hexagon": "hexágono", "cross": "cruz", "ring": "anillo", "diamond": "rombo",
           "heart": "corazón", "crescent": "luna creciente", "arrow": "flecha", "pentagon": "pentágono"},
}
FOREIGN_COLOURS = {
    "de": {"red": "rot", "orange": "orange", "yellow": "gelb", "green": "grün", "blue": "blau",
           "purple": "lila", "pink": "rosa", "black": "schwarz"},
    "fr": {"red": "rouge", "orange": "orange", "yellow": "jaune", "green": "vert", "blue": "bleu",
           "purple": "violet", "pink": "rose", "black": "noir"},
    "es": {"red": "rojo", "orange": "naranja", "yellow": "amarillo", "green": "verde", "blue": "azul",
           "purple": "morado", "pink": "rosa", "black": "negro"},
}
FOREIGN_WEB = {
    "de": {"website screenshot": "Bildschirmfoto einer Webseite", "text document": "gescanntes Textdokument",
           "barcode": "Strichcode auf der Verpackung", "bar chart": "Balkendiagramm mit Zahlen"},
    "fr": {"website screenshot": "capture d'écran d'un site web", "text document": "document texte numérisé",
           "barcode": "code-barres du produit", "bar chart": "diagramme à barres des ventes"},
    "es": {"website screenshot": "captura de pantalla de un sitio web", "text document": "documento de texto escaneado",
           "barcode": "código de barras del producto", "bar chart": "gráfico de barras de ventas"},
}


@dataclass(frozen=True)
class Concept:
    id: int
    name: str
    kind: str  # "shape" or "web"
    shape: str = ""
    colour: str = ""

    @property
    def synonyms(self) -> tuple[str, ...]:
        """English phrases that name this concept in captions (the first is the canonical name)."""
        if self.kind == "web":
            return WEB_CONCEPTS[self.name]
        return tuple(f"{c} {s}" for c in COLOURS[self.colour] for s in SHAPES[self.shape])

    def foreign_name(self, language: str) -> str:
        if self.kind == "web":
            return FOREIGN_WEB[language][self.name]
        shape = FOREIGN_SHAPES[language][self.shape]
        colour = FOREIGN_COLOURS[language][self.colour]
        return f"{colour}er {shape}" if language == "de" else f"{shape} {colour}"


def _build() -> tuple[Concept, ...]:
    concepts = [Concept(i, name, "web") for i, name in enumerate(WEB_CONCEPTS)]
    for shape in SHAPES:
        for colour in COLOURS:
            concepts.append(Concept(len(concepts), f"{colour} {shape}", "shape", shape, colour))
    return tuple(concepts)


CONCEPTS: tuple[Concept, ...] = _build()
CONCEPT_BY_NAME: dict[str, Concept] = {c.name: c for c in CONCEPTS}
