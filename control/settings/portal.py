"""The customer portal's sign-up and status settings (docs/portal.md), declared like
every other setting.

Contract: `PortalSettings` is a frozen, keyword-only dataclass that `Settings` inherits
(like VolumeSettings: the settings module has no room left under the 400-line rule).
PORTAL_CHECKOUT_MINUTES is both the Stripe Checkout Session's expiry and how long its
subdomain stays reserved (Stripe accepts 30 minutes to 24 hours);
PORTAL_CHECKOUTS_PER_HOUR bounds the Checkouts one address may open;
PORTAL_BOOT_SECONDS is the status page's estimate of a new server's start-up until
the fleet has measured its own; PORTAL_STATUS_HOURS is how long a status page's link
works after its sign-up.
It inherits MailSettings (control/settings/mail.py, the sign-in links' SMTP) and
BrandSettings (control/settings/brand.py, the operator's name, logo, colour and support
address), so that `Settings` names one base class for the whole portal.
CHECKOUT_HEADROOM_MINUTES is how long an open Checkout counts as demand about to arrive
in the autoscaler's warm headroom (control/capacity, issue 15 point 6);
CHECKOUT_STAND_IN is whether the portal serves its local stand-in for Stripe's hosted
Checkout page (control/portal/stand_in.py), which never runs with a Stripe key or in
live mode. PRESTART, PRESTART_MAX and PRESTART_TTL_MINUTES: whether a sign-up starts
its buyer's gateway while they pay, on at most that many at once, withdrawn after
that long unpaid (control/users/prestart.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from control.settings.brand import BrandSettings
from control.settings.mail import MailSettings
from shared.config import choice, flag, setting, whole


@dataclass(frozen=True, kw_only=True)
class PortalSettings(MailSettings, BrandSettings):
    portal_checkout_minutes: int = setting(
        "PORTAL_CHECKOUT_MINUTES",
        "30",
        whole(30, 1440),
        "Minutes a sign-up's Stripe Checkout stays open (Stripe: 30 to 1440); its subdomain is reserved for that buyer meanwhile (docs/portal.md).",
    )
    portal_checkouts_per_hour: int = setting(
        "PORTAL_CHECKOUTS_PER_HOUR",
        "10",
        whole(1, 1000),
        "Checkouts one client address may open per hour on the sign-up page (a burst of this many, then one every 60/N minutes); more get 429.",
    )
    portal_boot_seconds: int = setting(
        "PORTAL_BOOT_SECONDS",
        "180",
        whole(10, 3600),
        "The status page's estimate of how long a new server takes to start, used until the fleet has measured its own (the median of its last servers' creation to registration).",
    )
    portal_status_hours: int = setting(
        "PORTAL_STATUS_HOURS",
        "72",
        whole(1, 720),
        "Hours a sign-up's status page link (Stripe's success URL) shows progress and opens the agent; afterwards the customer signs in by email.",
    )
    checkout_headroom_minutes: int = setting(
        "CHECKOUT_HEADROOM_MINUTES",
        "30",
        whole(0, 1440),
        "Minutes an open sign-up Checkout counts, for its plan, in the autoscaler's warm headroom, so that a server is usually ready before the payment arrives (docs/capacity.md); 0: open checkouts are not counted.",
    )
    checkout_stand_in: str = setting(
        "CHECKOUT_STAND_IN",
        "auto",
        choice("auto", "false"),
        "auto: with no STRIPE_SECRET_KEY and Stripe in test mode (the `make run` demo), sign-up's Checkout goes to a local stand-in for Stripe's hosted page whose Pay button sends the signed webhooks Stripe would (docs/portal.md); never with a key or in live mode. false: never.",
    )
    prestart: bool = setting(
        "PRESTART",
        "true",
        flag,
        "Start a buyer's agent while they are on the checkout page, on a server that has room now (never a new one), so that it is warm when they pay; withdrawn, its state removed, if they do not pay (docs/portal.md).",
    )
    prestart_max: int = setting(
        "PRESTART_MAX",
        "3",
        whole(0, 1000),
        "At most this many agents started for buyers who have not paid yet, at once (the cost of checkouts opened and never paid: docs/capacity.md); 0: none.",
    )
    prestart_ttl_minutes: int = setting(
        "PRESTART_TTL_MINUTES",
        "15",
        whole(1, 1440),
        "Minutes an agent started for an unpaid checkout may run before it is withdrawn, even while its checkout is still open; a later payment starts it anew.",
    )
