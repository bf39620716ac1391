"""E-mail notifications: a message per event, sent over SMTP (stdlib, in a thread)."""

from __future__ import annotations

import asyncio
import html
import smtplib
import ssl
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

from ingestd.notify.webhooks import DeliveryFailed, Response

NOT_CONFIGURED = "e-mail is not configured (set INGESTD_SMTP_HOST)"


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int = 25
    sender: str = "ingestd@localhost"
    user: str | None = None
    password: str | None = None
    starttls: bool = False
    timeout_s: float = 30.0


@dataclass(frozen=True)
class Link:
    """A signed download link, what it points at, and when it stops working."""

    url: str
    label: str
    expires_at: datetime


@dataclass(frozen=True)
class Notice:
    """What an e-mail says about one event."""

    event_type: str
    asset_id: str | None
    title: str
    data: dict[str, Any]
    link: Link | None = None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


def compose(notice: Notice, *, to: str, sender: str) -> EmailMessage:
    """A plain-text message with an HTML alternative."""
    title = _one_line(notice.title)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Date"] = format_datetime(datetime.now().astimezone())
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    if notice.event_type == "asset.ready":
        msg["Subject"] = f"Ready: {title}"
        lead = f'"{title}" is ready.'
    else:
        msg["Subject"] = f"{title}: {notice.event_type}"
        lead = f'"{title}": {notice.event_type}.'
    lines = [lead, ""]
    parts = [f"<p>{html.escape(lead)}</p>"]
    if notice.link is not None:
        until = notice.link.expires_at.strftime("%Y-%m-%d %H:%M UTC")
        lines += [f"{notice.link.label} (the link works until {until}):", notice.link.url, ""]
        parts.append(
            f'<p><a href="{html.escape(notice.link.url, quote=True)}">'
            f"{html.escape(notice.link.label)}</a> (the link works until {until})</p>"
        )
    details = {k: v for k, v in notice.data.items() if v not in (None, "", [], {})}
    for key, value in details.items():
        lines.append(f"{key}: {value}")
    if details:
        parts.append(
            "<ul>"
            + "".join(
                f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in details.items()
            )
            + "</ul>"
        )
    if notice.asset_id:
        lines.append(f"asset: {notice.asset_id}")
        parts.append(f"<p>asset: {html.escape(notice.asset_id)}</p>")
    msg.set_content("\n".join(lines) + "\n")
    msg.add_alternative("<html><body>" + "".join(parts) + "</body></html>", subtype="html")
    return msg


class EmailSender:
    """Sends messages over SMTP; without a configuration every send fails, permanently."""

    def __init__(self, config: SmtpConfig | None) -> None:
        self.config = config

    @property
    def sender(self) -> str:
        return self.config.sender if self.config else "ingestd@localhost"

    async def send(self, message: EmailMessage) -> Response:
        """Raises :class:`DeliveryFailed`: permanent when not configured or the server
        refused the recipient for good (5xx), else worth retrying."""
        if self.config is None:
            raise DeliveryFailed(NOT_CONFIGURED, permanent=True)
        return await asyncio.to_thread(self._send, self.config, message)

    @staticmethod
    def _send(config: SmtpConfig, message: EmailMessage) -> Response:
        try:
            with smtplib.SMTP(config.host, config.port, timeout=config.timeout_s) as smtp:
                if config.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if config.user:
                    smtp.login(config.user, config.password or "")
                refused = smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()))
            raise DeliveryFailed(
                f"SMTP {code}: recipient refused: {reply.decode(errors='replace')}",
                permanent=500 <= code < 600,
                status=code,
            ) from exc
        except smtplib.SMTPResponseException as exc:
            error = exc.smtp_error
            text = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
            raise DeliveryFailed(f"SMTP {exc.smtp_code}: {text}", status=exc.smtp_code) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryFailed(f"SMTP to {config.host}:{config.port} failed: {exc!r}") from exc
        if refused:
            raise DeliveryFailed(f"SMTP: recipients refused: {refused}")
        return Response(250, "accepted")
