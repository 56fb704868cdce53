"""A shipped plan told as a story, as `make demo PLAN=...` tells it: the tiny sample
with its download history fitted to the plan's cohort days, then the plan played over
its own calendar (metrics and cohorts every 4 weeks, and on each cohort day)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rollout.core.config import Settings
    from rollout.core.plan import Plan
    from rollout.demo.story import StoryReport


def play_fitted_story(settings: Settings, plan: Plan) -> StoryReport:
    """Generate the tiny sample (seed 7) fitted to ``plan`` into ``settings``' registry
    and landing folder, and play the plan's story there: what the story reports."""
    from rollout.demo.sample import generate_sample
    from rollout.demo.story import Story, sample_window, story_window
    from rollout.registry import Registry
    from rollout.runtime import Runtime

    end, days = sample_window(plan)
    generate_sample(
        "tiny",
        7,
        registry=Registry(settings.registry_url),
        landing_dir=settings.landing_dir,
        end=end,
        days=days,
    )
    start, last = story_window(plan)
    story = Story(Runtime(settings, plan=plan), start, last, metrics_every=28, cohorts_every=28)
    with story.runtime:
        return story.run()
