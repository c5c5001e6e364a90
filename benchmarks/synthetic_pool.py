"""A synthetic pool that the filter, cluster and sample stages cannot tell from a downloaded and embedded one.

    from benchmarks.synthetic_pool import make_synthetic_pool
    pool = make_synthetic_pool(Catalog(Store("/tmp/store")), "synthetic", 1_000_000, client=client)
    pool.truth  # the planted duplicate pairs, for recall

Written through the catalog (its paths, ``publish``/``publish_pool`` and the stages' own manifest
functions), exactly what the download and embed stages leave in the store:

- per slice of ``slice_shards`` shards, the slice folder with img2dataset's ``NNNNN.parquet``
  (``uid``, ``key``, ``caption``, ``url``, ``status``, ``error_message``, sizes, ``sha256``) and
  the slice's manifest, then the pool manifest (:func:`tasks.download.pool.publish_pool`: shard ids
  minted with :func:`~tasks.common.catalog.shard_id`, counts, the download report);
- per shard, in the embedding folder that :func:`tasks.filters.plan.plan_embed_filter` names for
  the embedder ``ViT-B-32`` / ``synthetic`` (checked after the pool is published), the embed
  stage's outputs: ``.img.npy`` and ``.txt.npy`` (float16, L2-normalised, ``dim`` wide) and, last,
  the table with every column :func:`tasks.embed.run.embed_shard` writes (``uid``, ``key``,
  ``text``, ``clip_score``, ``embed_ok``, ``embed_reason``, ``phash`` as int64, ``thumb`` as 192
  bytes of 8 x 8 RGB, ``sha256``, ``width``, ``height``, ``original_width``, ``original_height``);
- the embedding run's manifest (:func:`tasks.embed.run.embedding_manifest`).

**The tars are placeholders**: every shard's ``.tar`` is an empty (valid) tar archive, although its
record counts ``n_success`` samples. No stage under benchmark opens them: the filters read the
embed tables and ``.npy`` files, the tree reads the image embeddings and decisions, and the
subsets read decisions and captions (the hkmeans and MetaCLIP subsets are made with
``reshard`` off, and only resharding reads tars). Embedding this pool again, or resharding a
subset of it, would fail on the count check. Every sample is a successful download (no failed
rows in the img2dataset tables) and the pool index's slice inputs are not written.

Content. Every sample is a pure function of ``(seed, its global row)`` (a counter-based hash,
splitmix64, vectorised over a shard), so a pool is identical whatever the shard size, the
number of workers or the order in which shards are made, and a duplicate's source can be
recomputed in any shard without reading it:

- image embeddings: a mixture of 2,000 concepts (centres in a 20 / 200 / 2,000 hierarchy),
  concept sizes Zipf (exponent 1), noise per concept so that two samples of one concept have
  a cosine of about 0.4-0.7; text embeddings at the sample's CLIP score (cosine) from its image
  embedding (``clip_score`` ~ N(0.30, 0.05), lower for foreign and too-short captions);
- captions: English templates naming the concept plus 0-6 words of a small vocabulary drawn
  with Zipf frequencies; 4 % German, French or Spanish, 3 % two words or fewer, 1 % with an NSFW
  term (from the filters' default list); image sizes log-normal (about 7 % under 200 px on
  the short side, 1 % banners of aspect 4); 0.2 % undecodable (no embedding, the embed stage's
  ``undecodable`` reason, NaN CLIP score, pHash 0);
- pHash: 64 bits with exactly 32 set (the median split of imagehash's pHash), thumbnails and
  sha256 random;
- duplicates, planted between rows drawn uniformly from the whole pool (so mostly across
  shards, many far apart; no row is in two pairs, no pair member is undecodable):
  ``exact_fraction`` of the samples are exact copies of another (same sha256, pHash, thumbnail
  and sizes; image embedding cosine >= 0.999) and ``near_fraction`` near copies (pHash 1-4 bits
  away, each thumbnail byte within +-4, so a mean colour distance of about 2; image embedding
  cosine uniform in [0.975, 0.995]; their own sha256 and sizes).

:attr:`SyntheticPool.truth` lists every planted pair (both uids, rows, shards, pHash bits,
colour distance and cosine as stored in float16). Memory: one shard's arrays per task (a
10,000-row shard at 512 dimensions takes about 0.3 GB at its peak) plus, in the caller, the
plan (16 bytes per planted pair) and the truth table.
"""

from __future__ import annotations

import binascii
import hashlib
import io
import tarfile
import time
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.common.catalog import Catalog, PoolRecord, shard_id
from tasks.common.hashing import hash_json
from tasks.common.store import Store
from tasks.download.pool import publish_pool
from tasks.download.pool_index import SlicePlan
from tasks.download.slices import DownloadConfig, SliceResult, slice_key
from tasks.embed.run import embedding_manifest
from tasks.embed.run import stage_code_version as embed_code_version
from tasks.embed.spec import EmbedderSpec
from tasks.filters.config import DEFAULT_NSFW_TERMS

MODELS_BY_DIM = {512: "ViT-B-32", 768: "ViT-L-14", 1024: "ViT-H-14"}
SYNTHETIC_CHECKPOINT = "synthetic"
N_CONCEPTS = 2000
N_TOPICS = 200
N_SUPER = 20
MAX_EXTRA_WORDS = 6

NOUNS = (
    "dog cat horse bird fish car truck bicycle boat plane train house bridge tower castle church tree flower rose "
    "tulip forest mountain river lake beach ocean island desert field garden park street road city village "
    "kitchen bedroom chair table sofa lamp window door clock phone laptop camera guitar piano violin drum book "
    "pen pencil bottle cup mug plate bowl knife fork spoon pizza burger cake bread cheese apple banana orange "
    "lemon strawberry tomato carrot potato salad soup coffee tea wine beer shirt dress shoe hat jacket bag watch "
    "ring necklace logo icon poster map chart diagram screenshot document sign flag ball toy doll robot rocket "
    "star moon sun cloud rain snow storm sunset sunrise portrait face hand eye baby child man woman couple family "
    "team crowd wedding party concert festival market store office school hospital museum library stadium "
    "airport station farm barn cow sheep pig chicken duck owl eagle lion tiger bear wolf fox deer rabbit mouse "
    "elephant giraffe zebra monkey snake turtle frog butterfly bee spider shell crystal diamond coin key lock "
    "sword shield helmet armor candle mirror painting sculpture vase basket carpet pillow blanket").split()
ADJECTIVES = (
    "red blue green yellow black white brown pink purple orange golden silver old new small large tiny huge "
    "modern vintage wooden metal glass plastic bright dark colorful beautiful cute happy wild young ancient "
    "rustic elegant simple abstract").split()
WEB_WORDS = (
    "photo image picture the of a in on with and for free stock hd high resolution background vector "
    "illustration design art drawing print wallpaper closeup view from top best new sale buy online shop "
    "quality premium set collection style pattern isolated white close up detail summer winter spring autumn "
    "night day light cartoon realistic template card gift home decor").split()
TEMPLATES = ("a photo of a {c}", "{c}", "{c} on a white background", "close-up of a {c}", "{c} stock photo",
             "vector illustration of a {c}", "a {c} in the garden", "picture of the {c}", "my {c}",
             "{c} for sale", "an old photo of a {c}", "the {c} at night", "{c} icon", "beautiful {c} wallpaper",
             "{c} drawing for kids")
FOREIGN = {
    "de": (("ein Foto von einem {c} auf hellem Hintergrund", "{c} zum Herunterladen, kostenlos",
            "Bild von einem schönen {c} für Kinder"),
           "Hund Katze Pferd Vogel Fisch Auto Haus Brücke Baum Blume Berg Fluss Strand Stadt Küche Stuhl Tisch "
           "Uhr Buch Flasche Tasse Teller Kuchen Brot Apfel Kleid Schuh Hut Tasche Karte".split()),
    "fr": (("une photo d'un {c} sur fond clair", "illustration vectorielle d'un {c} gratuit",
            "image d'un joli {c} pour les enfants"),
           "chien chat cheval oiseau poisson voiture maison pont arbre fleur montagne rivière plage ville "
           "cuisine chaise table horloge livre bouteille tasse assiette gâteau pain pomme robe chaussure chapeau "
           "sac carte".split()),
    "es": (("una foto de un {c} sobre fondo claro", "ilustración vectorial de un {c} gratis",
            "imagen de un {c} bonito para niños"),
           "perro gato caballo pájaro pez coche casa puente árbol flor montaña río playa ciudad cocina silla "
           "mesa reloj libro botella taza plato pastel pan manzana vestido zapato sombrero bolso mapa".split()),
}
SHORT = ("{n}", "{a} {n}", "IMG_{d}.JPG", "DSC{d}", "untitled", "image")
NSFW_TERMS = tuple(t for t in DEFAULT_NSFW_TERMS if " " not in t)


@dataclass(frozen=True)
class SyntheticSpec:
    """What a synthetic pool holds: its size, layout and the rates of everything planted."""

    n: int
    shard_size: int = 10_000
    dim: int = 512
    seed: int = 0
    slice_shards: int = 10            # shards per download slice
    exact_fraction: float = 0.03      # samples that are exact copies of another sample
    near_fraction: float = 0.03       # samples that are near copies of another sample
    foreign_fraction: float = 0.04
    short_fraction: float = 0.03
    nsfw_fraction: float = 0.01
    undecodable_fraction: float = 0.002
    banner_fraction: float = 0.01
    zipf_concepts: float = 1.0
    zipf_words: float = 1.1

    def validate(self) -> None:
        if self.n < 2 or self.shard_size < 1 or self.dim < 8:
            raise ValueError(f"synthetic pool: n={self.n} (>= 2), shard_size={self.shard_size} (>= 1), "
                             f"dim={self.dim} (>= 8)")
        if self.dim not in MODELS_BY_DIM:
            raise ValueError(f"synthetic pool: dim={self.dim}; the embedder it poses as must be one of "
                             f"{sorted(MODELS_BY_DIM)} wide")
        if 2 * (self.exact_fraction + self.near_fraction) > 1:
            raise ValueError("synthetic pool: exact_fraction + near_fraction must be at most 0.5")

    @property
    def n_shards(self) -> int:
        return -(-self.n // self.shard_size)

    @property
    def pairs(self) -> tuple[int, int]:
        return int(round(self.exact_fraction * self.n)), int(round(self.near_fraction * self.n))

    def embedder(self) -> EmbedderSpec:
        return EmbedderSpec(model=MODELS_BY_DIM[self.dim], checkpoint=SYNTHETIC_CHECKPOINT)

    def download_config(self) -> DownloadConfig:
        return DownloadConfig(shard_size=self.shard_size)


@dataclass
class SyntheticPool:
    """What :func:`make_synthetic_pool` made: the manifests, the planted pairs and how long it took."""

    name: str
    spec: SyntheticSpec
    pool: dict
    embeddings: dict
    truth: pd.DataFrame
    seconds: float
    stats: dict = field(default_factory=dict)

    @property
    def samples_per_second(self) -> float:
        return self.spec.n / self.seconds if self.seconds else float("nan")


# ----- counter-based randomness ----------------------------------------------------------------
_U64 = np.uint64


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, element-wise on uint64 (a bijection: distinct inputs, distinct outputs)."""
    with np.errstate(over="ignore"):
        z = x + _U64(0x9E3779B97F4A7C15)
        shifted = z >> _U64(30)
        z ^= shifted
        z *= _U64(0xBF58476D1CE4E5B9)
        np.right_shift(z, _U64(27), out=shifted)
        z ^= shifted
        z *= _U64(0x94D049BB133111EB)
        np.right_shift(z, _U64(31), out=shifted)
        z ^= shifted
        return z


class Hasher:
    """Random numbers as pure functions of (seed, field, row, column): any row computed anywhere alike."""

    FIELDS = ("uid", "sha", "phash", "thumb", "concept", "noise", "score", "caption", "words", "size", "flip",
              "thumb_noise", "copy_noise", "copy_cos", "status")

    def __init__(self, seed: int):
        self.keys = {name: splitmix64(np.array([(seed << 8) + i], dtype=_U64))[0]
                     for i, name in enumerate(self.FIELDS)}

    def bits(self, name: str, rows: np.ndarray, width: int = 1) -> np.ndarray:
        """``len(rows) x width`` uint64."""
        counters = (rows.astype(_U64)[:, None] << _U64(20)) | np.arange(width, dtype=_U64)[None, :]
        counters ^= self.keys[name]
        return splitmix64(counters)

    def uniform(self, name: str, rows: np.ndarray, width: int = 1) -> np.ndarray:
        """``len(rows) x width`` float64 in [0, 1)."""
        return (self.bits(name, rows, width) >> _U64(11)).astype(np.float64) * 2.0 ** -53

    def normal(self, name: str, rows: np.ndarray, width: int) -> np.ndarray:
        """``len(rows) x width`` float32 standard normals (Box-Muller, in float32, on 24-bit halves of each word)."""
        half = (width + 1) // 2
        words = self.bits(name, rows, half)
        u1 = ((words >> _U64(40)).astype(np.float32) + np.float32(0.5)) * np.float32(2.0 ** -24)
        u2 = ((words & _U64(0xFFFFFF)).astype(np.float32) + np.float32(0.5)) * np.float32(2.0 ** -24)
        del words
        radius = np.sqrt(np.float32(-2.0) * np.log(u1))
        angle = np.float32(2.0 * np.pi) * u2
        out = np.empty((len(rows), 2 * half), dtype=np.float32)
        np.multiply(radius, np.cos(angle), out=out[:, :half])
        np.multiply(radius, np.sin(angle), out=out[:, half:])
        return out[:, :width]


@lru_cache(maxsize=4)
def concept_model(seed: int, dim: int, zipf: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concept centres (unit rows, a 20 / 200 / 2,000 hierarchy), their cumulative Zipf shares and noise."""
    rng = np.random.default_rng([seed, 12345])

    def unit(rows: int) -> np.ndarray:
        x = rng.standard_normal((rows, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    top = unit(N_SUPER)
    topics = top[rng.integers(0, N_SUPER, N_TOPICS)] + 0.9 * unit(N_TOPICS)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    centres = topics[rng.integers(0, N_TOPICS, N_CONCEPTS)] + 0.7 * unit(N_CONCEPTS)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    shares = 1.0 / np.arange(1, N_CONCEPTS + 1) ** zipf
    shares = shares[rng.permutation(N_CONCEPTS)]  # the big concepts spread over the topics
    cumulative = np.cumsum(shares / shares.sum())
    spread = rng.uniform(0.7, 1.3, N_CONCEPTS).astype(np.float32)  # noise norm: same-concept cosine 0.37-0.67
    return centres.astype(np.float32), cumulative, spread


def _zipf_cumulative(size: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, size + 1) ** exponent
    return np.cumsum(weights / weights.sum())


WORDS = tuple(dict.fromkeys(WEB_WORDS + ADJECTIVES + NOUNS))


# ----- one sample's content, vectorised over rows ----------------------------------------------
def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _hex(words: np.ndarray) -> np.ndarray:
    """Each row of uint64 words as one hex string."""
    width = 16 * words.shape[1]
    return np.frombuffer(binascii.hexlify(np.ascontiguousarray(words).tobytes()), dtype=f"S{width}").astype(str)


def _phash(keys: np.ndarray) -> np.ndarray:
    """64-bit hashes with exactly 32 bits set (the positions of the 32 smallest keys), as int64."""
    bits = np.zeros(keys.shape, dtype=bool)
    np.put_along_axis(bits, np.argpartition(keys, 32, axis=1)[:, :32], True, axis=1)
    return np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.int64)


def identity(spec: SyntheticSpec, hasher: Hasher, rows: np.ndarray) -> dict:
    """The image of each sample ``rows``: concept, unit image embedding, pHash, thumbnail, sha256, sizes."""
    centres, cumulative, spread = concept_model(spec.seed, spec.dim, spec.zipf_concepts)
    concept = np.minimum(np.searchsorted(cumulative, hasher.uniform("concept", rows)[:, 0]), N_CONCEPTS - 1)
    noise = hasher.normal("noise", rows, spec.dim)
    noise *= (spread[concept] / np.sqrt(spec.dim))[:, None]
    image = _unit_rows(centres[concept] + noise)
    size = hasher.uniform("size", rows, 3)
    # log-normal sides (median 480 px), log-normal aspect; 1 % banners of aspect 4
    long_side = np.exp(np.log(480) + 0.6 * _probit(size[:, 0]))
    aspect = np.where(size[:, 2] < spec.banner_fraction, 4.0, np.exp(0.3 * _probit(size[:, 1])))
    width = np.clip(np.round(long_side), 16, 6000).astype(np.int64)
    height = np.clip(np.round(long_side / aspect), 8, 6000).astype(np.int64)
    return {"concept": concept, "image": image, "phash": _phash(hasher.uniform("phash", rows, 64)),
            "thumb": hasher.bits("thumb", rows, 24).view(np.uint8).reshape(len(rows), 192),
            "sha256": _hex(hasher.bits("sha", rows, 4)), "original_width": width, "original_height": height}


def _probit(u: np.ndarray) -> np.ndarray:
    """Approximately normal from uniform (the logistic quantile scaled to unit variance)."""
    u = np.clip(u, 1e-12, 1 - 1e-12)
    return np.log(u / (1 - u)) * (np.sqrt(3) / np.pi)


def _resized(width: np.ndarray, height: np.ndarray, size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """img2dataset's keep_ratio resize (only if bigger): the smaller side becomes ``size``."""
    scale = np.minimum(1.0, size / np.maximum(np.minimum(width, height), 1))
    return np.round(width * scale).astype(np.int64), np.round(height * scale).astype(np.int64)


def captions(spec: SyntheticSpec, hasher: Hasher, rows: np.ndarray,
             concept: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Each row's caption and kind (0 English, 1 foreign, 2 short, 3 English with an NSFW term)."""
    u = hasher.uniform("caption", rows, 6)
    kind = np.zeros(len(rows), dtype=np.int8)
    kind[u[:, 0] < spec.foreign_fraction + spec.short_fraction + spec.nsfw_fraction] = 3
    kind[u[:, 0] < spec.foreign_fraction + spec.short_fraction] = 2
    kind[u[:, 0] < spec.foreign_fraction] = 1
    word_cumulative = _zipf_cumulative(len(WORDS), spec.zipf_words)
    extra = np.minimum(np.searchsorted(word_cumulative, hasher.uniform("words", rows, MAX_EXTRA_WORDS)), len(WORDS) - 1)
    n_extra = (u[:, 1] * (MAX_EXTRA_WORDS + 1)).astype(int)
    noun = concept % len(NOUNS)
    adjective = (concept // len(NOUNS)) % len(ADJECTIVES)
    template = (u[:, 2] * len(TEMPLATES)).astype(int)
    languages = list(FOREIGN)
    language = (u[:, 3] * len(languages)).astype(int)
    digits = (u[:, 4] * 10000).astype(int)
    term = (u[:, 5] * len(NSFW_TERMS)).astype(int)
    texts = []
    for i in range(len(rows)):
        k = kind[i]
        if k == 1:
            templates, nouns = FOREIGN[languages[language[i]]]
            texts.append(templates[template[i] % len(templates)].format(c=nouns[noun[i] % len(nouns)]))
            continue
        if k == 2:
            texts.append(SHORT[template[i] % len(SHORT)].format(n=NOUNS[noun[i]], a=ADJECTIVES[adjective[i]],
                                                                d=digits[i]))
            continue
        text = TEMPLATES[template[i]].format(c=f"{ADJECTIVES[adjective[i]]} {NOUNS[noun[i]]}")
        words = [WORDS[w] for w in extra[i, :n_extra[i]]]
        if k == 3:
            words.insert(int(digits[i] % (len(words) + 1)), NSFW_TERMS[term[i]])
        texts.append(" ".join([text, *words]) if words else text)
    return texts, kind


# ----- the plan of planted pairs ---------------------------------------------------------------
def duplicate_plan(spec: SyntheticSpec) -> pd.DataFrame:
    """Every planted pair: ``copy`` row, ``source`` row and ``kind`` (0 exact, 1 near), sorted by copy.

    The rows are drawn without replacement from the whole pool, so no row is in two pairs.
    """
    exact, near = spec.pairs
    rng = np.random.default_rng([spec.seed, 777])
    chosen = rng.choice(spec.n, size=2 * (exact + near), replace=False).astype(np.int64)
    plan = pd.DataFrame({"copy": np.concatenate([chosen[:exact], chosen[2 * exact:2 * exact + near]]),
                         "source": np.concatenate([chosen[exact:2 * exact], chosen[2 * exact + near:]]),
                         "kind": np.repeat(np.array([0, 1], dtype=np.int8), [exact, near])})
    return plan.sort_values("copy", ignore_index=True)


# ----- one shard --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardJob:
    number: int           # the shard's position in the pool
    slice_index: int
    slice_key: str
    shard_in_slice: int
    start: int            # first global row
    stop: int
    copies: np.ndarray    # global rows of planted copies in this shard
    sources: np.ndarray   # their source rows (anywhere in the pool)
    kinds: np.ndarray     # 0 exact, 1 near
    members: np.ndarray   # every global row of this shard that is in a planted pair


def make_shard(store: Store, spec: SyntheticSpec, job: ShardJob, raw_folder: str, files) -> dict:
    """Write one shard's img2dataset table, placeholder tar and embed outputs; returns its records and truth."""
    hasher = Hasher(spec.seed)
    rows = np.arange(job.start, job.stop, dtype=np.int64)
    n = len(rows)
    base = identity(spec, hasher, rows)
    image = base["image"]
    phash, thumb, sha = base["phash"], base["thumb"], base["sha256"]
    original_width, original_height = base["original_width"], base["original_height"]
    truth = pd.DataFrame()
    if len(job.copies):
        at = job.copies - job.start
        source = identity(spec, hasher, job.sources)
        exact = job.kinds == 0
        # the copy's embedding: the source's plus noise of the copy's own, at a chosen cosine
        target = np.where(exact, 0.9995, 0.975 + 0.02 * hasher.uniform("copy_cos", job.copies)[:, 0])
        eps = np.sqrt(1.0 / target ** 2 - 1.0)
        noise = _unit_rows(hasher.normal("copy_noise", job.copies, spec.dim))
        noise -= (noise * source["image"]).sum(axis=1, keepdims=True) * source["image"]  # orthogonal to the source
        noise = _unit_rows(noise)
        image[at] = _unit_rows(source["image"] + eps[:, None].astype(np.float32) * noise)
        # pHash: exact copies the same; near copies 1-4 bits flipped
        flips = hasher.uniform("flip", job.copies, 65)
        n_flips = np.where(exact, 0, 1 + (flips[:, 64] * 4).astype(int))
        order = np.argsort(flips[:, :64], axis=1)
        mask_bits = np.arange(64)[None, :] < n_flips[:, None]
        flip_bits = np.zeros((len(at), 64), dtype=bool)
        np.put_along_axis(flip_bits, order, mask_bits, axis=1)
        flip_word = np.packbits(flip_bits, axis=1).view(">u8")[:, 0].astype(np.int64)
        phash[at] = source["phash"] ^ flip_word
        # thumbnail: exact copies the same bytes; near copies each byte within +-4
        jitter = (hasher.bits("thumb_noise", job.copies, 192) % _U64(9)).astype(np.int16) - 4
        jitter[exact] = 0
        thumb[at] = np.clip(source["thumb"].astype(np.int16) + jitter, 0, 255).astype(np.uint8)
        sha[at[exact]] = source["sha256"][exact]
        original_width[at[exact]] = source["original_width"][exact]
        original_height[at[exact]] = source["original_height"][exact]
        image16 = image[at].astype(np.float16).astype(np.float32)
        source16 = source["image"].astype(np.float16).astype(np.float32)
        truth = pd.DataFrame({
            "kind": np.where(exact, "exact", "near"), "copy_row": job.copies, "source_row": job.sources,
            "copy_shard": job.number, "source_shard": job.sources // spec.shard_size,
            "copy_uid": _hex(hasher.bits("uid", job.copies, 2)), "source_uid": _hex(hasher.bits("uid", job.sources, 2)),
            "phash_bits": np.bitwise_count((phash[at] ^ source["phash"]).view(np.uint64)).astype(np.int8),
            "color_distance": np.abs(thumb[at].astype(np.int16) - source["thumb"].astype(np.int16)).mean(axis=1),
            "cosine": (image16 * source16).sum(axis=1) / (np.linalg.norm(image16, axis=1)
                                                           * np.linalg.norm(source16, axis=1))})
    # undecodable samples (never a pair member): no embedding, no pHash, the embed stage's reason
    undecodable = hasher.uniform("status", rows)[:, 0] < spec.undecodable_fraction
    undecodable[np.searchsorted(rows, job.members)] = False
    texts, kind = captions(spec, hasher, rows, base["concept"])
    score = np.clip(0.30 + 0.05 * hasher.normal("score", rows, 1)[:, 0] - np.where(kind == 1, 0.06, 0.0)
                    - np.where(kind == 2, 0.04, 0.0), 0.02, 0.5)
    # the text embedding sits at exactly the CLIP score's cosine from the image embedding
    other = np.roll(image, 7, axis=1)  # a direction nearly orthogonal to the image embedding, made exactly so
    other -= (other * image).sum(axis=1, keepdims=True) * image
    text = (score[:, None].astype(np.float32) * image
            + np.sqrt(1 - score ** 2)[:, None].astype(np.float32) * _unit_rows(other))
    image[undecodable] = 0
    clip_score = np.where(undecodable, np.nan, (image * text).sum(axis=1)).astype(np.float32)
    phash[undecodable] = 0
    thumb[undecodable] = 0
    width, height = _resized(original_width, original_height)
    width[undecodable] = 0
    height[undecodable] = 0

    uid = _hex(hasher.bits("uid", rows, 2))
    digits = max(4, len(str(spec.shard_size - 1)))
    key = np.char.add(f"{job.shard_in_slice:05d}", np.char.zfill(np.arange(n).astype(str), digits))
    downloaded = pa.table({
        "uid": uid, "key": key, "caption": texts,
        "url": np.char.add(np.char.add("https://img.example.com/", uid), ".jpg"),
        "status": np.full(n, "success"), "error_message": pa.nulls(n, pa.string()),
        "width": width, "height": height, "original_width": original_width, "original_height": original_height,
        "sha256": sha})
    tar_rel = f"{raw_folder}/{job.shard_in_slice:05d}.tar"
    parquet_rel = f"{raw_folder}/{job.shard_in_slice:05d}.parquet"
    raw_bytes = _parquet_bytes(downloaded)
    store.write_bytes(tar_rel, _EMPTY_TAR)
    store.write_bytes(parquet_rel, raw_bytes)

    store.write_npy(files.image_embeddings, image.astype(np.float16))
    store.write_npy(files.text_embeddings, text.astype(np.float16))
    reason = np.where(undecodable, "undecodable", "")
    table = pa.table({
        "uid": uid, "key": key, "text": texts, "clip_score": clip_score, "embed_ok": ~undecodable,
        "embed_reason": reason, "phash": phash,
        "thumb": pa.FixedSizeBinaryArray.from_buffers(pa.binary(192), n, [None, pa.py_buffer(thumb.tobytes())])
        .cast(pa.binary()),
        "sha256": sha, "width": width, "height": height,
        "original_width": original_width, "original_height": original_height})
    store.write_bytes(files.parquet, _parquet_bytes(table))  # last: its presence marks the shard done
    return {
        "record": {"shard_id": job_shard_id(job), "tar": tar_rel, "parquet": parquet_rel, "n_rows": n,
                   "n_success": n, "content_hash": hashlib.sha256(raw_bytes).hexdigest()},
        "embedded": {**files.to_dict(), "rows": n, "embedded": int((~undecodable).sum()),
                     "reasons": {"undecodable": int(undecodable.sum())} if undecodable.any() else {}},
        "truth": truth,
        "counts": {"foreign": int((kind == 1).sum()), "short": int((kind == 2).sum()), "nsfw": int((kind == 3).sum()),
                   "undecodable": int(undecodable.sum()),
                   "small": int((np.minimum(original_width, original_height) < 200).sum())},
    }


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _empty_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w"):
        pass
    return buffer.getvalue()


_EMPTY_TAR = _empty_tar()


def job_shard_id(job: ShardJob) -> str:
    return shard_id(job.slice_index, job.slice_key, job.shard_in_slice)


def _slice_plans(name: str, spec: SyntheticSpec) -> list[SlicePlan]:
    rows = spec.slice_shards * spec.shard_size
    return [SlicePlan(pool=name, index=index, start=start, stop=min(spec.n, start + rows),
                      content_hash=hash_json({"synthetic": name, "spec": spec.__dict__, "start": start}))
            for index, start in enumerate(range(0, spec.n, rows))]


def embedding_folder(catalog: Catalog, name: str, spec: SyntheticSpec) -> str:
    """The embedding folder the embed-and-filter plan names for this embedder (checked after publishing)."""
    return catalog.embedding_folder(name, hash_json({"embedder": spec.embedder().key, "code": embed_code_version()}))


def make_synthetic_pool(catalog: Catalog, name: str, n: int, shard_size: int = 10_000, dim: int = 512, seed: int = 0,
                        client=None, **rates) -> SyntheticPool:
    """Write a synthetic pool of ``n`` samples through ``catalog`` (one task per shard on ``client``'s
    workers, or here one shard at a time); ``rates`` override :class:`SyntheticSpec`'s fractions."""
    spec = SyntheticSpec(n=n, shard_size=shard_size, dim=dim, seed=seed, **rates)
    spec.validate()
    started = time.perf_counter()
    store = catalog.store
    config = spec.download_config()
    plans = _slice_plans(name, spec)
    plan = duplicate_plan(spec)
    copies, sources, kinds = plan["copy"].to_numpy(), plan["source"].to_numpy(), plan["kind"].to_numpy()
    members = np.sort(np.concatenate([copies, sources]))
    folder = embedding_folder(catalog, name, spec)
    jobs = []
    for slice_plan in plans:
        key = slice_key(slice_plan, config)
        for shard_in_slice, start in enumerate(range(slice_plan.start, slice_plan.stop, spec.shard_size)):
            stop = min(slice_plan.stop, start + spec.shard_size)
            lo, hi = np.searchsorted(copies, [start, stop])
            mlo, mhi = np.searchsorted(members, [start, stop])
            jobs.append(ShardJob(number=len(jobs), slice_index=slice_plan.index, slice_key=key,
                                 shard_in_slice=shard_in_slice, start=start, stop=stop, copies=copies[lo:hi],
                                 sources=sources[lo:hi], kinds=kinds[lo:hi], members=members[mlo:mhi]))
    raw_folders = {p.index: catalog.slice_folder(name, p.index, slice_key(p, config)) for p in plans}
    arguments = [(spec, job, raw_folders[job.slice_index], catalog.embedded_shard(folder, job_shard_id(job)))
                 for job in jobs]
    if client is not None:
        futures = [client.submit(make_shard, store, *args, pure=False) for args in arguments]
        results = []
        for future in futures:  # in shard order; each result is small (records, counts, the truth rows)
            results.append(future.result())
            future.release()
    else:
        results = [make_shard(store, *args) for args in arguments]

    slices = []
    for slice_plan in plans:
        shards = [r["record"] for job, r in zip(jobs, results) if job.slice_index == slice_plan.index]
        rows = sum(s["n_rows"] for s in shards)
        result = SliceResult(pool=name, index=slice_plan.index, key=slice_key(slice_plan, config),
                             folder=raw_folders[slice_plan.index], n_rows=rows, status_counts={"success": rows},
                             reason_counts={}, shards=shards, rows_hash=slice_plan.content_hash)
        slices.append(catalog.publish(raw_folders[slice_plan.index], result.to_manifest(store, config)))
    pool, _ = publish_pool(catalog, f"synthetic://{name}?n={n}&seed={seed}", name, plans, slices, config)
    record = PoolRecord(name, pool)
    embeddings = embedding_manifest(catalog, record, spec.embedder(), folder, [r["embedded"] for r in results])
    truth = pd.concat([r["truth"] for r in results], ignore_index=True)
    seconds = time.perf_counter() - started
    counts = {k: sum(r["counts"][k] for r in results) for k in results[0]["counts"]}
    distance = (truth["copy_shard"] - truth["source_shard"]).abs()
    stats = {"samples": n, "shards": len(jobs), "slices": len(plans), "dim": dim, "seed": seed,
             "exact_pairs": int((truth["kind"] == "exact").sum()), "near_pairs": int((truth["kind"] == "near").sum()),
             "pairs_within_one_shard": int((distance == 0).sum()),
             "pair_shard_distance_median": float(distance.median()) if len(truth) else 0.0,
             "pair_shard_distance_max": int(distance.max()) if len(truth) else 0,
             "near_phash_bits": {int(k): int(v) for k, v in
                                 truth.loc[truth["kind"] == "near", "phash_bits"].value_counts().sort_index().items()},
             "near_cosine_min": float(truth.loc[truth["kind"] == "near", "cosine"].min()) if len(truth) else None,
             "exact_cosine_min": float(truth.loc[truth["kind"] == "exact", "cosine"].min()) if len(truth) else None,
             "near_color_distance_max": float(truth.loc[truth["kind"] == "near", "color_distance"].max())
             if len(truth) else None,
             **counts, "seconds": round(seconds, 2), "samples_per_second": round(n / seconds, 1)}
    return SyntheticPool(name=name, spec=spec, pool=pool, embeddings=embeddings, truth=truth, seconds=seconds,
                         stats=stats)


def check_embedding_folder(catalog: Catalog, synthetic: SyntheticPool) -> None:
    """The embed-and-filter plan names the folder the synthetic embeddings are in (else the pool would not
    pass as this embedder's run)."""
    from tasks.filters.plan import plan_embed_filter

    planned = plan_embed_filter(catalog, PoolRecord(synthetic.name, synthetic.pool),
                                synthetic.spec.embedder().to_dict(), None)["embeddings"]
    made = catalog.store.relative(synthetic.embeddings["outputs"]["folder"])
    if planned != made:
        raise AssertionError(f"synthetic embeddings in {made}, but the embed-and-filter plan names {planned}")
