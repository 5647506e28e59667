"""Numba-accelerated matching of optical alert batches against all live localizations.

Public face: :class:`Matcher` (live set, ``match``, ``observe``, ``background_rate``),
:class:`MatchArrays` (columnar results), :func:`p_chance` and :class:`BackgroundRate`,
:func:`conditional_distance_moments`. The numba kernels in :mod:`mmcross.matchers.kernels` are
private.
"""

from mmcross.matchers.chance import BackgroundRate, p_chance
from mmcross.matchers.distance import conditional_distance_moments
from mmcross.matchers.matcher import MatchArrays, Matcher, alert_pixels

__all__ = ["BackgroundRate", "MatchArrays", "Matcher", "alert_pixels",
           "conditional_distance_moments", "p_chance"]
