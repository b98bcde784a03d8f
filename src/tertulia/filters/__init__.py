"""Classical linear state-space models: systems, Kalman filtering, learning.

    lti          LinearSSM (A, B, C, D; continuous or discrete), discretisation
                 (ZOH with Van Loan, bilinear, Euler), modes, LQR
    kalman       LinearGaussian, batched differentiable Kalman filter (exact or
                 approximate diffuse start, missing values) and RTS smoother
    learn        maximum likelihood (L-BFGS through the filter), the local
                 level model, EM with a closed-form M-step
    subspace     N4SID subspace identification
    diagnostics  Ljung–Box, heteroscedasticity and Jarque–Bera on residuals

Computations are float64 by default: filtering is a long product of small
matrices and float32 loses the covariances' symmetry and definiteness.
"""

from .diagnostics import Diagnostics as Diagnostics
from .diagnostics import residual_diagnostics as residual_diagnostics
from .kalman import FilterResult as FilterResult
from .kalman import LinearGaussian as LinearGaussian
from .kalman import SmootherResult as SmootherResult
from .kalman import kalman_filter as kalman_filter
from .kalman import rts_smoother as rts_smoother
from .learn import EMResult as EMResult
from .learn import LocalLevelFit as LocalLevelFit
from .learn import MLEResult as MLEResult
from .learn import fit_em as fit_em
from .learn import fit_local_level as fit_local_level
from .learn import fit_mle as fit_mle
from .lti import LinearSSM as LinearSSM
from .lti import LQRResult as LQRResult
from .lti import Mode as Mode
from .lti import lqr as lqr
from .subspace import N4SIDResult as N4SIDResult
from .subspace import n4sid as n4sid
