"""``fdnix``: the command line.

    fdnix search QUERY [--dataset PATH_OR_S3_URI] [--limit N] [--offset N] [--json]
                       [--license ID ...] [--platform SYSTEM]
                       [--broken include|exclude|only] [--insecure ...] [--unfree ...]
                       [--unsupported ...]

``QUERY`` ``-`` reads one query per line from standard input and prints one JSON array per
line, in order, opening the dataset and the query model once. The dataset defaults to
OUTPUT_MINIFIED_PATH (``out/fdnix.lancedb``); an ``s3://bucket/prefix`` URI follows the
prefix's ``latest`` pointer to the newest complete snapshot.

Exit codes: 0 answered; 1 the dataset could not be opened or searched; 2 bad arguments or
an invalid query.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
FLAG_CHOICES = ("include", "exclude", "only")


def default_dataset() -> str:
    """OUTPUT_MINIFIED_PATH as the indexer's settings read it (default out/fdnix.lancedb).

    With FDNIX_CHANNELS, that channel's copy: FDNIX_CHANNEL's, else the first channel's.
    """
    from fdnix_assets.channels import channel_path
    from fdnix_assets.settings import load_settings

    settings = load_settings()
    channel = settings.channel or (settings.channels[0] if settings.channels else None)
    return str(channel_path(settings.output_minified_path, channel))


def resolve_dataset(location: str) -> tuple[str, dict[str, str]]:
    """The URI LanceDB opens and its storage options, following snapshot pointers.

    A local output path is a symlink to its latest snapshot (or a plain directory); an
    ``s3://bucket/prefix`` names a dataset whose ``latest`` pointer names the snapshot.
    """
    if location.startswith("s3://"):
        return _resolve_s3(location)
    if "://" in location:
        raise ValueError(f"--dataset {location}: only local paths and s3:// URIs are supported")
    from fdnix_assets.storage import LocalDatasetStore

    path = Path(location)
    snapshot = LocalDatasetStore(path).latest()
    if snapshot is None:
        raise FileNotFoundError(
            f"no minified dataset at {path.absolute()}: build it with "
            "`dagster job execute -m fdnix_assets -j minified_job` or pass --dataset"
        )
    return snapshot.uri, dict(snapshot.storage_options)


def _resolve_s3(uri: str) -> tuple[str, dict[str, str]]:
    import boto3

    from fdnix_assets.storage_s3 import S3DatasetStore

    bucket, _, prefix = uri[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    if not bucket or not prefix:
        raise ValueError(f"--dataset {uri}: expected s3://<bucket>/<key prefix>")
    client = boto3.client("s3")
    store = S3DatasetStore(client=client, bucket=bucket, prefix=prefix, dataset=Path(prefix).name)
    snapshot = store.latest()
    if snapshot is None:
        raise FileNotFoundError(f"no dataset snapshot under {uri} (no latest pointer)")
    return snapshot.uri, dict(snapshot.storage_options)


def _filters(args: argparse.Namespace) -> Any:
    from fdnix_assets.search import SearchFilters, parse_flag_filter

    return SearchFilters(
        licenses=tuple(args.license or ()),
        platform=args.platform,
        **{
            flag: parse_flag_filter(flag, getattr(args, flag))
            for flag in ("broken", "insecure", "unfree", "unsupported")
        },
    )


def _print_human(response: Any, out: TextIO) -> None:
    if not response.results:
        out.write(f"no packages match {response.query!r}\n")
    for result in response.results:
        flags = [
            name
            for name in ("broken", "insecure", "unfree", "unsupported")
            if getattr(result, name)
        ]
        marker = f" [{', '.join(flags)}]" if flags else ""
        version = f" {result.version}" if result.version else ""
        out.write(f"{result.attr_path}{version}{marker}\n")
        if result.description:
            out.write(f"    {result.description}\n")


def run_search(args: argparse.Namespace, stdin: TextIO, out: TextIO, err: TextIO) -> int:
    from fdnix_assets.search import InvalidQuery, PackageSearch, SearchError

    location = args.dataset
    try:
        location = location or default_dataset()
        uri, storage_options = resolve_dataset(location)
        # Reading queries from standard input answers many: worth warming up for.
        engine = PackageSearch.open(uri, storage_options, warm_up=args.query == "-")
    except (SearchError, FileNotFoundError, ValueError) as error:
        err.write(f"fdnix search: {error}\n")
        return EXIT_FAILED
    except Exception as error:  # S3 and LanceDB raise many types; the message says enough
        err.write(f"fdnix search: cannot open {location}: {type(error).__name__}: {error}\n")
        return EXIT_FAILED
    try:
        filters = _filters(args)
        if engine.embedder is None and engine.embedder_note:
            err.write(f"fdnix search: {engine.embedder_note}\n")
        if args.query == "-":
            return _batch(engine, args, filters, stdin, out, err)
        response = engine.search(args.query, limit=args.limit, offset=args.offset, filters=filters)
    except InvalidQuery as error:
        err.write(f"fdnix search: {error}\n")
        return EXIT_USAGE
    finally:
        engine.close()
        for problem in engine.warm_up_errors:
            err.write(f"fdnix search: warming up: {problem}; searched without it\n")
    if args.json:
        out.write(json.dumps([r.as_dict() for r in response.results], ensure_ascii=False) + "\n")
    else:
        _print_human(response, out)
    return EXIT_OK


def _batch(
    engine: Any, args: argparse.Namespace, filters: Any, stdin: TextIO, out: TextIO, err: TextIO
) -> int:
    from fdnix_assets.search import InvalidQuery

    status = EXIT_OK
    for number, line in enumerate(stdin, start=1):
        query = line.rstrip("\n")
        results: list[dict[str, Any]] = []
        if query.strip():
            try:
                response = engine.search(
                    query, limit=args.limit, offset=args.offset, filters=filters
                )
                results = [r.as_dict() for r in response.results]
            except InvalidQuery as error:
                err.write(f"fdnix search: line {number}: {error}\n")
                status = EXIT_USAGE
        out.write(json.dumps(results, ensure_ascii=False) + "\n")
        out.flush()
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fdnix", description="fdnix: search nixpkgs packages.")
    commands = parser.add_subparsers(dest="command", required=True)
    search = commands.add_parser(
        "search",
        help="search the minified dataset",
        description="Search packages by name, words or meaning ('-' reads queries from stdin).",
    )
    search.add_argument("query", help="what to look for; '-' reads one query per line from stdin")
    search.add_argument(
        "--dataset",
        help="minified dataset: a directory or s3://bucket/prefix (default: OUTPUT_MINIFIED_PATH)",
    )
    search.add_argument("--limit", type=_bounded(1, 100), default=10, help="results (1-100)")
    search.add_argument("--offset", type=_bounded(0, 1000), default=0, help="results to skip")
    search.add_argument("--json", action="store_true", help="print a JSON array, best first")
    search.add_argument(
        "--license", action="append", help="only these licenses (SPDX id or nixpkgs short name)"
    )
    search.add_argument("--platform", help="only packages available on this system")
    for flag in ("broken", "insecure", "unfree", "unsupported"):
        search.add_argument(
            f"--{flag}", choices=FLAG_CHOICES, default="include", help=f"{flag} packages"
        )
    return parser


def _bounded(low: int, high: int) -> Any:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    if args.command == "search":
        return run_search(args, sys.stdin, sys.stdout, sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
