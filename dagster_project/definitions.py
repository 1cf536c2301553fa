"""The Dagster code location of byoc-platform (``dagster dev -m dagster_project.definitions``)."""

from dagster import Definitions, in_process_executor

from assets.resources import load_settings
from dagster_project.assembly import ASSETS, CHECKS
from dagster_project.jobs import JOBS
from dagster_project.resources import resources_for
from dagster_project.schedules import schedules_for
from dagster_project.sensors import SENSORS

settings = load_settings()

defs = Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    jobs=JOBS,
    schedules=schedules_for(settings),
    sensors=SENSORS,
    resources=resources_for(settings),
    # Steps of a run share its process: one import of the code (and of great_expectations)
    # per run instead of one per step; the steps of these jobs are sequential anyway.
    executor=in_process_executor,
)
