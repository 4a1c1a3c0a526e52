"""Text part of the history encoder: a dependency-free hashed n-gram embedding, plus plugins.

The paper embeds history with a frozen Qwen3-Embedding model. The default here is a stable
feature-hashing embedding that needs no weights; a sentence-transformers model already on disk
can be plugged in through the same :class:`TextEncoder` protocol.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections import Counter
from typing import Any, Callable, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)
_SPACE = re.compile(r"\s+", re.UNICODE)


@functools.lru_cache(maxsize=1 << 18)
def _feature_hash(feature: str, seed: int) -> int:
    # blake2b, not Python's hash(): the latter is salted per process (PYTHONHASHSEED), which
    # would make embeddings, and so trained models, irreproducible across runs.
    digest = hashlib.blake2b(f"{seed}\x00{feature}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _features(text: str, ngram_range: tuple[int, int]) -> Counter:
    text = _SPACE.sub(" ", text.lower()).strip()
    counts: Counter = Counter()
    if not text:
        return counts
    padded = f" {text} "  # word boundaries become part of the edge n-grams
    lo, hi = ngram_range
    for n in range(lo, hi + 1):
        # Prefixes keep char n-grams and words in separate hash spaces ("the" vs " th").
        counts.update("c" + padded[i : i + n] for i in range(max(len(padded) - n + 1, 0)))
    counts.update("w" + w for w in _WORD.findall(text))
    return counts


def _check_params(dim: int, ngram_range: Sequence[int]) -> tuple[int, int]:
    if int(dim) < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    lo, hi = (int(v) for v in ngram_range)
    if not 1 <= lo <= hi:
        raise ValueError(f"ngram_range must satisfy 1 <= lo <= hi, got {tuple(ngram_range)}")
    return lo, hi


def hashed_ngram_embedding(
    texts: Sequence[Optional[str]],
    dim: int = 64,
    ngram_range: tuple[int, int] = (3, 5),
    seed: int = 0,
) -> np.ndarray:
    """Embed texts by feature hashing, shape (len(texts), dim) float32.

    Features are lowercased character n-grams (whitespace collapsed, text padded by one space)
    and word unigrams. Each feature goes to bucket ``h % dim`` with sign from another bit of
    ``h`` (a stable blake2b hash of seed + feature), weighted by ``log1p(count)``; rows are
    L2-normalised. ``None`` or blank text gives a zero row. Identical across processes/machines.
    """
    ngram_range = _check_params(dim, ngram_range)
    out = np.zeros((len(texts), int(dim)), np.float32)
    for row, text in enumerate(texts):
        if not text:
            continue
        counts = _features(text, ngram_range)
        if not counts:
            continue
        hashes = np.fromiter((_feature_hash(f, seed) for f in counts), np.uint64, len(counts))
        buckets = (hashes % np.uint64(dim)).astype(np.int64)
        # Bit 63 is independent of the low bits used for the bucket (for dim << 2**63).
        signs = np.where((hashes >> np.uint64(63)) & np.uint64(1), -1.0, 1.0)
        weights = np.log1p(np.fromiter(counts.values(), np.float64, len(counts)))
        vec = np.zeros(int(dim), np.float64)
        np.add.at(vec, buckets, signs * weights)
        norm = np.linalg.norm(vec)
        if norm > 0:  # all features may cancel out in a tiny dim
            out[row] = vec / norm
    return out


@runtime_checkable
class TextEncoder(Protocol):
    """Turns texts into fixed-size float32 vectors (rows L2-normalised; empty text -> zeros)."""

    dim: int
    name: str

    def encode(self, texts: Sequence[Optional[str]]) -> np.ndarray:
        """Embed ``texts``, shape (len(texts), dim) float32."""
        ...


class HashedNgramEncoder:
    """:func:`hashed_ngram_embedding` as a :class:`TextEncoder`; needs no weights."""

    name = "hashed_ngram"

    def __init__(self, dim: int = 64, ngram_range: tuple[int, int] = (3, 5), seed: int = 0):
        self.ngram_range = _check_params(dim, ngram_range)
        self.dim = int(dim)
        self.seed = int(seed)

    def encode(self, texts: Sequence[Optional[str]]) -> np.ndarray:
        return hashed_ngram_embedding(texts, self.dim, self.ngram_range, self.seed)

    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings; :func:`make_text_encoder` rebuilds the same encoder."""
        return {"name": self.name, "dim": self.dim, "ngram_range": list(self.ngram_range), "seed": self.seed}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "HashedNgramEncoder":
        _check_name(config, cls.name)
        return cls(
            dim=config.get("dim", 64),
            ngram_range=tuple(config.get("ngram_range", (3, 5))),
            seed=config.get("seed", 0),
        )

    def __repr__(self) -> str:
        return f"HashedNgramEncoder(dim={self.dim}, ngram_range={self.ngram_range}, seed={self.seed})"


_ST_MISSING = (
    "SentenceTransformerEncoder needs the optional package 'sentence-transformers': "
    "pip install sentence-transformers; weights must already be on disk — nothing is "
    "downloaded at run time."
)


class SentenceTransformerEncoder:
    """A local sentence-transformers model (e.g. Qwen3-Embedding-0.6B) as a :class:`TextEncoder`.

    Offline only: loads with ``local_files_only=True`` and sets ``HF_HUB_OFFLINE=1`` (unless
    already set) before importing, so a missing model fails instead of downloading.
    """

    name = "sentence_transformer"

    def __init__(self, model_name_or_path: str, device: Optional[str] = None, batch_size: int = 32):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise ImportError(_ST_MISSING) from err
        self.model_name_or_path = str(model_name_or_path)
        self.device = device
        self.batch_size = int(batch_size)
        self._model = SentenceTransformer(self.model_name_or_path, device=device, local_files_only=True)
        get_dim = getattr(self._model, "get_sentence_embedding_dimension", None) or getattr(
            self._model, "get_embedding_dimension"
        )
        self.dim = int(get_dim())

    def encode(self, texts: Sequence[Optional[str]]) -> np.ndarray:
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        keep = [i for i, t in enumerate(texts) if t]
        if keep:
            emb = self._model.encode(
                [texts[i] for i in keep],
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            out[keep] = np.asarray(emb, np.float32)
        return out  # empty text -> zeros, matching HashedNgramEncoder

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model_name_or_path": self.model_name_or_path,
            "device": self.device,
            "batch_size": self.batch_size,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SentenceTransformerEncoder":
        _check_name(config, cls.name)
        return cls(config["model_name_or_path"], config.get("device"), config.get("batch_size", 32))


def _check_name(config: dict[str, Any], expected: str) -> None:
    if config.get("name", expected) != expected:
        raise ValueError(f"config is for encoder {config.get('name')!r}, not {expected!r}")


_ENCODERS: dict[str, Callable[[dict[str, Any]], TextEncoder]] = {
    HashedNgramEncoder.name: HashedNgramEncoder.from_config,
    SentenceTransformerEncoder.name: SentenceTransformerEncoder.from_config,
}


def make_text_encoder(config: dict[str, Any]) -> TextEncoder:
    """Build a text encoder from a ``config()`` dict, keyed by ``config["name"]``."""
    name = config.get("name")
    if name not in _ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; known: {sorted(_ENCODERS)}")
    return _ENCODERS[name](config)
