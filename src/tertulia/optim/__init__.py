"""Optimisers of nested learning: multi-frequency updates (CMS) and deep momentum (DMGD)."""

from .dmgd import DMGD as DMGD
from .dmgd import newton_schulz as newton_schulz
from .multifreq import MultiFrequency as MultiFrequency
