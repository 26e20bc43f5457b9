"""Sentinel Hub endpoint and credentials from the environment.

berthwatch never reads or writes sentinelhub's own `config.toml`: everything comes from the
environment (`SH_CLIENT_ID`, `SH_CLIENT_SECRET`, `SH_BASE_URL`, `SH_TOKEN_URL`), with the free
Copernicus Data Space Ecosystem (CDSE) as the default deployment. Secrets are masked in every
repr and scrubbed from the log records of the libraries that would otherwise print them.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from sentinelhub import SHConfig

CDSE_BASE_URL = "https://sh.dataspace.copernicus.eu"
CDSE_TOKEN_URL = (
    "https://identity.dataspace.copernicus.eu/auth/realms/CDSE/protocol/openid-connect/token"
)
COMMERCIAL_BASE_URL = "https://services.sentinel-hub.com"
COMMERCIAL_TOKEN_URL = (
    "https://services.sentinel-hub.com/auth/realms/main/protocol/openid-connect/token"
)
README_SECTION = "Sentinel Hub credentials (Copernicus Data Space)"
CREDENTIAL_VARS = ("SH_CLIENT_ID", "SH_CLIENT_SECRET")
MASK = "****"

# Sentinel Hub's own defaults wait 5 s, 15 s, 45 s between attempts: far too long for an
# interactive `berthwatch fetch`, so berthwatch retries sooner and gives up sooner.
DEFAULT_MAX_DOWNLOAD_ATTEMPTS = 4
DEFAULT_DOWNLOAD_SLEEP_TIME = 2.0
DEFAULT_DOWNLOAD_TIMEOUT = 120.0


class CredentialsMissing(Exception):
    """Sentinel Hub credentials are not in the environment."""

    def __init__(self, missing: tuple[str, ...]):
        self.missing = missing
        names = " and ".join(missing)
        super().__init__(
            f"Sentinel Hub credentials missing: set {names} (an OAuth client of the Copernicus "
            f"Data Space Ecosystem); see README section \"{README_SECTION}\""
        )


@dataclass(frozen=True)
class Credentials:
    """An OAuth client. The secret never shows in repr/str, so logging one is harmless."""

    client_id: str
    client_secret: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(SH_CLIENT_ID={self.client_id!r}, SH_CLIENT_SECRET={MASK})"

    __str__ = __repr__


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    token_url: str


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def credentials_from_env(env: Mapping[str, str] | None = None) -> Credentials:
    """`SH_CLIENT_ID` and `SH_CLIENT_SECRET`; raises `CredentialsMissing` naming what is unset
    (a blank value counts as unset)."""
    values = {name: _env(env).get(name, "").strip() for name in CREDENTIAL_VARS}
    missing = tuple(name for name, value in values.items() if not value)
    if missing:
        raise CredentialsMissing(missing)
    return Credentials(values["SH_CLIENT_ID"], values["SH_CLIENT_SECRET"])


def endpoint_from_env(env: Mapping[str, str] | None = None) -> Endpoint:
    """`SH_BASE_URL` (default CDSE) and `SH_TOKEN_URL` (default: the token service that goes
    with the base URL, so switching to the commercial service takes one variable)."""
    base = (_env(env).get("SH_BASE_URL") or CDSE_BASE_URL).strip().rstrip("/")
    token = (_env(env).get("SH_TOKEN_URL") or "").strip() or _default_token_url(base)
    return Endpoint(base, token)


def _default_token_url(base_url: str) -> str:
    # Every *.sentinel-hub.com deployment authenticates against the main commercial realm.
    if re.match(r"https?://[^/]*sentinel-hub\.com$", base_url):
        return COMMERCIAL_TOKEN_URL
    return CDSE_TOKEN_URL


def berthwatch_sh_config(
    credentials: Credentials | None = None,
    endpoint: Endpoint | None = None,
    *,
    max_download_attempts: int = DEFAULT_MAX_DOWNLOAD_ATTEMPTS,
    download_sleep_time: float = DEFAULT_DOWNLOAD_SLEEP_TIME,
    download_timeout_seconds: float = DEFAULT_DOWNLOAD_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> SHConfig:
    """An `SHConfig` built from the environment (or the given credentials and endpoint).
    `use_defaults=True` keeps sentinelhub from creating or reading `~/.config/sentinelhub`, where
    a stale profile could silently override the environment."""
    credentials = credentials or credentials_from_env(env)
    endpoint = endpoint or endpoint_from_env(env)
    if max_download_attempts < 1:
        raise ValueError("max_download_attempts must be at least 1")
    register_secret(credentials.client_secret)
    return SHConfig(
        use_defaults=True,
        sh_client_id=credentials.client_id,
        sh_client_secret=credentials.client_secret,
        sh_base_url=endpoint.base_url,
        sh_token_url=endpoint.token_url,
        max_download_attempts=max_download_attempts,
        download_sleep_time=download_sleep_time,
        download_timeout_seconds=download_timeout_seconds,
        # Without a cap sentinelhub retries HTTP 429 forever; cap it like other failures.
        max_retries=max_download_attempts,
    )


def describe(config: SHConfig) -> str:
    """One safe line about a config, for logs and error messages."""
    return (f"Sentinel Hub at {config.sh_base_url} (client {config.sh_client_id}, "
            f"SH_CLIENT_SECRET={MASK})")


# --- keeping secrets out of logs -------------------------------------------------------------

# requests_oauthlib logs the token request body (which carries the client secret) and the token
# it gets back at DEBUG level; `berthwatch -v` or a test's caplog would record them.
_NOISY_LOGGERS = (
    "requests_oauthlib.oauth2_session",
    "sentinelhub.download.session",
    "sentinelhub.download.sentinelhub_client",
    "sentinelhub.download.client",
    "urllib3.connectionpool",
    "requests_mock.adapter",
)
_TOKEN_PATTERNS = (
    re.compile(r"""(access_token['"]?\s*[:=]\s*['"]?)[^'"&\s,}]+"""),
    re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"(client_secret=)[^&\s'\"]+"),
)


class RedactSecrets(logging.Filter):
    """Rewrites log records so no registered secret or bearer token survives in them."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        for pattern in _TOKEN_PATTERNS:
            text = pattern.sub(rf"\g<1>{MASK}", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_REDACTOR = RedactSecrets()


def register_secret(secret: str) -> None:
    """Scrub `secret` from every record of the loggers known to print request bodies."""
    if secret:
        _REDACTOR.secrets.add(secret)
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if _REDACTOR not in logger.filters:
            logger.addFilter(_REDACTOR)


def redact(text: str) -> str:
    """`text` with registered secrets and bearer tokens masked (for exception messages)."""
    return _REDACTOR.redact(text)
