"""Who may reach the review app and what a request may carry; `install_security(app, token)`.

Security, in the order a request meets it:
- authentication: with a token (required for any non-loopback bind) a request carries it as
  `Authorization: Bearer T`, or once as `?token=T` (answered with a redirect that sets a cookie
  holding a keyed digest of the token, so the token leaves the address bar and history);
- without a token, only loopback Host names are served (a DNS-rebinding page cannot reach it);
- tokens must be strong (`check_token`): printable ASCII without whitespace, at least 16
  characters and an estimated 64 bits or more;
- a request body over MAX_BODY_BYTES (64 KiB; the largest form, a 2,000-character note, is far
  smaller) is refused with 413 before it is read: by its Content-Length, and for a chunked body
  as soon as the bytes received pass the limit, so nothing is spooled to disk;
- every POST needs the per-session CSRF token of its cookie repeated in the form (compared with
  `hmac.compare_digest`) and an Origin/Referer, when the browser sends one, naming this host;
  what can be checked without the body (Origin, the cookie, the form's content type) is checked
  before the body is parsed, and forms with a file part are refused;
- responses carry a strict Content-Security-Policy (`default-src 'self'`, no inline script,
  `frame-ancestors 'none'`), `X-Content-Type-Options: nosniff` and no referrer;
- alert ids are validated and looked up; files are only scenes and plots resolved inside the
  workspace (there is no endpoint that takes a path).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import re
import secrets
from urllib.parse import urlencode, urlsplit

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

CSRF_COOKIE, AUTH_COOKIE = "bw_csrf", "bw_session"
LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}
CSP = ("default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer browsers send `Origin: null` on POST,
    # which the CSRF check must refuse.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
MAX_BODY_BYTES = 64 * 1024
MIN_TOKEN_LENGTH, MIN_TOKEN_BITS = 16, 64.0
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


# --- binding and tokens -----------------------------------------------------------------------


class BindError(ValueError):
    """A host/token combination the review server refuses to start with."""


def is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Loopback needs nothing; any other address (0.0.0.0 included) needs a token."""
    if not is_loopback(host) and not token:
        raise BindError(f"binding to {host} exposes the review app beyond this machine; give "
                        "--token T (or $BERTHWATCH_REVIEW_TOKEN) so every request must carry it")
    if token is not None:
        check_token(token)


TOKEN_ADVICE = "(make one with: python -c 'import secrets; print(secrets.token_urlsafe())')"
# Character classes and how many characters each holds (printable ASCII).
TOKEN_CLASSES = ((str.islower, 26), (str.isupper, 26), (str.isdigit, 10), (lambda c: True, 33))


def token_bits(token: str) -> float:
    """A deliberately low estimate of a token's strength in bits. A character that repeats or
    continues a run of its neighbour (`aaaa`, `abcd`, `4321`) counts nothing; of the others,
    the first use of a character is worth log2 of the alphabet of the classes present (26
    lower, 26 upper, 10 digits, 33 other printable), a character used again log2 of the
    number of characters used so far (a choice among those). A random token of the advised
    form scores far above the minimum; one character repeated, a short pattern repeated, a
    run or `password12345678` score below it."""
    kept = [c for i, c in enumerate(token)
            if i == 0 or abs(ord(c) - ord(token[i - 1])) > 1]
    pool = sum(size for test, size in TOKEN_CLASSES
               if any(test(c) for c in token if not _in_earlier_class(c, test)))
    bits, used = 0.0, set()
    for c in kept:
        bits += math.log2(len(used)) if c in used else math.log2(max(pool, 2))
        used.add(c)
    return bits


def _in_earlier_class(char: str, test) -> bool:
    """`other` counts only characters that are not letters or digits."""
    earlier = [t for t, _ in TOKEN_CLASSES[:3]]
    return test not in earlier and any(t(char) for t in earlier)


def check_token(token: str) -> None:
    """Refuse a weak token with one line saying why: whitespace or a non-printable character,
    fewer than MIN_TOKEN_LENGTH characters, or under MIN_TOKEN_BITS estimated (`token_bits`)."""
    if any(not (c.isascii() and c.isprintable()) or c.isspace() for c in token):
        raise BindError("the token holds whitespace or a non-printable character: use printable "
                        f"ASCII only {TOKEN_ADVICE}")
    if len(token) < MIN_TOKEN_LENGTH:
        raise BindError(f"the token is too short: use at least {MIN_TOKEN_LENGTH} characters "
                        f"{TOKEN_ADVICE}")
    bits = token_bits(token)
    if bits < MIN_TOKEN_BITS:
        raise BindError(f"the token is too guessable (about {bits:.0f} bits estimated, at least "
                        f"{MIN_TOKEN_BITS:.0f} needed: repeated characters, runs such as 1234 "
                        f"and a small alphabet count little) {TOKEN_ADVICE}")




# --- authentication and headers ---------------------------------------------------------------


def _session_digest(token: str) -> str:
    """What the auth cookie holds: a keyed digest, so the cookie is not the token itself."""
    return hmac.new(token.encode(), b"berthwatch-review-session", hashlib.sha256).hexdigest()


def _authorised(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer ") and hmac.compare_digest(
            header[7:].strip().encode(), token.encode()):
        return True
    cookie = request.cookies.get(AUTH_COOKIE, "")
    return hmac.compare_digest(cookie.encode(), _session_digest(token).encode())


def _token_login(request: Request, token: str) -> Response | None:
    """`?token=T` once: a redirect to the same address without it, setting the cookie."""
    given = request.query_params.get("token")
    if given is None or not hmac.compare_digest(given.encode(), token.encode()):
        return None
    rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
    # One leading `/`: a path of `//host` would send the browser to another site.
    target = "/" + request.url.path.lstrip("/") + (f"?{urlencode(rest)}" if rest else "")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(AUTH_COOKIE, _session_digest(token), httponly=True, samesite="strict")
    return response


def _gate(request: Request, token: str | None) -> Response | None:
    """A refusal, or None to let the request through."""
    if token is None:
        if not is_loopback(request.url.hostname or ""):
            return PlainTextResponse("unexpected Host header", status_code=400)
        return None
    if _authorised(request, token):
        return None
    login = _token_login(request, token)
    if login is not None:
        return login
    return PlainTextResponse("berthwatch review: a token is required (open the address with "
                             "?token=... or send Authorization: Bearer ...)", status_code=401,
                             headers={"WWW-Authenticate": "Bearer"})


def install_security(app: FastAPI, token: str | None) -> None:
    """The gate, the CSRF cookie and the security headers on every response; plain-text
    errors."""
    @app.middleware("http")
    async def security(request: Request, call_next):
        response = _gate(request, token)
        fresh = None
        if response is None:
            csrf = request.cookies.get(CSRF_COOKIE, "")
            if not re.fullmatch(r"[A-Za-z0-9_-]{32,64}", csrf):
                csrf = fresh = secrets.token_urlsafe(32)
            request.state.csrf = csrf
            response = await call_next(request)
        if fresh:
            response.set_cookie(CSRF_COOKIE, fresh, httponly=True, samesite="strict")
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(StarletteHTTPException)
    async def plain_error(request: Request, exc: StarletteHTTPException):
        # Plain text: an error message never becomes markup, whatever it quotes.
        return PlainTextResponse(f"{exc.status_code}: {exc.detail}", status_code=exc.status_code)


# --- request bodies ---------------------------------------------------------------------------


class BodyTooLarge(Exception):
    """Raised from `receive` once a body passes the limit; turned into 413 by BodyLimit."""


class BodyLimit:
    """Pure ASGI middleware: 413 for a body over `limit` bytes, decided from Content-Length
    before any byte is read, or while a chunked body streams in; what was received is dropped,
    never parsed or spooled."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _too_large(scope, receive, send, self.limit)
        seen, started = 0, False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception as exc:
            group = exc.subgroup(BodyTooLarge) if isinstance(exc, ExceptionGroup) else None
            if not isinstance(exc, BodyTooLarge) and group is None:
                raise
            if not started:
                await _too_large(scope, receive, send, self.limit)


async def _too_large(scope, receive, send, limit: int) -> None:
    response = PlainTextResponse(f"413: request body over the {limit // 1024} KiB limit",
                                 status_code=413, headers={"Connection": "close"})
    await response(scope, receive, send)


# --- CSRF -------------------------------------------------------------------------------------


def _same_origin(request: Request) -> bool:
    """The browser's Origin (or Referer) names this host; absent headers pass (non-browser
    clients), the CSRF token still has to match."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return True
    if source == "null":
        return False
    return urlsplit(source).netloc.lower() == request.headers.get("host", "").lower()


async def checked_form(request: Request) -> dict[str, str]:
    """The POSTed form after the CSRF checks; 403 when they fail."""
    if not _same_origin(request):
        raise HTTPException(403, "cross-site request refused")
    # What needs no body is checked before the body is parsed.
    if not re.fullmatch(r"[A-Za-z0-9_-]{32,64}", request.cookies.get(CSRF_COOKIE, "")):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in FORM_TYPES:
        raise HTTPException(415, "expected a form (application/x-www-form-urlencoded)")
    # No file parts, few fields (a bad multipart body is a 400 from starlette itself).
    form = await request.form(max_files=0, max_fields=50, max_part_size=MAX_BODY_BYTES)
    given = str(form.get("csrf", ""))
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not cookie or not hmac.compare_digest(given.encode(), cookie.encode()):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
    return {k: str(v) for k, v in form.items() if isinstance(v, str)}

