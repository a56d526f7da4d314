"""When the whole pipeline runs by itself: a daily ``full_job``, off until an operator turns it on.

The schedule ships stopped so that deploying fdnix never starts a multi-hour run (and Bedrock
spending) by surprise. Turn it on in the UI (Automation -> full_job_schedule -> toggle) or
with ``dagster schedule start full_job_schedule -w workspace.yaml``.

With channels (FDNIX_CHANNELS) each tick asks for one run of ``full_job`` per channel
partition; the instance's concurrency limit on ``dagster/partition`` keeps two runs of the
same channel apart while different channels run side by side.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    schedule,
)
from dagster._utils.schedules import is_valid_cron_string

from fdnix_assets.jobs import full_job
from fdnix_assets.settings import SettingsError

SCHEDULE_CRON_VARIABLE = "FDNIX_SCHEDULE_CRON"
DEFAULT_SCHEDULE_CRON = "0 3 * * *"
SCHEDULE_TIMEZONE = "UTC"


def schedule_cron(environ: Mapping[str, str] | None = None) -> str:
    """The cron expression of the daily run, from FDNIX_SCHEDULE_CRON (default 03:00 UTC)."""
    env = os.environ if environ is None else environ
    cron = (env.get(SCHEDULE_CRON_VARIABLE) or "").strip() or DEFAULT_SCHEDULE_CRON
    if not is_valid_cron_string(cron):
        raise SettingsError(
            f"{SCHEDULE_CRON_VARIABLE}={cron!r} is not a cron expression "
            "(five fields: minute hour day-of-month month day-of-week, e.g. '0 3 * * *')"
        )
    return cron


def channel_run_requests(channels: Sequence[str]) -> list[RunRequest]:
    """One ``full_job`` run per channel partition; the run key keeps a tick from asking twice."""
    return [
        RunRequest(run_key=channel, partition_key=channel, tags={"fdnix/channel": channel})
        for channel in channels
    ]


def build_full_job_schedule(cron: str, channels: Sequence[str] = ()) -> ScheduleDefinition:
    """A schedule of ``full_job`` on ``cron`` in UTC that starts stopped.

    With ``channels`` every tick runs ``full_job`` once per channel.
    """
    description = (
        f"Rebuilds every dataset (full_job) at '{cron}' {SCHEDULE_TIMEZONE}"
        + (f", once per channel ({', '.join(channels)})" if channels else "")
        + f"; set {SCHEDULE_CRON_VARIABLE} to change when. Ships stopped: turn it on here or "
        "with `dagster schedule start full_job_schedule`."
    )
    definition: dict[str, Any] = {
        "name": "full_job_schedule",
        "job": full_job,
        "cron_schedule": cron,
        "execution_timezone": SCHEDULE_TIMEZONE,
        "default_status": DefaultScheduleStatus.STOPPED,
        "description": description,
    }
    if not channels:
        return ScheduleDefinition(**definition)
    channel_list = tuple(channels)

    @schedule(**definition)
    def full_job_schedule(context: ScheduleEvaluationContext) -> list[RunRequest]:
        return channel_run_requests(channel_list)

    return full_job_schedule
