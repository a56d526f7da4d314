"""The daily schedule of the whole pipeline."""

import pytest
from dagster import DefaultScheduleStatus

from fdnix_assets.definitions import defs
from fdnix_assets.schedules import build_full_job_schedule, schedule_cron
from fdnix_assets.settings import SettingsError


def test_definitions_ship_a_stopped_daily_full_job_schedule_in_utc() -> None:
    schedule = defs.resolve_schedule_def("full_job_schedule")

    assert schedule.job_name == "full_job"
    assert schedule.cron_schedule == "0 3 * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == DefaultScheduleStatus.STOPPED


def test_cron_comes_from_fdnix_schedule_cron() -> None:
    cron = schedule_cron({"FDNIX_SCHEDULE_CRON": "30 1 * * 1"})
    schedule = build_full_job_schedule(cron)

    assert schedule.cron_schedule == "30 1 * * 1"
    assert schedule_cron({"FDNIX_SCHEDULE_CRON": "  "}) == "0 3 * * *"


@pytest.mark.parametrize("cron", ["daily", "61 3 * * *", "0 3 * *"])
def test_bad_cron_names_the_variable(cron: str) -> None:
    with pytest.raises(SettingsError, match=r"FDNIX_SCHEDULE_CRON=.* is not a cron expression"):
        schedule_cron({"FDNIX_SCHEDULE_CRON": cron})
