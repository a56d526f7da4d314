"""The local backend: the bundled all-MiniLM-L6-v2, offline, on a few hundred real texts."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fdnix_assets.embedding.local import LocalEmbedder, load_minilm
from fdnix_assets.embedding.text import embedding_text
from fdnix_assets_tests.conftest import REPO_ROOT
from fdnix_assets_tests.embedding_helpers import first_packages


@pytest.fixture(scope="module")
def sample_texts() -> list[str]:
    texts = []
    for path, package in first_packages(300).items():
        meta = package["meta"]
        texts.append(
            embedding_text(
                path, meta.get("mainProgram"), meta.get("description"), meta.get("longDescription")
            )
        )
    return texts


def test_vectors_match_the_models_own_encode_in_input_order(sample_texts: list[str]) -> None:
    reports: list[tuple[int, int]] = []
    embedder = LocalEmbedder(chunk_size=64, progress_interval=0.0)
    result = embedder.embed(
        sample_texts, progress=lambda done, total, seconds: reports.append((done, total))
    )
    assert result.vectors.shape == (300, 384)
    assert result.vectors.dtype == np.float32
    reference = load_minilm().encode(sample_texts, convert_to_numpy=True)
    np.testing.assert_allclose(result.vectors, reference, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-4)
    # A progress report after every chunk (interval 0 here), ending with the total.
    assert len(reports) == 5 and reports[-1] == (300, 300)
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)


def test_texts_longer_than_the_model_reads_are_counted() -> None:
    long_text = " ".join(f"word{index}" for index in range(400))
    result = LocalEmbedder().embed(["ripgrep: recursively searches directories", long_text])
    assert result.truncated == 1
    assert LocalEmbedder().embed(["tmux: terminal multiplexer"]).truncated == 0


def test_no_texts_means_no_model_load() -> None:
    code = (
        "import sys\n"
        "from fdnix_assets.embedding.local import LocalEmbedder\n"
        "import fdnix_assets.definitions\n"
        "result = LocalEmbedder().embed([])\n"
        "assert result.vectors.shape == (0, 384), result.vectors.shape\n"
        "heavy = [m for m in ('torch', 'sentence_transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
