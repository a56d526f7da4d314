"""When the whole pipeline runs by itself: a daily ``full_job``, off until an operator turns it on.

The schedule ships stopped so that deploying fdnix never starts a multi-hour run (and Bedrock
spending) by surprise. Turn it on in the UI (Automation -> full_job_schedule -> toggle) or
with ``dagster schedule start full_job_schedule -w workspace.yaml``.
"""

import os
from collections.abc import Mapping

from dagster import DefaultScheduleStatus, ScheduleDefinition
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


def build_full_job_schedule(cron: str) -> ScheduleDefinition:
    """A schedule of ``full_job`` on ``cron`` in UTC that starts stopped."""
    return ScheduleDefinition(
        name="full_job_schedule",
        job=full_job,
        cron_schedule=cron,
        execution_timezone=SCHEDULE_TIMEZONE,
        default_status=DefaultScheduleStatus.STOPPED,
        description=(
            f"Rebuilds every dataset (full_job) at '{cron}' {SCHEDULE_TIMEZONE}; set "
            f"{SCHEDULE_CRON_VARIABLE} to change when. Ships stopped: turn it on here or with "
            "`dagster schedule start full_job_schedule`."
        ),
    )


full_job_schedule = build_full_job_schedule(schedule_cron())
