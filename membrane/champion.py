"""The effective champion: the model that extracts captures now.

It is the last promotion recorded in the journal's champion history
(journal/models.py), else the configured [model]. Kept apart from the
promotion policy (promote.py, numpy) so that the pipeline, the daemon, the
doctor and the CLI read the champion without loading the policy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from membrane.schema import ModelRef

if TYPE_CHECKING:
    from membrane.config import Settings
    from membrane.journal import Journal

__all__ = ["effective_champion"]


def effective_champion(settings: Settings, journal: Journal) -> ModelRef:
    """The champion: the last promotion, else the configured [model]; looked up for every capture."""
    return journal.models.last_promotion() or ModelRef(settings.model.backend, settings.model.name)
