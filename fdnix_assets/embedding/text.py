"""What text stands for a package in vector search, and the content hash that keys reuse.

The text is ``"<attr path> (<main program>): <description>. <long description start>"``:
the attribute path carries the package set (``python313Packages.``) and the name people type,
the main program is what they run, the description says what it does, and the start of the
long description adds the words an intent query uses ("tiling window manager") that a
one-line description often lacks. Measured on the dev queries, adding the long description
lifted vector recall; beyond ~300 characters it only costs embedding time.

The content hash is a SHA-256 of exactly this text plus the model id and dimension, so a
changed description, a new model or a new dimension each re-embed the package, and nothing
else does.
"""

from __future__ import annotations

import hashlib

LONG_DESCRIPTION_CHARS = 300
# Titan Text Embeddings v2 takes up to 8,192 tokens (50,000 characters); MiniLM reads 256
# word pieces. Our texts stay far below both; this bound keeps a hostile 10 MB description
# from reaching a model at all.
MAX_TEXT_CHARS = 2_000


def _squash(text: str | None) -> str:
    return " ".join(text.split()) if text else ""


def embedding_text(
    attr_path: str,
    main_program: str | None,
    description: str | None,
    long_description: str | None,
) -> str:
    head = attr_path
    program = _squash(main_program)
    if program and program != attr_path.rsplit(".", 1)[-1]:
        head = f"{head} ({program})"
    body = _squash(description).rstrip(".")
    text = f"{head}: {body}." if body else head
    extra = _squash(long_description)
    if extra:
        if len(extra) > LONG_DESCRIPTION_CHARS:
            extra = extra[:LONG_DESCRIPTION_CHARS].rsplit(" ", 1)[0]
        text = f"{text} {extra}"
    return text[:MAX_TEXT_CHARS]


def content_hash(text: str, model_id: str, dimensions: int) -> str:
    digest = hashlib.sha256()
    digest.update(f"{model_id}\x00{dimensions}\x00".encode())
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()
