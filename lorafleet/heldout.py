"""The held-out guard: one index of every example that must never reach training.

What is held out: val/test files that `data split` writes or a command is told are val/test, eval suites'
datasets when they run, and review items that came from eval runs. Each example is stored as the sha256 of
its normalised prompt text (exact matches) plus a MinHash signature (near matches through MinHashLSH).

Layout under data_dir/heldout/:
- index.json   : the sources and every entry (hash + signature), rewritten atomically under `.lock`;
- sources.json : the list of sources alone, beside it, so a lost or corrupt index can be rebuilt.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from pydantic import BaseModel, Field, ValidationError

from lorafleet.errors import FormatError, HeldOutError, LorafleetError
from lorafleet.formats import Message, read_records_lenient, to_chat
from lorafleet.fsutil import atomic_write_json, sha256_file
from lorafleet.textsig import NUM_PERM, SEED, minhash, normalise

FILE_ROLES = ("val", "test", "eval")
ROLES = (*FILE_ROLES, "review")
INDEX_FILE = "index.json"
SOURCES_FILE = "sources.json"
LOCK_FILE = ".lock"
SCHEMA_VERSION = 1
OVERRIDE_FLAG = "--allow-held-out"


def heldout_text(messages: list[Message] | str) -> str:
    """The compared text: user turns joined by newlines (system prompts and answers left out)."""
    if isinstance(messages, str):
        return messages
    return "\n".join(m.content for m in messages if m.role == "user")


def text_hash(text: str) -> str:
    """sha256 of the normalised text: equal for prompts that differ only in case, punctuation, spacing."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


class HeldOutMatch(BaseModel):
    """A checked record that is (nearly) a held-out one."""

    where: str = Field(description="What was checked, e.g. data/train.jsonl:12.")
    source: str = Field(description="The held-out record it matches, e.g. x/test.jsonl:7 (suite NAME).")
    role: str = Field(description="val | test | eval | review")
    kind: str = Field(description="exact (same normalised text) | near (MinHash Jaccard >= threshold)")
    similarity: float

    def line(self) -> str:
        """`<where>: matches held-out <role> <source> (<kind>, <similarity>)`."""
        return f"{self.where}: matches held-out {self.role} {self.source} ({self.kind}, {self.similarity:.2f})"


class SourceFile(BaseModel):
    """A file whose records were added to the index."""

    path: str = Field(description="As given (shown to users).")
    abspath: str = Field(description="Resolved, for identity and exclude_sources.")
    sha256: str
    role: str
    label: str | None = None
    records: int = 0
    added_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class SourceText(BaseModel):
    """A text added without a file (e.g. a review item); kept so a rebuild can re-add it."""

    source: str
    role: str
    text: str


class Sources(BaseModel):
    files: list[SourceFile] = Field(default_factory=list)
    texts: list[SourceText] = Field(default_factory=list)


class Entry(BaseModel):
    source: str = Field(description="path:line (+ ' (label)'), or the given source of a text.")
    file: str | None = Field(default=None, description="abspath of the source file, None for texts.")
    role: str
    hash: str
    sig: str = Field(description="base64 of the MinHash hash values.")


class IndexFile(BaseModel):
    schema_version: int = SCHEMA_VERSION
    signature: str = Field(description="MinHash scheme/dtype/permutations; another one means rebuild.")
    sources: Sources = Field(default_factory=Sources)
    entries: list[Entry] = Field(default_factory=list)


def _signature_kind() -> str:
    """Signatures from another datasketch scheme are not comparable: the index records which it used."""
    m = minhash("x")
    return f"{getattr(m, 'scheme', 'legacy')}/{m.hashvalues.dtype}/{NUM_PERM}/{SEED}"


_SIG_KIND = _signature_kind()
_SIG_DTYPE = minhash("x").hashvalues.dtype


def _encode(text: str) -> tuple[str, str]:
    values = minhash(text).hashvalues.astype(_SIG_DTYPE)
    return text_hash(text), base64.b64encode(values.tobytes()).decode("ascii")


def _decode(sig: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(sig), dtype=_SIG_DTYPE)


def _lean(values: np.ndarray) -> Any:
    """A LeanMinHash around stored hash values (datasketch >= 2 wants the scheme named)."""
    from datasketch import LeanMinHash

    scheme = _SIG_KIND.split("/")[0]
    try:
        return LeanMinHash(seed=SEED, hashvalues=values, scheme=scheme)
    except TypeError:
        return LeanMinHash(seed=SEED, hashvalues=values)


def _file_entries(src: SourceFile) -> list[Entry]:
    """An entry per record of a held-out file (lines that do not parse cannot be matched and are skipped)."""
    rows, _bad = read_records_lenient(Path(src.path if Path(src.path).is_file() else src.abspath))
    out = []
    suffix = f" ({src.label})" if src.label else ""
    for r in rows:
        text = heldout_text(to_chat(r.record).messages)
        if not normalise(text):
            continue  # an empty prompt would "match" every other empty prompt
        h, sig = _encode(text)
        out.append(Entry(source=f"{src.path}:{r.line}{suffix}", file=src.abspath, role=src.role, hash=h, sig=sig))
    return out


def _text_entry(item: SourceText) -> Entry | None:
    if not normalise(item.text):
        return None
    h, sig = _encode(item.text)
    return Entry(source=item.source, role=item.role, hash=h, sig=sig)


def _check_role(role: str, allowed: tuple[str, ...]) -> None:
    if role not in allowed:
        raise ValueError(f"held-out role {role!r}: use one of {', '.join(allowed)}")


class HeldOutIndex:
    """The held-out index under data_dir/heldout/; safe for concurrent writers on one machine."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.dir = self.data_dir / "heldout"
        self.note: str | None = None
        self._data: IndexFile | None = None
        self._lsh: dict[float, Any] = {}

    # ---- storage ----------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.dir / INDEX_FILE

    def _lock(self) -> FileLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.dir / LOCK_FILE), timeout=120)

    def _read_index(self) -> tuple[IndexFile | None, str | None]:
        """(index, None) or (None, why it cannot be used)."""
        if not self.path.is_file():
            return None, "missing"
        try:
            data = IndexFile.model_validate_json(self.path.read_bytes())
        except (ValidationError, ValueError, UnicodeDecodeError) as exc:
            return None, f"corrupt ({type(exc).__name__})"
        if data.schema_version != SCHEMA_VERSION or data.signature != _SIG_KIND:
            return None, f"written by another version ({data.signature}, schema {data.schema_version})"
        return data, None

    def _read_sources(self) -> Sources | None:
        path = self.dir / SOURCES_FILE
        try:
            return Sources.model_validate_json(path.read_bytes())
        except (OSError, ValidationError, ValueError, UnicodeDecodeError):
            return None

    def _write(self, data: IndexFile) -> None:
        atomic_write_json(self.dir / SOURCES_FILE, data.sources)
        atomic_write_json(self.path, data)
        self._data = data
        self._lsh = {}

    def _load(self) -> IndexFile:
        if self._data is not None:
            return self._data
        data, why = self._read_index()
        if data is None:
            with self._lock():
                data, why = self._read_index()  # another process may have rebuilt it meanwhile
                if data is None:
                    data = self._rebuild(why or "missing")
        self._data = data
        return data

    def _fresh(self) -> IndexFile:
        """The index as on disk now (call under the lock): writers never lose each other's entries."""
        self._data = None
        data, why = self._read_index()
        return data if data is not None else self._rebuild(why or "missing")

    def _rebuild(self, why: str) -> IndexFile:
        """Re-add the recorded sources that still exist and every registry card's val/test files."""
        existed = self.dir.is_dir() and any(p.name != LOCK_FILE for p in self.dir.iterdir())
        recorded = self._read_sources()
        sources = recorded or Sources()
        data = IndexFile(signature=_SIG_KIND)
        gone: list[str] = []
        files = 0
        for src in sources.files:
            on_disk = next((p for p in (Path(src.abspath), Path(src.path)) if p.is_file()), None)
            if on_disk is None:
                gone.append(src.path)
                continue
            data.sources.files.append(src.model_copy(update={"sha256": sha256_file(on_disk)}))
            data.entries += _file_entries(data.sources.files[-1])
            files += 1
        for item in sources.texts:
            data.sources.texts.append(item)
            if (entry := _text_entry(item)) is not None:
                data.entries.append(entry)
        cards = self._add_registry_files(data)
        if not existed and not cards:
            self._write(data)  # a fresh data dir: nothing was ever held out, nothing to say
            return data
        parts = [f"{files} recorded source file(s)" if recorded else "no readable sources.json",
                 f"{len(sources.texts)} recorded text(s)", f"{cards} registry val/test file(s)"]
        note = (f"held-out index {self.path} was {why}: rebuilt from {', '.join(parts)} "
                f"({len(data.entries)} entries)")
        if gone:
            note += f"; no longer on disk: {', '.join(gone)}"
        if not data.entries:
            note += "; the index is EMPTY: add held-out files with `lorafleet data check --val F --test F`"
        self.note = note
        self._write(data)
        return data

    def _add_registry_files(self, data: IndexFile) -> int:
        """Every val/test dataset file named on a registry card that is still on disk."""
        from lorafleet.registry import Registry  # core → core; imported late, the registry is heavier

        registry = Registry(self.data_dir / "registry")
        added = 0
        known = {(s.abspath, s.role) for s in data.sources.files}
        for name in registry.names():
            try:
                versions = registry.versions(name)
            except LorafleetError:
                continue
            for version in versions:
                try:
                    card = registry.card(name, version)
                except LorafleetError:
                    continue
                for ds in card.dataset:
                    path = Path(ds.path)
                    if ds.split not in ("val", "test") or not path.is_file():
                        continue
                    if (str(path.resolve()), ds.split) in known:
                        continue
                    src = SourceFile(path=ds.path, abspath=str(path.resolve()), sha256=sha256_file(path),
                                     role=ds.split, label=f"card {name}@{version}")
                    entries = _file_entries(src)
                    src.records = len(entries)
                    data.sources.files.append(src)
                    data.entries += entries
                    known.add((src.abspath, src.role))
                    added += 1
        return added

    # ---- adding -----------------------------------------------------------------------------
    def add_file(self, path: Path, role: str, *, label: str | None = None) -> int:
        """Hold out every record of a JSONL file; the same content added again is a no-op (returns 0)."""
        _check_role(role, FILE_ROLES)
        path = Path(path)
        if not path.is_file():
            raise FormatError(f"{path}: no such file", hint="check the path")
        digest = sha256_file(path)
        abspath = str(path.resolve())
        src = SourceFile(path=str(path), abspath=abspath, sha256=digest, role=role, label=label)
        entries = _file_entries(src)  # outside the lock: hashing a big file should not block others
        src.records = len(entries)
        with self._lock():
            data = self._fresh()
            if any(s.sha256 == digest and s.role == role for s in data.sources.files):
                return 0
            # The same file re-written (e.g. a new split) replaces what it held before.
            data.sources.files = [s for s in data.sources.files if not (s.abspath == abspath and s.role == role)]
            data.entries = [e for e in data.entries if not (e.file == abspath and e.role == role)]
            data.sources.files.append(src)
            data.entries += entries
            self._write(data)
        return len(entries)

    def add_texts(self, role: str, items: Iterable[tuple[str, str]]) -> int:
        """Hold out (source, text) pairs, e.g. review items; a source already held with that role is skipped."""
        _check_role(role, ROLES)
        new = [SourceText(source=s, role=role, text=t) for s, t in items]
        with self._lock():
            data = self._fresh()
            seen = {(t.source, t.role, text_hash(t.text)) for t in data.sources.texts}
            added = kept = 0
            for item in new:
                key = (item.source, item.role, text_hash(item.text))
                if key in seen:
                    continue
                seen.add(key)
                data.sources.texts.append(item)
                kept += 1
                if (entry := _text_entry(item)) is not None:
                    data.entries.append(entry)
                    added += 1
            if kept:
                self._write(data)
        return added

    # ---- checking ---------------------------------------------------------------------------
    def _index_for(self, threshold: float) -> Any:
        if threshold not in self._lsh:
            from datasketch import MinHashLSH

            lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
            for i, e in enumerate(self._load().entries):
                lsh.insert(i, _lean(_decode(e.sig)))
            self._lsh[threshold] = lsh
        return self._lsh[threshold]

    def check(self, items: Iterable[tuple[str, str]], *, threshold: float = 0.8,
              exclude_sources: Iterable[str | os.PathLike[str]] = ()) -> list[HeldOutMatch]:
        """One match per (where, text) item that is held out: exact first, else the nearest above threshold."""
        data = self._load()
        excluded = {str(Path(p).resolve()) for p in exclude_sources}
        exact: dict[str, Entry] = {}
        for e in data.entries:
            if e.file not in excluded:
                exact.setdefault(e.hash, e)
        lsh = self._index_for(threshold) if data.entries else None
        out = []
        for where, text in items:
            if not normalise(text):
                continue
            h = text_hash(text)
            if h in exact:
                e = exact[h]
                out.append(HeldOutMatch(where=where, source=e.source, role=e.role, kind="exact", similarity=1.0))
                continue
            if lsh is None:
                continue
            m = minhash(text)
            best: tuple[float, Entry] | None = None
            for i in lsh.query(m):
                e = data.entries[i]
                if e.file in excluded:
                    continue
                score = float(np.mean(_decode(e.sig) == m.hashvalues.astype(_SIG_DTYPE)))
                if score >= threshold and (best is None or score > best[0]):
                    best = (score, e)
            if best is not None:
                score, e = best
                out.append(HeldOutMatch(where=where, source=e.source, role=e.role, kind="near",
                                        similarity=round(score, 4)))
        return out

    def check_file(self, path: Path, **kw: Any) -> list[HeldOutMatch]:
        """check() over every record of a file, where = "path:line"."""
        rows, _bad = read_records_lenient(Path(path))
        return self.check(((f"{r.path}:{r.line}", heldout_text(to_chat(r.record).messages)) for r in rows), **kw)

    def version(self) -> str:
        """Short content hash of the index (goes on cards: which index a run was checked against)."""
        h = hashlib.sha256()
        for e in sorted(self._load().entries, key=lambda e: (e.hash, e.role, e.source)):
            h.update(f"{e.hash}\t{e.role}\t{e.source}\n".encode())
        return h.hexdigest()[:12]

    def __len__(self) -> int:
        return len(self._load().entries)

    def sources(self) -> Sources:
        """What has been added (files with their sha256/role/label, and texts)."""
        return self._load().sources


def refusal(matches: list[HeldOutMatch], *, flag: str = OVERRIDE_FLAG, what: str = "training") -> HeldOutError:
    """The HeldOutError for matches: one line per record, the hint names the override flag."""
    lines = "\n".join(m.line() for m in matches)
    return HeldOutError(f"{len(matches)} record(s) would bring held-out examples into {what}:\n{lines}",
                        hint=f"remove them, or pass {flag} to use them anyway (it is recorded)", matches=matches)

