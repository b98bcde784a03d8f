"""Optimisers of nested learning: deep momentum (DMGD) and multi-frequency updates (CMS).

    DMGD            φ ← α φ − η ∇_φ L²(m_φ; u),  W ← W + m_φ(u)   (linear memory: SGD momentum)
    MultiFrequency  a group of period C steps on calls C, 2C, … with its chunk's mean gradient
    newton_schulz   X ← (15 X − 10 XXᵀX + 3 (XXᵀ)²X)/8 after X ← M/‖M‖_F  (≈ polar factor of M)

Legend: W a parameter, u its gradient, m_φ the momentum memory with parameters φ, C a period.
"""

from __future__ import annotations

from .dmgd import DMGD, newton_schulz
from .multifreq import MultiFrequency

__all__ = ["DMGD", "MultiFrequency", "newton_schulz"]
