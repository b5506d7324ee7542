"""Series on the site's DICOMweb server (its PACS) as image sources.

A manifest image cell ``dicomweb:STUDY_UID/SERIES_UID`` names one series on the DICOMweb
server of the site's secrets file (``common.dicomweb_secrets``; the manifest carries no
URL and no credential). ``DicomWebSource.fetch`` finds the series' instances (QIDO-RS),
retrieves those not yet cached (WADO-RS) into the site's cache folder, one file per SOP
Instance UID::

    <cache-dir>/dicomweb-instances/<STUDY_UID>/<SERIES_UID>/<SOP_INSTANCE_UID>.dcm

and returns that folder, which is then an ordinary DICOM series folder: the same header
checks (``common.dicom.read_series``), acquisition metadata and preprocessing cache as a
folder the site exported. Each file is written atomically (``common.files``) and owner-
only, so a file is cached whole or not at all; a re-run retrieves nothing already cached,
and a file of the folder that the server no longer lists (an instance deleted on the PACS,
a crashed write's temporary file) is removed, as is the folder of a series the server no
longer has, so the cache holds each series as the server has it now.

A series that cannot be retrieved raises ``DicomWebError``, whose ``kind``
(``common.badcases.BadInput``) names why: the server is down, refuses the credentials, its
certificate is not trusted, the series is missing, or an instance is not an image. The
manifest turns it into a problem of that case, which ``data.on-bad-case`` fails or skips.
After a failure that every further request would meet (down, TLS, credentials), the other
series are not asked for: a site with 500 cases neither waits 500 timeouts nor risks the
PACS locking its account.

``dicomweb-client`` (the ``dicomweb`` extra) is imported only when a series is fetched.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.badcases import BadInput
from common.dicomweb_secrets import DicomWebConfigError, DicomWebSettings, read_secrets
from common.files import write_atomic

log = logging.getLogger(__name__)

PREFIX = "dicomweb:"
SYNTAX = "dicomweb:STUDY_UID/SERIES_UID"
INSTANCES_FOLDER = "dicomweb-instances"  # under the site's cache folder
EXTRA = "pip install -e '.[dicomweb]'"
RETRY_ATTEMPTS, RETRY_WAIT_MS = 3, 250  # waits 0.5 s, then 1 s
UID_MAX = 64
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")
# a UID in free text: a root arc 0, 1 or 2 and at least two more groups (2.25.<uuid> has two)
# a UID-like run: a root of 0, 1 or 2 and two or more components (leading zeros included,
# so a malformed UID is redacted too)
_UID_IN_TEXT = re.compile(r"(?<![\w.])[0-2](?:\.[0-9]+){2,}(?![0-9])")
REDACTED_UID = "<UID>"
SOP_INSTANCE_UID = "00080018"  # DICOM JSON tag of a QIDO-RS result
PAGE_SIZE = 500  # instances per QIDO-RS page
MAX_INSTANCES = 5000  # a series of more is refused: one volume has at most a few thousand slices
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# failures that every further request to the server would meet too
_SOURCE_FAILURES = (
    BadInput.DICOMWEB_UNREACHABLE,
    BadInput.DICOMWEB_TLS,
    BadInput.DICOMWEB_UNAUTHORIZED,
)


class DicomWebCellError(ValueError):
    """A ``dicomweb:`` cell that does not name a study and a series by their UIDs."""


class DicomWebError(Exception):
    """A series that could not be retrieved; ``kind`` says why, ``reason`` what to do."""

    def __init__(self, kind: BadInput, ref: SeriesRef, reason: str) -> None:
        self.kind, self.ref, self.reason = kind, ref, reason
        super().__init__(f"DICOMweb {ref}: {reason}")


@dataclass(frozen=True)
class SeriesRef:
    """One series on the DICOMweb server, as a manifest cell names it."""

    study: str
    series: str

    def __str__(self) -> str:
        return f"series {self.series} (study {self.study})"

    @property
    def cell(self) -> str:
        return f"{PREFIX}{self.study}/{self.series}"


def is_uid(text: str) -> bool:
    """Whether ``text`` is a DICOM UID: digit groups joined by dots, at most 64 characters."""
    return len(text) <= UID_MAX and _UID.fullmatch(text) is not None


def redact_uids(text: str) -> str:
    """``text`` with every DICOM UID in it replaced by ``<UID>``: a study's or series' UID
    may lead back to a patient (DICOM PS3.15 replaces them when de-identifying), so what a
    site reports about its cases names none."""
    return _UID_IN_TEXT.sub(REDACTED_UID, text)


def is_dicomweb_cell(text: str) -> bool:
    """Whether a manifest image cell names a DICOMweb series (``dicomweb:``, any case)."""
    return text.strip()[: len(PREFIX)].lower() == PREFIX


def parse_cell(text: str) -> SeriesRef:
    """The series a ``dicomweb:STUDY_UID/SERIES_UID`` cell names; ``DicomWebCellError`` if
    it names none (the UIDs also name folders, so nothing path-like gets in)."""
    body = text.strip()[len(PREFIX) :]
    study, _, series = body.partition("/")
    if not (is_uid(study) and is_uid(series)):
        raise DicomWebCellError(  # the cell itself is not echoed: it may hold an identifier
            f"the cell does not name a DICOMweb series: write {SYNTAX}, two DICOM UIDs "
            f"(digits and dots, at most {UID_MAX} characters each)"
        )
    return SeriesRef(study, series)


def make_client(settings: DicomWebSettings) -> Any:
    """A ``DICOMwebClient`` for the server of ``settings``: its CA, its credentials, its
    timeout, and nothing from the environment (no proxy, ``.netrc`` or CA bundle there)."""
    try:
        import requests
        from dicomweb_client.api import DICOMwebClient
    except ImportError as e:
        raise DicomWebConfigError(
            f"reading series from a DICOMweb server needs the dicomweb extra: {EXTRA} ({e})"
        ) from e
    session = requests.Session()
    session.trust_env = False  # the secrets file alone decides where and how to connect
    session.verify = str(settings.ca_file) if settings.ca_file is not None else True
    if settings.token:
        session.headers["Authorization"] = f"Bearer {settings.token}"
    elif settings.username:
        session.auth = (settings.username, settings.password)
    client = DICOMwebClient(url=settings.url, session=session, timeout=settings.timeout_s)
    # the library retries a failed request (refused, TLS, 503...) 5 times over 30 s; a site
    # gets 3 tries over 1.5 s, and a server that stays down is then not asked again
    client.set_http_retry_params(
        retry=True, max_attempts=RETRY_ATTEMPTS, wait_exponential_multiplier=RETRY_WAIT_MS
    )
    return client


class DicomWebSource:
    """The site's DICOMweb server and the folder its retrieved instances are kept in.

    One source serves one reading of a manifest: it remembers a failure that every request
    would meet (and ``retrieved``, the instances it wrote), nothing else."""

    def __init__(
        self,
        settings: DicomWebSettings,
        cache_dir: Path | str,
        client_factory: Callable[[DicomWebSettings], Any] = make_client,
    ) -> None:
        self.settings = settings
        self.root = Path(cache_dir) / INSTANCES_FOLDER
        self.retrieved = 0
        self._factory = client_factory
        self._client: Any = None
        self._refusal: DicomWebError | None = None

    def folder(self, ref: SeriesRef) -> Path:
        """Where the series' instances are kept (whether or not they are there yet)."""
        return self.root / ref.study / ref.series

    def fetch(self, ref: SeriesRef) -> Path:
        """The folder holding exactly the series' instances as the server lists them now,
        retrieving the missing ones; ``DicomWebError`` if it cannot."""
        if self._refusal is not None:
            raise DicomWebError(
                self._refusal.kind, ref, f"{self._refusal.reason} (as for an earlier series)"
            )
        if self._client is None:
            self._client = self._factory(self.settings)
        client = self._client
        try:
            uids = self._instances(client, ref)
        except DicomWebError as e:
            if e.kind == BadInput.DICOMWEB_SERIES_MISSING:  # gone from the PACS: from here too
                shutil.rmtree(self.folder(ref), ignore_errors=True)
            raise
        folder = _private_folder(self.folder(ref))
        wanted = {f"{uid}.dcm" for uid in uids}
        for entry in folder.iterdir():  # deleted on the server, or a crashed write's .tmp
            if entry.name in wanted:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        for uid in uids:
            path = folder / f"{uid}.dcm"
            if path.is_file():
                continue
            ds = self._call(ref, client.retrieve_instance, ref.study, ref.series, uid)
            try:
                write_atomic(path, _instance_bytes(ds, ref, uid), mode=0o600)
            except OSError as e:  # a full disk; nothing half-written is left
                raise DicomWebError(
                    BadInput.DICOMWEB_FAILED, ref, f"instance {uid} could not be kept in the "
                    f"site's cache folder ({e.strerror or type(e).__name__}): is its disk full?",
                ) from e  # fmt: skip
            except DicomWebError:
                raise
            except Exception as e:  # what the server sent is no DICOM file pydicom can write
                raise DicomWebError(
                    BadInput.DICOMWEB_FAILED, ref, f"instance {uid} as the server sent it is "
                    f"not a usable DICOM file ({type(e).__name__}): ask the PACS administrator",
                ) from e  # fmt: skip
            self.retrieved += 1
        return folder

    def _instances(self, client: Any, ref: SeriesRef) -> list[str]:
        """The SOP Instance UIDs of the series (QIDO-RS), sorted; never empty.

        Paged by hand: a page that adds no new instance ends the list (a server that ignores
        ``offset`` sends the same page again, forever), and a series of more than
        ``MAX_INSTANCES`` instances is refused rather than listed without end."""
        found: list[Any] = []
        seen: set[str] = set()
        while True:
            page = self._call(
                ref,
                client.search_for_instances,
                study_instance_uid=ref.study,
                series_instance_uid=ref.series,
                fields=["SOPInstanceUID"],
                offset=len(found),
                limit=PAGE_SIZE,
            )
            new = [item for item in page or [] if _listed_uid(item) not in seen]
            if not new:
                break
            found += new
            seen.update(_listed_uid(item) for item in new)
            if len(found) > MAX_INSTANCES:
                raise DicomWebError(
                    BadInput.DICOMWEB_FAILED, ref, f"the server lists more than "
                    f"{MAX_INSTANCES} instances in one series: a series is one volume; check "
                    "the manifest cell, or ask the PACS administrator",
                )  # fmt: skip
            if len(page) < PAGE_SIZE:
                break
        uids: set[str] = set()
        for item in found:
            try:
                uid = str(item[SOP_INSTANCE_UID]["Value"][0])
            except (KeyError, IndexError, TypeError) as e:
                raise DicomWebError(
                    BadInput.DICOMWEB_FAILED, ref, "the server's instance list (QIDO-RS) has "
                    "an entry without a SOP Instance UID; is url the server's DICOMweb root?"
                ) from e  # fmt: skip
            if not is_uid(uid):
                raise DicomWebError(
                    BadInput.DICOMWEB_FAILED, ref,
                    f"the server lists an instance whose UID {uid[:80]!r} is not a DICOM UID",
                )  # fmt: skip
            uids.add(uid)
        if not uids:
            raise DicomWebError(
                BadInput.DICOMWEB_SERIES_MISSING, ref, "the server has no such series: check "
                f"the manifest cell ({SYNTAX}), or whether the series was deleted or moved",
            )  # fmt: skip
        return sorted(uids)

    def _call(self, ref: SeriesRef, request: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """One request to the server; any failure becomes the ``DicomWebError`` naming it."""
        import requests

        try:
            return request(*args, **kw)
        except requests.exceptions.SSLError as e:
            trusted = "its ca-file" if self.settings.ca_file else "the public CAs (no ca-file)"
            raise self._refuse(
                BadInput.DICOMWEB_TLS, ref, e, "the server's TLS certificate is not trusted "
                f"by {trusted} (or names another host than the url's): give the CA that signed "
                "it as ca-file in the site's DICOMweb secrets file (policy.dicomweb-secrets)",
            ) from e  # fmt: skip
        except requests.exceptions.ConnectionError as e:
            raise self._refuse(
                BadInput.DICOMWEB_UNREACHABLE, ref, e, "the site's DICOMweb server cannot be "
                "reached (connection refused, no route or timed out): is it running, and is "
                "url right in the site's DICOMweb secrets file (policy.dicomweb-secrets)?",
            ) from e  # fmt: skip
        except requests.exceptions.Timeout as e:
            raise DicomWebError(
                BadInput.DICOMWEB_FAILED, ref, f"the server sent no answer within "
                f"{self.settings.timeout_s:g} s: raise timeout-s in the site's DICOMweb "
                "secrets file, or ask the PACS administrator",
            ) from e  # fmt: skip
        except requests.exceptions.HTTPError as e:
            status = e.response.status_code if e.response is not None else 0
            if status in (401, 403):
                raise self._refuse(
                    BadInput.DICOMWEB_UNAUTHORIZED, ref, e, f"the server refused the "
                    f"credentials (HTTP {status}): check username and password (or token) in "
                    "the site's DICOMweb secrets file (policy.dicomweb-secrets), and that the "
                    "account may read this series",
                ) from e  # fmt: skip
            if status == 404:
                raise DicomWebError(
                    BadInput.DICOMWEB_SERIES_MISSING, ref, "the server has no such series "
                    f"(HTTP 404): check the manifest cell ({SYNTAX}), or whether the series "
                    "was deleted or moved",
                ) from e  # fmt: skip
            raise DicomWebError(
                BadInput.DICOMWEB_FAILED, ref, f"the server answered HTTP {status}: see its "
                "log, or ask the PACS administrator",
            ) from e  # fmt: skip
        except Exception as e:  # an answer the library cannot parse (not DICOM, not JSON...)
            raise DicomWebError(
                BadInput.DICOMWEB_FAILED, ref, f"the server's answer could not be read "
                f"({type(e).__name__}): is url the server's DICOMweb root?",
            ) from e  # fmt: skip

    def _refuse(
        self, kind: BadInput, ref: SeriesRef, cause: BaseException, reason: str
    ) -> DicomWebError:
        """The error of a failure every further request would meet, remembered."""
        error = DicomWebError(kind, ref, reason)
        if kind in _SOURCE_FAILURES:
            self._refusal = error
            # the site's own log: the URL (never a credential) and the library's words
            log.error("DICOMweb server %s: %s (%s)", self.settings.url, kind.value,
                      type(cause).__name__)  # fmt: skip
        return error


def open_source(secrets_file: str, cache_dir: str) -> DicomWebSource | None:
    """The DICOMweb server a site's policy names (``policy.dicomweb-secrets``), its series
    kept in the site's cache folder (``policy.cache-dir``); None when it names none.

    Raises ``DicomWebConfigError`` for an unusable secrets file, or a site without a cache
    folder to keep the retrieved series in."""
    if not secrets_file:
        return None
    if not cache_dir:
        raise DicomWebConfigError(
            "policy.dicomweb-secrets is set but policy.cache-dir is not: the series retrieved "
            "from the PACS are kept in the site's cache folder; set policy.cache-dir"
        )
    return DicomWebSource(read_secrets(secrets_file), cache_dir)


def _listed_uid(item: Any) -> str:
    """A QIDO-RS entry's SOP Instance UID as text ('' when it has none: reported later)."""
    try:
        return str(item[SOP_INSTANCE_UID]["Value"][0])
    except (KeyError, IndexError, TypeError):
        return ""


def _instance_bytes(ds: Any, ref: SeriesRef, uid: str) -> bytes:
    """A retrieved instance as a DICOM file, after checking it is the image asked for."""
    from pydicom.uid import UID

    got_uid, got_series = str(ds.get("SOPInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
    if got_uid != uid or got_series != ref.series:
        raise DicomWebError(
            BadInput.DICOMWEB_FAILED, ref, f"asked for instance {uid}, the server sent "
            f"instance {got_uid[:80]!r} of series {got_series[:80]!r}",
        )  # fmt: skip
    if not any(k in ds for k in PIXEL_KEYWORDS):
        sop_class = UID(str(ds.get("SOPClassUID", "")))
        name = sop_class.name if sop_class else "no SOP class"
        raise DicomWebError(
            BadInput.DICOMWEB_NOT_IMAGE, ref, f"instance {uid} ({name}) has no pixel data: "
            "a series named in the manifest must hold images only; remove the instance from "
            "the series on the PACS, or name the image series instead",
        )  # fmt: skip
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _private_folder(path: Path) -> Path:
    """``path`` and the folders up to the cache folder's, created owner-only (0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for folder in (path, path.parent, path.parent.parent):
        os.chmod(folder, 0o700)
    return path
