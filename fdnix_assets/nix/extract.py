"""Running ``nix-env -qaP --json --meta`` for real, and fetching ready dumps (``NIXPKGS_JSON``).

Both produce a :class:`Listing`: a file holding the JSON listing in nix-env's shape (or a
channel's ``packages.json``), written to disk rather than held in a pipe, plus what the
evaluation said on stderr. :mod:`fdnix_assets.normalize` reads the file.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO

WRAPPER_FILE = "wrapper.nix"
DEFAULT_TIMEOUT_SECONDS = 3 * 60 * 60
# A full nixpkgs evaluation takes minutes and prints nothing on its own: say it is alive.
EVALUATION_PROGRESS_INTERVAL_SECONDS = 30.0
INVALID_META_LINE = re.compile(r"derivation '([^']*)' has invalid meta attribute '([^']*)'")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
COPY_CHUNK_BYTES = 8 * 1024 * 1024
# Each logged line is an event in Dagster's log; all lines are kept in the Listing regardless.
MAX_LOGGED_STDERR_LINES = 200

LogFunction = Callable[[str], None]


class ExtractionError(RuntimeError):
    """Getting the package listing failed; the message says what to do about it."""


@dataclass
class Listing:
    """A package listing on disk and what producing it said."""

    path: Path
    source: str
    source_kind: str
    nixpkgs_root: str | None = None
    seconds: float = 0.0
    stderr_lines: list[str] = field(default_factory=list)
    invalid_meta_attributes: Counter[str] = field(default_factory=Counter)

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()


def redact_url(source: str) -> str:
    """Drops credentials and query strings (signed URLs) from a source before it is shown."""
    parsed = urllib.parse.urlsplit(source)
    if not parsed.scheme or parsed.scheme == "file" or len(parsed.scheme) == 1:
        return source
    host = parsed.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parsed.scheme, host, parsed.path, "", ""))


def scrub_secrets(text: str, source: str) -> str:
    """``text`` (an error message, a line of stderr) without the secret parts of ``source``.

    Error texts quote URLs in their own ways (a host with credentials, a bare query string), so
    redacting URL-shaped substrings is not enough: every secret part is removed wherever it is.
    """
    parsed = urllib.parse.urlsplit(source)
    if not parsed.scheme or len(parsed.scheme) == 1:
        return text
    text = text.replace(source, redact_url(source))
    userinfo = parsed.netloc.rpartition("@")[0]
    secrets = [userinfo, parsed.password, parsed.query, parsed.fragment]
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
        # Messages may quote the same part percent-decoded.
        text = text.replace(urllib.parse.unquote(secret), "***")
    return text


def nix_arguments(nixpkgs: str) -> tuple[list[str], str | None]:
    """The ``--argstr`` pair telling the wrapper what to evaluate, and the local root if any."""
    if nixpkgs.startswith("<") and nixpkgs.endswith(">"):
        return ["--argstr", "nixpkgsSearchPath", nixpkgs[1:-1]], None
    if re.match(r"^https?://", nixpkgs):
        return ["--argstr", "nixpkgsUrl", nixpkgs], None
    path = Path(nixpkgs).expanduser().resolve()
    if not path.exists():
        raise ExtractionError(f"NIXPKGS={nixpkgs!r}: no such file or directory ({path})")
    root = path if path.is_dir() else path.parent
    return ["--argstr", "nixpkgsPath", str(path)], str(root)


def run_nix_env(
    nixpkgs: str,
    work_dir: Path,
    *,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    nix_env: str = "nix-env",
    log: LogFunction = print,
    extra_env: dict[str, str] | None = None,
    progress_interval: float = EVALUATION_PROGRESS_INTERVAL_SECONDS,
) -> Listing:
    """Evaluates ``nixpkgs`` with the real nix-env through the isolating wrapper expression.

    Raises :class:`ExtractionError` when nix-env is missing, exits non-zero, times out or
    prints nothing; stderr lines are passed to ``log`` as they arrive and kept. Every
    ``progress_interval`` seconds ``log`` hears how long the evaluation has run and how much
    JSON it has written, so a long evaluation never looks stuck.
    """
    executable = shutil.which(nix_env)
    if executable is None:
        raise ExtractionError(
            f"{nix_env!r} was not found on PATH: install Nix (Debian: apt-get install nix-bin) "
            "or set NIXPKGS_JSON to a ready package listing instead"
        )
    arguments, nixpkgs_root = nix_arguments(nixpkgs)
    shown = redact_url(nixpkgs)
    work_dir.mkdir(parents=True, exist_ok=True)
    home = work_dir / "nix-home"
    home.mkdir(exist_ok=True)
    output_path = work_dir / "nix-env-output.json"
    wrapper = resources.files("fdnix_assets.nix").joinpath(WRAPPER_FILE)
    # A URL needs a writable store to unpack into; a path or channel evaluates read-only.
    store_flags = (
        ["--store", str(work_dir / "nix-store")]
        if "nixpkgsUrl" in arguments
        else ["--readonly-mode"]
    )
    command = [
        executable,
        "-qaP",
        "--json",
        "--meta",
        "-f",
        str(wrapper),
        *arguments,
        *store_flags,
    ]
    env = {
        **os.environ,
        "HOME": str(home),
        "NIX_STATE_DIR": str(work_dir / "nix-state"),
        "NIX_CONF_DIR": str(work_dir / "nix-conf"),
        **(extra_env or {}),
    }
    (work_dir / "nix-conf").mkdir(exist_ok=True)
    log(f"evaluating {shown} with {executable}")
    started = time.perf_counter()
    stderr_lines: list[str] = []
    with output_path.open("wb") as output:
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        assert process.stderr is not None
        reader = threading.Thread(
            target=_read_stderr,
            args=(process.stderr, stderr_lines, lambda line: scrub_secrets(line, nixpkgs)),
            daemon=True,
        )
        reader.start()
        # The caller's log (Dagster's) is only called from this thread; the reader just collects.
        logged = 0
        deadline = time.monotonic() + timeout_seconds
        reported = time.monotonic()
        try:
            while True:
                remaining = deadline - time.monotonic()
                try:
                    wait = min(1.0, progress_interval, remaining)
                    returncode = process.wait(timeout=max(0.0, wait))
                    break
                except subprocess.TimeoutExpired:
                    logged = _log_new_lines(stderr_lines, logged, log)
                    if time.monotonic() - reported >= progress_interval:
                        reported = time.monotonic()
                        log(
                            f"nix-env still evaluating {shown}: "
                            f"{time.perf_counter() - started:.0f} s, "
                            f"{output_path.stat().st_size:,} bytes of JSON written so far"
                        )
                    if remaining <= 1.0:
                        raise
        except subprocess.TimeoutExpired:
            _kill_group(process)
            reader.join(timeout=5)
            _log_new_lines(stderr_lines, logged, log)
            raise ExtractionError(
                f"nix-env did not finish evaluating {shown} within {timeout_seconds:g} s "
                "and was stopped; raise the timeout or check the evaluation"
            ) from None
        except BaseException:
            _kill_group(process)
            raise
        reader.join(timeout=30)
        _log_new_lines(stderr_lines, logged, log)
    seconds = time.perf_counter() - started
    tail = "\n".join(stderr_lines[-15:])
    if returncode != 0:
        how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited {returncode}"
        raise ExtractionError(
            f"nix-env {how} while evaluating {shown}; last lines of its stderr:\n{tail}"
            + _hint(tail)
        )
    if output_path.stat().st_size == 0:
        raise ExtractionError(
            f"nix-env printed nothing for {shown} (exit code 0); stderr:\n{tail or '(empty)'}"
        )
    invalid = Counter(
        match.group(2)
        for line in stderr_lines
        if (match := INVALID_META_LINE.search(line)) is not None
    )
    log(f"nix-env wrote {output_path.stat().st_size:,} bytes in {seconds:.1f} s")
    return Listing(
        path=output_path,
        source=shown,
        source_kind="nix-env",
        nixpkgs_root=nixpkgs_root,
        seconds=seconds,
        stderr_lines=stderr_lines,
        invalid_meta_attributes=invalid,
    )


def _read_stderr(stream: BinaryIO, lines: list[str], clean: Callable[[str], str]) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            lines.append(clean(line))
    stream.close()


def _log_new_lines(lines: list[str], logged: int, log: LogFunction) -> int:
    """Logs the stderr lines not logged yet, up to a limit; returns how many are accounted for."""
    available = len(lines)
    for line in lines[logged : min(available, MAX_LOGGED_STDERR_LINES)]:
        log(f"nix-env: {line}")
    if logged <= MAX_LOGGED_STDERR_LINES < available:
        log("nix-env: further stderr lines are kept but not logged one by one")
    return max(available, logged)


def _hint(stderr_tail: str) -> str:
    if "was not found in the Nix search path" in stderr_tail:
        return (
            "\nNIXPKGS=<nixpkgs> needs NIX_PATH to name a nixpkgs (nixpkgs=/path/to/nixpkgs); "
            "or set NIXPKGS to a nixpkgs checkout or a channel tarball URL"
        )
    return ""


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def fetch_dump(
    source: str,
    work_dir: Path,
    *,
    s3_client_factory: Callable[[], Any] | None = None,
    log: LogFunction = print,
) -> Listing:
    """Copies a ready listing (path, ``http(s)://`` or ``s3://``) to disk, decompressed."""
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    shown = redact_url(source)
    downloaded = work_dir / "listing.download"
    parsed = urllib.parse.urlsplit(source)
    try:
        if parsed.scheme == "s3":
            if s3_client_factory is None:
                raise ExtractionError(f"NIXPKGS_JSON={shown}: no S3 client is configured")
            key = parsed.path.lstrip("/")
            if not parsed.netloc or not key:
                raise ExtractionError(f"NIXPKGS_JSON={shown}: expected s3://bucket/key")
            log(f"downloading {shown}")
            s3_client_factory().download_file(parsed.netloc, key, str(downloaded))
        elif parsed.scheme in ("http", "https"):
            log(f"downloading {shown}")
            request = _http_request(source)
            with (
                urllib.request.urlopen(request, timeout=300) as response,
                downloaded.open("wb") as target,
            ):
                shutil.copyfileobj(response, target, COPY_CHUNK_BYTES)
        else:
            local = Path(source[7:] if parsed.scheme == "file" else source).expanduser()
            if not local.is_file():
                raise ExtractionError(f"NIXPKGS_JSON={source!r}: no such file")
            downloaded = local
    except ExtractionError:
        raise
    except Exception as error:
        raise ExtractionError(
            f"NIXPKGS_JSON={shown}: could not be read: {type(error).__name__}: "
            f"{scrub_secrets(str(error), source)}"
        ) from None

    listing_path = work_dir / "listing.json"
    if compression_of(downloaded, shown) is None:
        # Plain JSON is read where it is: no copy of a 300 MB file just to rename it.
        if downloaded.parent == work_dir:
            os.replace(downloaded, listing_path)
        else:
            listing_path = downloaded
    else:
        try:
            decompress_file(downloaded, listing_path, name=shown)
        finally:
            if downloaded.parent == work_dir:
                downloaded.unlink(missing_ok=True)
    if listing_path.stat().st_size == 0:
        raise ExtractionError(f"NIXPKGS_JSON={shown}: the file is empty")
    seconds = time.perf_counter() - started
    log(f"read {shown}: {listing_path.stat().st_size:,} bytes in {seconds:.1f} s")
    return Listing(path=listing_path, source=shown, source_kind="dump", seconds=seconds)


def _http_request(source: str) -> urllib.request.Request:
    """A GET for ``source``; credentials in the URL travel as a Basic authorization header."""
    parsed = urllib.parse.urlsplit(source)
    headers = {"User-Agent": "fdnix-indexer"}
    if parsed.username is not None:
        user = urllib.parse.unquote(parsed.username)
        password = urllib.parse.unquote(parsed.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
        host = parsed.netloc.rpartition("@")[2]
        source = urllib.parse.urlunsplit(parsed._replace(netloc=host))
    return urllib.request.Request(source, headers=headers)


def compression_of(path: Path, name: str) -> str | None:
    """``"zstd"``, ``"gzip"`` or ``"brotli"`` (by magic bytes, or the name's suffix), else None."""
    with path.open("rb") as handle:
        head = handle.read(4)
    suffix = name.split("?", 1)[0].lower()
    if head.startswith(ZSTD_MAGIC) or suffix.endswith(".zst"):
        return "zstd"
    if head.startswith(GZIP_MAGIC) or suffix.endswith(".gz"):
        return "gzip"
    # Brotli has no magic bytes.
    if suffix.endswith(".br"):
        return "brotli"
    return None


def decompress_file(source: Path, target: Path, *, name: str) -> None:
    """Writes ``source`` to ``target``, undoing zstd, gzip or brotli (by magic or suffix)."""
    compression = compression_of(source, name)
    try:
        if compression == "zstd":
            import zstandard

            with source.open("rb") as raw, target.open("wb") as out:
                zstandard.ZstdDecompressor().copy_stream(raw, out)
        elif compression == "gzip":
            with gzip.open(source, "rb") as raw, target.open("wb") as out:
                shutil.copyfileobj(raw, out, COPY_CHUNK_BYTES)
        elif compression == "brotli":
            import brotli

            decompressor = brotli.Decompressor()
            with source.open("rb") as raw, target.open("wb") as out:
                while chunk := raw.read(COPY_CHUNK_BYTES):
                    out.write(decompressor.process(chunk))
                if not decompressor.is_finished():
                    raise ValueError("brotli stream ends early (truncated file)")
        else:
            shutil.copyfile(source, target)
    except Exception as error:
        raise ExtractionError(
            f"NIXPKGS_JSON={name}: could not be decompressed: {type(error).__name__}: {error}"
        ) from None
