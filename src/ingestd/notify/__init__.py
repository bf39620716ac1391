"""Notifications: webhooks and e-mail for an owner's events.

:class:`Subscriptions` manages an owner's endpoints; :class:`Notifier` fans events out to
deliveries and sends them (the scheduler calls :meth:`Notifier.run_once`). Webhook
receivers check requests with :func:`verify_signature`.
"""

from __future__ import annotations

from ingestd.notify.email import NOT_CONFIGURED, EmailSender, Link, Notice, SmtpConfig, compose
from ingestd.notify.service import (
    EVENT_TYPES,
    MAX_SUBSCRIPTIONS,
    Notifier,
    Subscriptions,
    delivery_view,
    subscription_view,
)
from ingestd.notify.webhooks import (
    BODY_LIMIT,
    DeliveryFailed,
    Response,
    WebhookSender,
    sign,
    verify_signature,
)

__all__ = [
    "BODY_LIMIT",
    "EVENT_TYPES",
    "MAX_SUBSCRIPTIONS",
    "NOT_CONFIGURED",
    "DeliveryFailed",
    "EmailSender",
    "Link",
    "Notice",
    "Notifier",
    "Response",
    "SmtpConfig",
    "Subscriptions",
    "WebhookSender",
    "compose",
    "delivery_view",
    "sign",
    "subscription_view",
    "verify_signature",
]
