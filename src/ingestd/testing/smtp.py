"""A real SMTP server on loopback (aiosmtpd, in its own thread) that keeps what it receives."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from typing import Any

from aiosmtpd.controller import Controller

from ingestd.testing.server import free_port


@dataclass
class Received:
    """One accepted message: the envelope and the parsed message."""

    sender: str
    recipients: list[str]
    message: EmailMessage

    def text(self) -> str:
        """The plain-text part."""
        part = self.message.get_body(preferencelist=("plain",))
        return part.get_content() if part is not None else ""

    def html(self) -> str | None:
        part = self.message.get_body(preferencelist=("html",))
        return part.get_content() if part is not None else None


@dataclass
class SmtpSink:
    """What the test sees: where to connect, and the messages so far."""

    host: str
    port: int
    messages: list[Received] = field(default_factory=list)
    #: answer this many DATA commands with a temporary failure (451) first
    refuse: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _arrived: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._arrived = threading.Condition(self._lock)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until ``count`` messages arrived; raises TimeoutError."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.messages) >= count, timeout):
                raise TimeoutError(f"{len(self.messages)} of {count} messages in {timeout} s")
            return list(self.messages)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._arrived:
            if self.refuse > 0:
                self.refuse -= 1
                return "451 4.3.0 try again later"
            parsed = message_from_bytes(
                envelope.original_content or envelope.content, policy=default
            )
            assert isinstance(parsed, EmailMessage)
            self.messages.append(
                Received(str(envelope.mail_from), [str(r) for r in envelope.rcpt_tos], parsed)
            )
            self._arrived.notify_all()
        return "250 OK"


@contextmanager
def running_smtp(host: str = "127.0.0.1") -> Iterator[SmtpSink]:
    """An SMTP server on ``host`` and a free port until the block exits."""
    sink = SmtpSink(host, free_port())
    controller = Controller(sink, hostname=host, port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()
