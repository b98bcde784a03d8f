"""Optimisers of nested learning: multi-frequency updates (CMS) and deep momentum (DMGD)."""

from .multifreq import MultiFrequency as MultiFrequency
