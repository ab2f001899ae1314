"""Who may replay or purge from the page: the token, and forms signed for one action on given ids.

Actions are off unless the page is started with a token. An action then needs a POST that
carries both:

* the **token** the page was started with, typed into the confirmation form (no cookie, no
  session: nothing in the browser acts on its own);
* a **form signature** (CSRF token): ``<issued at, s>.<HMAC-SHA256>`` of the action, its ids
  and the issue time under a secret drawn when the process starts. Only the confirmation page
  the server rendered carries one, it is valid for :data:`FORM_MAX_AGE` seconds and only for
  that action on those ids, and a restart invalidates every form issued before it.

Both are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Sequence

#: Seconds a confirmation form stays valid.
FORM_MAX_AGE = 3600
#: Seconds a form's issue time may lie in the future (clock steps).
FORM_SKEW = 60
#: Shortest token accepted (characters).
MIN_TOKEN = 12
#: The actions a form can be signed for.
ACTIONS = ("replay", "purge", "cancel", "retry-now", "pause", "resume")


class Guard:
    """Checks the token and the form signature of an action.

    Parameters:
      token(str | None): the token that allows actions; ``None`` keeps the page read-only.
      secret(bytes | None): the key forms are signed with; default: 32 random bytes drawn now.
      clock(callable): seconds since the epoch (``time.time``), for tests.

    Raises:
      ValueError: a token shorter than :data:`MIN_TOKEN` characters.
    """

    def __init__(
        self,
        token: str | None,
        *,
        secret: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if token is not None and len(token) < MIN_TOKEN:
            raise ValueError(f"the token must be at least {MIN_TOKEN} characters long")
        self._token = token.encode() if token is not None else None
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._clock = clock

    @property
    def enabled(self) -> bool:
        """True when actions are allowed (a token was given)."""
        return self._token is not None

    def _mac(self, action: str, ids: Sequence[str], issued: int) -> str:
        text = "\n".join([action, str(issued), *ids])
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()

    def sign(self, action: str, ids: Sequence[str]) -> str:
        """The form signature for ``action`` on ``ids`` (in that order), issued now."""
        issued = int(self._clock())
        return f"{issued}.{self._mac(action, ids, issued)}"

    def refuse(self, action: str, ids: Sequence[str], form_signature: str, token: str) -> str | None:
        """Why this request may not do ``action`` on ``ids``, in plain words; ``None`` if it may."""
        if self._token is None:
            return "actions are off on this page (it was started without --allow-actions and a token)"
        if action not in ACTIONS:
            return f"unknown action {action!r}"
        issued_text, _, mac = form_signature.partition(".")
        if not issued_text.isdigit() or not mac:
            return "the form is not one this page issued (signature missing or malformed): open it again"
        issued = int(issued_text)
        now = self._clock()
        if issued > now + FORM_SKEW or now - issued > FORM_MAX_AGE:
            return "the form has expired: open it again"
        if not hmac.compare_digest(mac.encode(), self._mac(action, ids, issued).encode()):
            return "the form is not one this page issued for these ids (signature mismatch): open it again"
        if not hmac.compare_digest(token.encode(), self._token):
            return "wrong token"
        return None


class Lockout:
    """Limits failed secret checks (a wrong token, a wrong password), per client and in all.

    A client with ``per_client`` failures within ``window_s`` seconds is locked out for
    ``lock_s`` seconds; once ``overall`` failures from all clients fall within ``window_s``,
    every check is refused until the oldest of them is ``window_s`` old. A locked-out check is
    refused before the secret is compared, so parallel guesses gain nothing: at most
    ``overall`` guesses are ever compared per ``window_s``, whatever the number of clients.

    Parameters:
      per_client(int): failures a client may have within ``window_s``. Defaults to 5.
      overall(int): failures all clients may have within ``window_s``. Defaults to 20.
      window_s(float): seconds failures are counted over. Defaults to 60.
      lock_s(float): seconds a client stays locked out. Defaults to 600.
      clock(callable): monotonic seconds, for tests.
    """

    #: Clients remembered at most (the oldest are forgotten first).
    MAX_CLIENTS = 10_000

    def __init__(
        self,
        *,
        per_client: int = 5,
        overall: int = 20,
        window_s: float = 60,
        lock_s: float = 600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_client, self.overall, self.window_s, self.lock_s = per_client, overall, window_s, lock_s
        self._clock = clock
        self._failures: dict[str, list[float]] = {}
        self._locked: dict[str, float] = {}
        self._all: list[float] = []
        self._lock = threading.Lock()

    def _prune(self, now: float) -> None:
        horizon = now - self.window_s
        self._all = [t for t in self._all if t > horizon]
        if len(self._failures) > self.MAX_CLIENTS:
            for client in list(self._failures)[: len(self._failures) // 2]:
                del self._failures[client]
        for client in [c for c, until in self._locked.items() if until <= now]:
            del self._locked[client]

    def refuse(self, client: str) -> str | None:
        """Why ``client`` may not try a secret now (with how long to wait); ``None`` if it may."""
        with self._lock:
            return self._refuse(client)

    def _refuse(self, client: str) -> str | None:
        now = self._clock()
        self._prune(now)
        until = self._locked.get(client)
        if until is not None:
            return f"too many wrong attempts from this client: try again in {int(until - now) + 1}s"
        if len(self._all) >= self.overall:
            wait = int(self._all[0] + self.window_s - now) + 1
            return f"too many wrong attempts from all clients in the last {int(self.window_s)}s: try again in {wait}s"
        return None

    def failed(self, client: str) -> None:
        """Count a failed check by ``client`` (locking it out past ``per_client``)."""
        with self._lock:
            self._failed(client)

    def _failed(self, client: str) -> None:
        now = self._clock()
        self._all.append(now)
        times = [t for t in self._failures.pop(client, []) if t > now - self.window_s]
        times.append(now)
        self._failures[client] = times
        if len(times) >= self.per_client:
            self._locked[client] = now + self.lock_s
