"""What the verifier reads: a station's uploaded recordings from a folder or an HTTP(S) URL, and
the keys file central staff keep.

The upload layout (agent/uplink): `{station}/recordings.json` lists the station's recordings;
each recording is a folder `{station}/{recording_id}/` with `archive.m3u8`, its segments
`{seq:08d}.ts` and their manifests `{seq:08d}.json`. A path or URL may name a station's folder
or one recording's folder. Over HTTP the verifier asks for what the index and the playlists
name, and then for the manifests after the last one listed until the server has no more (the
archive playlist is rewritten only now and then).

The keys file is CSV, one station a line (what `station-agent provision` writes):

    station_id,public_key,fingerprint
    AZ-0001,Xk3Q...base64 of 32 bytes...=,K3QF-7ZPA-MC2X-R4DL

The fingerprint column may be empty; when filled, it must match the key (a key pasted into the
wrong row is caught). Lines starting with # and repeated header lines are skipped, so files
from several technicians can simply be concatenated.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.core.keys import fingerprint, parse_public_key, public_key_text
from agent.spool.manifest import MAX_MANIFEST_BYTES
from agent.tools.verify import RecordingFiles, SegmentFile

INDEX_NAME = "recordings.json"
ARCHIVE_NAME = "archive.m3u8"
KEYS_HEADER = ("station_id", "public_key", "fingerprint")
_OBJECT_RE = re.compile(r"^([0-9]{8,})\.(ts|json)$")
_RECORDING_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
HASH_THREADS = 4  # hashing releases the GIL: a laptop's cores read files in parallel
HTTP_THREADS = 8  # parallel downloads; a CDN serves them, the observer's link is the limit
HTTP_TIMEOUT_S = 30.0
CHUNK_BYTES = 1 << 20
MAX_PROBE = 100_000  # manifests looked for past the last listed one (14 h of 2-s segments is
# 25,200): a server that answers 200 to everything must not keep the verifier busy forever
MAX_INDEX_BYTES = 16 * 1024 * 1024


class VerifyInputError(Exception):
    """The files cannot be read at all (no such folder, the server fails); one line."""


# --- keys --------------------------------------------------------------------------------------


def read_keys_file(text: str, source: str) -> dict[str, Ed25519PublicKey]:
    """station id -> public key; VerifyInputError naming the line of the first problem."""
    keys: dict[str, Ed25519PublicKey] = {}
    for number, row in enumerate(csv.reader(io.StringIO(text.lstrip("\ufeff"))), start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells) or cells[0].startswith("#") or tuple(cells[:2]) == KEYS_HEADER[:2]:
            continue
        if len(cells) < 2:
            raise VerifyInputError(f"{source} line {number}: want station_id,public_key")
        station, text_key = cells[0], cells[1]
        try:
            key = parse_public_key(text_key)
        except ValueError as exc:
            raise VerifyInputError(f"{source} line {number}: {station}: {exc}") from None
        if len(cells) > 2 and cells[2] and cells[2] != fingerprint(key):
            raise VerifyInputError(
                f"{source} line {number}: {station}: the fingerprint {cells[2]} is not the "
                f"key's ({fingerprint(key)})"
            )
        if station in keys and fingerprint(keys[station]) != fingerprint(key):
            raise VerifyInputError(f"{source} line {number}: {station} has two different keys")
        keys[station] = key
    if not keys:
        raise VerifyInputError(f"{source}: no keys in it (want lines station_id,public_key)")
    return keys


def keys_file_line(station_id: str, key: Ed25519PublicKey) -> str:
    """One line of the keys file (no newline)."""
    return f"{station_id},{public_key_text(key)},{fingerprint(key)}"


# --- where the files are ------------------------------------------------------------------------


class Store(Protocol):
    """A folder or a URL: objects by path relative to it."""

    description: str

    def get(self, name: str, max_bytes: int) -> bytes | None:
        """The object's bytes, or None when there is none."""

    def hash(self, name: str) -> SegmentFile | None:
        """Size and SHA-256 of the object, or None when there is none."""

    def listing(self, folder: str) -> list[str] | None:
        """Names in a folder, when the store can list (a local folder); else None."""

    def child(self, name: str) -> Store: ...


class FolderStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = str(path)

    def get(self, name: str, max_bytes: int) -> bytes | None:
        try:
            with (self.path / name).open("rb") as fh:
                return fh.read(max_bytes + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise VerifyInputError(f"{self.path / name}: {exc.strerror or exc}") from None

    def hash(self, name: str) -> SegmentFile | None:
        digest, size = hashlib.sha256(), 0
        try:
            with (self.path / name).open("rb") as fh:
                while chunk := fh.read(CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise VerifyInputError(f"{self.path / name}: {exc.strerror or exc}") from None
        return SegmentFile(size, digest.hexdigest())

    def listing(self, folder: str) -> list[str] | None:
        target = self.path / folder if folder else self.path
        try:
            return sorted(entry.name for entry in target.iterdir())
        except OSError:
            return []

    def child(self, name: str) -> FolderStore:
        return FolderStore(self.path / name)


class HttpStore:
    def __init__(self, url: str, client: httpx.Client) -> None:
        self.url = url.rstrip("/")
        self._client = client
        self.description = self.url

    def _url(self, name: str) -> str:
        return f"{self.url}/{name}" if name else self.url

    def get(self, name: str, max_bytes: int) -> bytes | None:
        try:
            with self._client.stream("GET", self._url(name)) as response:
                if response.status_code in (404, 410):
                    return None
                self._check(response, name)
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > max_bytes:
                        break
                return bytes(data)
        except httpx.HTTPError as exc:
            raise VerifyInputError(f"{self._url(name)}: {type(exc).__name__}: {exc}") from None

    def hash(self, name: str) -> SegmentFile | None:
        digest, size = hashlib.sha256(), 0
        try:
            with self._client.stream("GET", self._url(name)) as response:
                if response.status_code in (404, 410):
                    return None
                self._check(response, name)
                for chunk in response.iter_bytes(CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
        except httpx.HTTPError as exc:
            raise VerifyInputError(f"{self._url(name)}: {type(exc).__name__}: {exc}") from None
        return SegmentFile(size, digest.hexdigest())

    def _check(self, response: httpx.Response, name: str) -> None:
        if not 200 <= response.status_code < 300:
            raise VerifyInputError(
                f"{self._url(name)}: HTTP {response.status_code} {response.reason_phrase}"
            )

    def listing(self, folder: str) -> list[str] | None:
        return None

    def child(self, name: str) -> HttpStore:
        return HttpStore(self._url(name), self._client)


def open_store(where: str, client: httpx.Client) -> Store:
    if where.startswith(("http://", "https://")):
        return HttpStore(re.sub(r"/(recordings\.json|archive\.m3u8)$", "", where), client)
    path = Path(where)
    if path.is_file() and path.name in (INDEX_NAME, ARCHIVE_NAME):
        path = path.parent
    if not path.is_dir():
        raise VerifyInputError(f"{where}: no such folder")
    return FolderStore(path)


def http_client() -> httpx.Client:
    return httpx.Client(
        timeout=HTTP_TIMEOUT_S,
        follow_redirects=True,
        headers={"User-Agent": "station-agent-verify"},
        limits=httpx.Limits(max_connections=HTTP_THREADS),
    )


# --- a station's recordings -----------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """What a path or URL turned out to be."""

    station_name: str  # the folder's name (the station id in the upload layout)
    recordings: list[RecordingFiles]
    is_station: bool


def read_station_or_recording(
    store: Store, name: str, progress: Callable[[str], None] | None = None
) -> Layout:
    """A station's recordings (its folder) or one recording (a recording's folder)."""
    index = store.get(INDEX_NAME, MAX_INDEX_BYTES)
    entries = _index_entries(index) if index is not None else None
    own_listing = store.listing("")
    looks_like_recording = (index is None) and (
        store.get(ARCHIVE_NAME, MAX_INDEX_BYTES) is not None
        or any(_OBJECT_RE.match(n) for n in own_listing or [])
    )
    if looks_like_recording:
        base, recording_id = _split_name(name)
        files = read_recording(store, recording_id, hint=None, progress=progress)
        return Layout(base, [files], is_station=False)
    found: dict[str, tuple[int, int] | None] = dict(entries or {})
    for entry in own_listing or []:  # a local folder: recordings not (yet) in the index too
        if entry not in found and _RECORDING_RE.match(entry) and store.listing(entry):
            found[entry] = None
    recordings = [
        read_recording(store.child(rid), rid, hint=found[rid], progress=progress)
        for rid in sorted(found)
    ]
    return Layout(_split_name(name)[1], [r for r in recordings if _anything(r)], True)


def _anything(files: RecordingFiles) -> bool:
    return bool(files.manifests or files.segments or files.listed)


def _split_name(name: str) -> tuple[str, str]:
    """'.../AZ-0001/20261123T061502Z-3fa9c2' -> ('AZ-0001', '20261123T061502Z-3fa9c2')."""
    parts = [p for p in re.split(r"[/\\]", name.rstrip("/")) if p]
    if not parts:
        return "", ""
    return (parts[-2] if len(parts) > 1 else ""), parts[-1]


def _index_entries(data: bytes) -> dict[str, tuple[int, int] | None]:
    """recording id -> (first_seq, last_seq) from recordings.json (a hint: it is unsigned)."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise VerifyInputError(f"{INDEX_NAME} is not JSON") from None
    raw = document.get("recordings") if isinstance(document, dict) else None
    if not isinstance(raw, list):
        raise VerifyInputError(f"{INDEX_NAME} has no 'recordings' list")
    entries: dict[str, tuple[int, int] | None] = {}
    for item in raw:
        rid = item.get("recording_id") if isinstance(item, dict) else None
        if not isinstance(rid, str) or not _RECORDING_RE.match(rid):
            continue
        first, last = item.get("first_seq"), item.get("last_seq")
        ok = isinstance(first, int) and isinstance(last, int) and 0 <= first <= last
        entries[rid] = (first, last) if ok else None
    return entries


def read_recording(
    store: Store,
    recording_id: str,
    hint: tuple[int, int] | None,
    progress: Callable[[str], None] | None = None,
) -> RecordingFiles:
    """Manifests' bytes and segments' hashes of one recording folder."""
    files = RecordingFiles(recording_id)
    archive = store.get(ARCHIVE_NAME, MAX_INDEX_BYTES)
    if archive is not None:
        files.listed = set(_playlist_seqs(archive))
    if hint is not None and hint[1] - hint[0] < MAX_PROBE:
        files.listed |= set(range(hint[0], hint[1] + 1))
    listing = store.listing("")
    if listing is not None:
        manifest_seqs = _seqs(listing, "json")
        segment_seqs = _seqs(listing, "ts")
    else:
        manifest_seqs = segment_seqs = set(files.listed)
    if progress:
        progress(f"{recording_id}: reading {len(manifest_seqs)} manifests")
    with ThreadPoolExecutor(HTTP_THREADS if listing is None else HASH_THREADS) as pool:
        got = pool.map(lambda s: _manifest(store, s), sorted(manifest_seqs))
        files.manifests = {seq: data for seq, data in got if data is not None}
        if listing is None:  # over HTTP: the manifests after the last one listed
            _probe(store, files, pool)
            segment_seqs = set(files.listed) | set(files.manifests)
        if progress:
            progress(f"{recording_id}: hashing {len(segment_seqs)} segments")
        hashed = pool.map(lambda s: (s, store.hash(f"{s:08d}.ts")), sorted(segment_seqs))
        files.segments = {seq: found for seq, found in hashed if found is not None}
    return files


def _manifest(store: Store, seq: int) -> tuple[int, bytes | None]:
    return seq, store.get(f"{seq:08d}.json", MAX_MANIFEST_BYTES)


def _probe(store: Store, files: RecordingFiles, pool: ThreadPoolExecutor) -> None:
    """Ask for manifests past the last known one, a batch at a time, until one is absent."""
    seq = max(files.listed | set(files.manifests), default=-1) + 1
    while seq < MAX_PROBE + max(files.listed, default=0):
        batch = range(seq, seq + HTTP_THREADS)
        got = list(pool.map(lambda s: _manifest(store, s), batch))
        for found_seq, data in got:
            if data is None:
                return
            files.manifests[found_seq] = data
        seq += HTTP_THREADS


def _seqs(names: Iterable[str], suffix: str) -> set[int]:
    seqs = set()
    for name in names:
        match = _OBJECT_RE.match(name)
        if match and match.group(2) == suffix:
            seqs.add(int(match.group(1)))
    return seqs


def _playlist_seqs(data: bytes) -> list[int]:
    """The sequence numbers of the segments an HLS playlist lists (by their file names)."""
    seqs = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            match = _OBJECT_RE.match(line.rsplit("/", 1)[-1])
            if match and match.group(2) == "ts":
                seqs.append(int(match.group(1)))
    return seqs
