"""The portal's own state on the app, under `PORTAL` (set by install.py).

Contract: `Portal` holds what the portal's routes share: the Checkout provider
(control/portal/stripe_checkout.py; a local stand-in may replace it), the per-address
limit on opening Checkouts, whether a proxy fronts us (which address a caller is
counted under: control/api/edge.py) and the wall clock (tests inject one).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from control.api.ratelimit import FailureLimiter
from control.portal.stripe_checkout import CheckoutProvider


@dataclass
class Portal:
    checkout: CheckoutProvider
    checkout_limiter: FailureLimiter
    behind_proxy: bool
    clock: Callable[[], float] = field(default=time.time)


PORTAL: web.AppKey[Portal] = web.AppKey("portal")
