"""The Dagster code location of byoc-platform: resources per environment, jobs, schedules,
sensors, and the ``Definitions`` (``dagster dev -m dagster_project.definitions``)."""
