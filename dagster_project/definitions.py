"""The Dagster code location of byoc-platform (``dagster dev -m dagster_project.definitions``)."""

from dagster import Definitions

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
)
