"""The container's entry point: ``python -m fdnix_assets.entrypoint``.

Reads ``PROCESSING_MODE`` (SPEC "Phases and jobs"), runs the matching Dagster job in this
process and exits with a code a scheduler can act on:

- 0: the run succeeded;
- 1: the run failed (the summary names the failed step and its error);
- 2: the configuration is unusable (the message names the variable) or the job is unknown;
- 130: the run was interrupted (SIGINT, or SIGTERM from ``docker stop``).

With channels (``FDNIX_CHANNELS``) the job runs once per channel partition, one channel
after the other, each with its own summary line; a failed channel does not stop the next
one, and the exit code is 1 when any failed. ``FDNIX_CHANNEL`` runs just that one channel.

With ``DAGSTER_HOME`` set the run is recorded in that instance (the image sets one), so the
Dagster UI pointed at the same home shows its history; without it the run uses a temporary
instance that disappears on exit.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fdnix_assets.settings import PROCESSING_MODES, Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from dagster import DagsterInstance, ExecuteInProcessResult, JobDefinition

EXIT_SUCCESS = 0
EXIT_RUN_FAILED = 1
EXIT_CONFIGURATION = 2
EXIT_INTERRUPTED = 130
MESSAGE_LIMIT = 600
PREFIX = "fdnix:"
# Dagster turns SIGINT (and our SIGTERM) during a step into this step failure.
INTERRUPTED_ERROR = "DagsterExecutionInterruptedError"


@dataclass(frozen=True)
class RunSummary:
    """What an operator needs from a finished run, in one line."""

    run_id: str
    job_name: str
    status: str
    seconds: float
    failed_step: str | None = None
    error: str | None = None
    interrupted: bool = False
    channel: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCESS"

    def line(self) -> str:
        target = f"{self.job_name} for {self.channel}" if self.channel else self.job_name
        text = f"{PREFIX} run {self.run_id} of {target} {self.status} in {self.seconds:.1f} s"
        if self.failed_step:
            text += f"; step {self.failed_step} failed"
        if self.error:
            text += f": {self.error}"
        return text


def one_line(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """Collapses a (possibly multi-line) error message so the summary stays one line."""
    collapsed = " ".join(message.split())
    return collapsed if len(collapsed) <= limit else collapsed[: limit - 1] + "…"


def summarize(
    result: ExecuteInProcessResult, job_name: str, seconds: float, channel: str | None = None
) -> RunSummary:
    """Reads the run's status and its first failed step (with the error) from its events."""
    failed_step: str | None = None
    error: str | None = None
    interrupted = False
    for event in result.all_events:
        if event.is_step_failure and failed_step is None:
            failed_step = event.step_key
            data = event.step_failure_data
            # A dagster Failure carries the user-facing description; anything else its error.
            user_failure = data.user_failure_data if data else None
            if user_failure is not None and user_failure.description:
                error = user_failure.description
            elif data is not None and data.error is not None:
                error = data.error.message
                interrupted = data.error.cls_name == INTERRUPTED_ERROR
        elif event.is_run_failure and error is None:
            error = event.message
    if interrupted:
        error = "interrupted (SIGINT or SIGTERM)"
    return RunSummary(
        run_id=result.run_id,
        job_name=job_name,
        status=result.dagster_run.status.value,
        seconds=seconds,
        failed_step=failed_step,
        error=one_line(error) if error else None,
        interrupted=interrupted,
        channel=channel,
    )


def open_instance() -> DagsterInstance:
    """The instance ``DAGSTER_HOME`` names, else a temporary one (SQLite in a temp dir)."""
    from dagster import DagsterInstance

    if os.environ.get("DAGSTER_HOME", "").strip():
        return DagsterInstance.get()
    return DagsterInstance.ephemeral()


class UnknownJobError(LookupError):
    """PROCESSING_MODE selects a job that these definitions do not contain."""


def resolve_job(settings: Settings) -> JobDefinition:
    """The job ``PROCESSING_MODE`` selects, from the code location's definitions."""
    # Imported only after the settings are known to be good: definitions.py builds its
    # resources from the environment at import time.
    from fdnix_assets.definitions import defs

    jobs = {job.name: job for job in defs.resolve_all_job_defs()}
    if settings.job_name not in jobs:
        known = ", ".join(sorted(name for name in jobs if not name.startswith("__")))
        raise UnknownJobError(
            f"PROCESSING_MODE={settings.processing_mode} selects {settings.job_name}, which "
            f"these definitions do not contain (jobs: {known})"
        )
    return jobs[settings.job_name]


def channels_to_run(settings: Settings) -> list[str | None]:
    """The channel partitions to run in turn: FDNIX_CHANNEL, else every channel, else none."""
    if settings.channel is not None:
        return [settings.channel]
    return list(settings.channels) or [None]


def run_job(job: JobDefinition, settings: Settings, channel: str | None = None) -> RunSummary:
    """Runs ``job`` (for one channel partition, with channels) in this process."""
    started = time.monotonic()
    tags = {"fdnix/processing-mode": settings.processing_mode, "fdnix/launched-by": "entrypoint"}
    if channel is not None:
        tags["fdnix/channel"] = channel
    with open_instance() as instance:
        result = job.execute_in_process(
            instance=instance, raise_on_error=False, tags=tags, partition_key=channel
        )
        return summarize(result, job.name, time.monotonic() - started, channel)


def _interrupt_on_sigterm() -> None:
    # As PID 1 in a container Python ignores SIGTERM by default; turning it into the same
    # interrupt as Ctrl-C lets Dagster mark the run as failed and nix-env be stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fdnix_assets.entrypoint",
        description=(
            "Run the fdnix job that PROCESSING_MODE selects ("
            + ", ".join(f"{mode} -> {job}" for mode, job in PROCESSING_MODES.items())
            + ")."
        ),
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="only validate the configuration and print the job that would run",
    )
    arguments = parser.parse_args(argv)

    try:
        settings = load_settings()
        job = resolve_job(settings)
    except (SettingsError, UnknownJobError) as error:
        print(f"{PREFIX} configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIGURATION

    channels = channels_to_run(settings)
    for_channels = (
        f" for channel{'s' if len(channels) > 1 else ''} {', '.join(map(str, channels))}"
        if channels != [None]
        else ""
    )
    if arguments.check:
        print(
            f"{PREFIX} configuration is valid; PROCESSING_MODE={settings.processing_mode} "
            f"runs {job.name}{for_channels}"
        )
        return EXIT_SUCCESS

    _interrupt_on_sigterm()
    print(
        f"{PREFIX} PROCESSING_MODE={settings.processing_mode}: running {job.name}{for_channels}",
        flush=True,
    )
    failed = []
    for channel in channels:
        name = f"{job.name} for {channel}" if channel else job.name
        try:
            summary = run_job(job, settings, channel)
        except KeyboardInterrupt:
            print(f"{PREFIX} {name} interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as error:
            # Failures inside steps are in the summary; this is the run failing to start.
            print(
                f"{PREFIX} {name} could not run: {type(error).__name__}: {one_line(str(error))}",
                file=sys.stderr,
            )
            failed.append(channel)
            continue
        print(summary.line(), file=sys.stdout if summary.succeeded else sys.stderr, flush=True)
        if summary.interrupted:
            return EXIT_INTERRUPTED
        if not summary.succeeded:
            failed.append(channel)
    if len(channels) > 1:
        print(
            f"{PREFIX} {len(channels) - len(failed)} of {len(channels)} channels succeeded"
            + (f"; failed: {', '.join(map(str, failed))}" if failed else ""),
            file=sys.stderr if failed else sys.stdout,
            flush=True,
        )
    return EXIT_RUN_FAILED if failed else EXIT_SUCCESS


if __name__ == "__main__":
    sys.exit(main())
