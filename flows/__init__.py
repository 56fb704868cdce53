"""Prefect flows: thin wiring around the ``rollout`` library (see prefect.yaml).

Each task is a few lines around one ``rollout.*`` call; the logic lives in ``rollout/``,
which never imports prefect. ``metrics`` and ``cohorts`` re-run one day by hand;
``daily`` runs both, in that order, on the schedule.
"""
