"""A site's DICOMweb server and how to log in to it: the secrets file its node config names.

The site's ``node-config.toml`` names the file (``policy.dicomweb-secrets``), never its
content: credentials are not on a command line (``ps`` shows those) nor in the run config
(the server sends that). The file is TOML, owner-only (mode 0600, owned by the user the
node runs as; anything else is refused with the ``chmod``/``chown`` that fixes it)::

    url = "https://pacs.example.org/dicom-web"   # the DICOMweb root (QIDO-RS and WADO-RS)
    ca-file = "/etc/hepafed/pacs-ca.pem"          # optional: the CA that signed its TLS cert
    username = "hepafed"                          # HTTP basic authentication, or
    password = "..."
    # token = "..."                               # instead: 'Authorization: Bearer ...'
    timeout-s = 30                                # optional: seconds per request

Plain ``http://`` is accepted only for a server on this machine (loopback): anything
else would send the credentials and the images in clear text. No message of this module
ever contains a credential.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

KEYS = ("url", "ca-file", "username", "password", "token", "timeout-s")
DEFAULT_TIMEOUT_S = 30.0
LOOPBACK_NAMES = ("localhost",)


class DicomWebConfigError(ValueError):
    """The site's DICOMweb source cannot be used at all (its secrets file, its package)."""


@dataclass(frozen=True)
class DicomWebSettings:
    """Where the site's DICOMweb server is and how to log in (from ``read_secrets``)."""

    url: str
    source: Path  # the secrets file, named in messages instead of any value in it
    ca_file: Path | None = None  # None: the public CAs (certifi's bundle, as requests has it)
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S


def read_secrets(path: Path | str) -> DicomWebSettings:
    """The settings in a site's DICOMweb secrets file, after checking who may read it.

    Raises ``DicomWebConfigError`` naming the file and the fix: missing, not a regular
    file, readable by others, owned by another user, not TOML, an unknown key, a bad URL.
    """
    path = Path(path)
    try:  # opened once, without following a link, and checked as opened (no swap between)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise DicomWebConfigError(
            f"DICOMweb secrets file {path} (policy.dicomweb-secrets) cannot be read: "
            f"{e.strerror or e} (a symbolic link is refused: name the file itself)"
        ) from e
    try:
        with os.fdopen(fd, "rb") as fh:
            check_private(path, os.fstat(fh.fileno()))
            raw = fh.read()
        data = tomllib.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise DicomWebConfigError(f"DICOMweb secrets file {path}: cannot read it ({e})") from e
    except tomllib.TOMLDecodeError as e:  # its message has a position, never a value
        raise DicomWebConfigError(f"DICOMweb secrets file {path}: not valid TOML: {e}") from e
    return _settings(path, data)


def check_private(path: Path, st: os.stat_result | None = None) -> None:
    """Refuse a secrets file that is not a regular file, owner-only and the node's own
    (``st``: the open file's status; default: the path's)."""
    if st is None:
        try:
            st = path.stat()
        except OSError as e:
            raise DicomWebConfigError(
                f"DICOMweb secrets file {path} (policy.dicomweb-secrets) cannot be read: "
                f"{e.strerror or e}"
            ) from e
    if not stat.S_ISREG(st.st_mode):
        raise DicomWebConfigError(f"DICOMweb secrets file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise DicomWebConfigError(
            f"DICOMweb secrets file {path} has mode {stat.S_IMODE(st.st_mode):04o}: others "
            f"may read the PACS credentials; run `chmod 600 {path}`"
        )
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise DicomWebConfigError(
            f"DICOMweb secrets file {path} belongs to uid {st.st_uid}, not to the user this "
            f"node runs as (uid {os.geteuid()}); run `chown $(id -u) {path}` as that user's "
            "administrator"
        )


def _settings(path: Path, data: dict[str, Any]) -> DicomWebSettings:
    def bad(message: str) -> DicomWebConfigError:
        return DicomWebConfigError(f"DICOMweb secrets file {path}: {message}")

    unknown = sorted(set(data) - set(KEYS))
    if unknown:  # named, never their values
        raise bad(f"unknown key(s) {', '.join(unknown)}; the keys are {', '.join(KEYS)}")
    text: dict[str, str] = {}
    for key in ("url", "ca-file", "username", "password", "token"):
        value = data.get(key, "")
        if not isinstance(value, str):
            raise bad(f"{key} must be a string (in quotes)")
        text[key] = value
    timeout = data.get("timeout-s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise bad("timeout-s must be a number of seconds > 0")
    if bool(text["username"]) != bool(text["password"]):
        raise bad("give both username and password (HTTP basic authentication), or neither")
    if text["token"] and text["username"]:
        raise bad("give username/password or token, not both")
    url = _check_url(text["url"], bad)
    ca = path.parent / text["ca-file"] if text["ca-file"] else None  # relative: to the file
    if ca is not None and not ca.is_file():
        raise bad(f"ca-file {ca} does not exist or is not a file")
    if ca is not None and ca.stat().st_mode & 0o022:  # whoever may write it may add a CA
        raise bad(
            f"ca-file {ca} may be written by others (mode {stat.S_IMODE(ca.stat().st_mode):04o})"
            f": they could add a CA and read the PACS credentials; run `chmod go-w {ca}`"
        )
    return DicomWebSettings(
        url=url,
        source=path,
        ca_file=ca,
        username=text["username"],
        password=text["password"],
        token=text["token"],
        timeout_s=float(timeout),
    )


def _check_url(url: str, bad: Any) -> str:
    """The server's DICOMweb root: https (http only on loopback), no credentials in it."""
    if not url:
        raise bad('url is missing: give the DICOMweb root, e.g. "https://pacs/dicom-web"')
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad("url must be an http(s) URL with a host, e.g. https://pacs/dicom-web")
    if parts.username or parts.password:
        raise bad("url must not hold credentials (user:password@): give username/password")
    if parts.query or parts.fragment:
        raise bad("url must be the DICOMweb root, without ?query or #fragment")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise bad(
            "url is plain http to another machine: the credentials and images would cross "
            "the network in clear text; use https (and ca-file for the hospital's CA)"
        )
    return url.rstrip("/")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine (127.0.0.0/8, ::1 or ``localhost``)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
