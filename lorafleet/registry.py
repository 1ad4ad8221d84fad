"""The adapter registry: the file layout every part shares.

    <root>/<name>/<version>/{adapter_config.json, adapter_model.safetensors, card.json}
    <root>/<name>/aliases.json   {"latest": "v3", "prod": "v2", "canary": {"v3": 0.9, "v4": 0.1}}

Versions are immutable: built in a temp folder, fsynced, renamed into place under a file lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from pydantic import BaseModel, RootModel, ValidationError, field_validator

from lorafleet.adapter_files import CONFIG_FILE, WEIGHTS_FILE
from lorafleet.card import MUTABLE_CARD_FIELDS, AdapterCard
from lorafleet.errors import InvalidNameError, NotFoundError, RegistryError
from lorafleet.fsutil import atomic_write_json, atomic_write_text, fsync_dir, sha256_file
from lorafleet.refs import (
    VERSION_RE,
    AdapterRef,
    parse_ref,
    validate_alias,
    validate_name,
    validate_version,
    version_number,
)

CARD_FILE = "card.json"
ALIASES_FILE = "aliases.json"
COUNTER_FILE = ".last_version"
WEIGHT_TOLERANCE = 1e-6

AliasTarget = str | dict[str, float]


class Aliases(RootModel[dict[str, AliasTarget]]):
    """alias → version, or alias → {version: weight} for a weighted (canary) split."""

    @field_validator("root")
    @classmethod
    def _check(cls, value: dict[str, AliasTarget]) -> dict[str, AliasTarget]:
        for alias, target in value.items():
            validate_alias(alias)
            if isinstance(target, str):
                validate_version(target)
            else:
                check_weights(alias, target)
        return value


def check_weights(alias: str, weights: Mapping[str, float]) -> None:
    """Weighted targets: valid versions, weights in (0, 1], summing to 1."""
    if not weights:
        raise RegistryError(f"alias {alias!r} has no versions", hint="give at least one VERSION=WEIGHT")
    for version, weight in weights.items():
        validate_version(version)
        if not 0 < float(weight) <= 1:
            raise RegistryError(f"alias {alias!r}: weight of {version} is {weight}", hint="weights lie in (0, 1]")
    total = sum(float(w) for w in weights.values())
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise RegistryError(
            f"alias {alias!r}: weights sum to {total:g}, not 1",
            hint="e.g. v3=0.9 v4=0.1",
        )


@dataclass(frozen=True)
class ResolvedAdapter:
    """A ref resolved to one concrete, immutable version."""

    name: str
    version: str
    path: Path
    card: AdapterCard

    @property
    def served_name(self) -> str:
        return f"{self.name}@{self.version}"


class VersionSummary(BaseModel):
    name: str
    version: str
    aliases: list[str]
    created_at: str | None = None
    source: str | None = None
    base: str | None = None
    rank: int | None = None
    error: str | None = None


class Registry:
    """File-backed adapter registry; safe for concurrent writers on one machine."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()  # vLLM resolves adapter paths in its own cwd
        self._locks: dict[str, FileLock] = {}

    # ---- paths and locks -------------------------------------------------------------------
    def _adapter_dir(self, name: str) -> Path:
        return self.root / validate_name(name)

    def _version_dir(self, name: str, version: str) -> Path:
        return self._adapter_dir(name) / validate_version(version)

    def _lock(self, name: str) -> FileLock:
        # One lock object per name and registry, so a caller holding `lock(name)` may call set_alias or
        # update_card_with inside it (the same FileLock re-enters; a second object on the file would deadlock).
        if name not in self._locks:
            lock_dir = self.root / ".locks"
            lock_dir.mkdir(parents=True, exist_ok=True)
            self._locks[name] = FileLock(str(lock_dir / f"{validate_name(name)}.lock"), timeout=120)
        return self._locks[name]

    def lock(self, name: str) -> FileLock:
        """The adapter's registry lock, for read-check-write steps across files (compare-and-set)."""
        return self._lock(name)

    # ---- reading ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def versions(self, name: str) -> list[str]:
        """Versions of `name`, oldest first; raises NotFoundError for an unknown adapter."""
        adapter_dir = self._adapter_dir(name)
        if not adapter_dir.is_dir():
            raise NotFoundError(f"no adapter named {name!r}", hint="see `lorafleet adapters list`")
        found = [p.name for p in adapter_dir.iterdir() if p.is_dir() and VERSION_RE.match(p.name)]
        return sorted(found, key=version_number)

    def aliases(self, name: str) -> dict[str, AliasTarget]:
        path = self._adapter_dir(name) / ALIASES_FILE
        if not path.exists():
            return {}
        try:
            return Aliases.model_validate(json.loads(path.read_text(encoding="utf-8"))).root
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RegistryError(f"{path}: invalid JSON ({exc})", hint="fix the file or re-set the aliases") from None
        except (ValidationError, InvalidNameError, RegistryError) as exc:
            raise RegistryError(f"{path}: invalid aliases ({_first_error(exc)})", hint="fix the file") from None

    def card(self, name: str, version: str) -> AdapterCard:
        """Load and validate a version's card; a missing or broken card is a RegistryError."""
        version_dir = self._version_dir(name, version)
        if not version_dir.is_dir():
            raise NotFoundError(f"adapter {name!r} has no version {version}",
                                hint=f"versions: {', '.join(self.versions(name)) or 'none'}")
        path = version_dir / CARD_FILE
        fix = f"restore it or remove the version with `lorafleet adapters rm {name}@{version}`"
        if not path.is_file():
            raise RegistryError(f"{path}: card.json is missing (corrupt registry entry)", hint=fix)
        try:
            return AdapterCard.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            raise RegistryError(f"{path}: invalid card ({_first_error(exc)})", hint=fix) from None

    def resolve(self, ref: str | AdapterRef, *, sticky_key: str | None = None,
                rng: random.Random | None = None) -> ResolvedAdapter:
        """Resolve `name`, `name@vN` or `name@alias` to one version (weighted aliases pick one)."""
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        version = parsed.selector if parsed.is_version else self._alias_version(parsed, sticky_key, rng)
        card = self.card(parsed.name, version)
        return ResolvedAdapter(parsed.name, version, self._version_dir(parsed.name, version), card)

    def _alias_version(self, ref: AdapterRef, sticky_key: str | None, rng: random.Random | None) -> str:
        aliases = self.aliases(ref.name)
        alias = ref.alias
        if alias not in aliases:
            if alias == "latest" and not self.versions(ref.name):
                raise NotFoundError(f"adapter {ref.name!r} has no versions", hint="register one first")
            known = ", ".join(sorted(aliases)) or "none"
            raise NotFoundError(f"adapter {ref.name!r} has no alias {alias!r}", hint=f"aliases: {known}")
        target = aliases[alias]
        if isinstance(target, str):
            return target
        return pick_weighted(target, key=f"{ref.name}@{alias}:{sticky_key}" if sticky_key else None, rng=rng)

    def summaries(self) -> list[VersionSummary]:
        """One row per version, with corrupt entries reported instead of raised."""
        rows = []
        for name in self.names():
            try:
                aliases = self.aliases(name)
            except RegistryError as exc:
                rows.append(VersionSummary(name=name, version="-", aliases=[], error=str(exc)))
                aliases = {}
            for version in self.versions(name):
                names = aliases_of(aliases, version)
                try:
                    card = self.card(name, version)
                except RegistryError as exc:
                    rows.append(VersionSummary(name=name, version=version, aliases=names, error=str(exc)))
                    continue
                rows.append(VersionSummary(
                    name=name, version=version, aliases=sorted(names), created_at=card.created_at.isoformat(),
                    source=card.source, base=card.base.id, rank=card.lora.rank,
                ))
        return rows

    # ---- writing ---------------------------------------------------------------------------
    def register(self, name: str, src_dir: Path, card: AdapterCard, *,
                 fail_before_rename: Callable[[], None] | None = None) -> ResolvedAdapter:
        """Copy a PEFT folder into a new immutable version and move `latest` to it.

        The version is assembled in a temp folder and renamed into place, so a crash leaves
        nothing half-registered. `fail_before_rename` is a test hook simulating a crash.
        """
        validate_name(name)
        src_dir = Path(src_dir)
        adapter_dir = self._adapter_dir(name)
        adapter_dir.mkdir(parents=True, exist_ok=True)
        tmp = adapter_dir / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            files = {}
            for fname in (CONFIG_FILE, WEIGHTS_FILE):
                shutil.copy2(src_dir / fname, tmp / fname)
                _fsync_file(tmp / fname)
                files[fname] = sha256_file(tmp / fname)
            with self._lock(name):
                version = f"v{self._last_issued(name) + 1}"
                final = card.model_copy(update={"name": name, "version": version, "files": files})
                atomic_write_json(tmp / CARD_FILE, final)
                fsync_dir(tmp)
                if fail_before_rename is not None:
                    fail_before_rename()
                os.rename(tmp, adapter_dir / version)
                fsync_dir(adapter_dir)
                self._set_counter(name, version_number(version))
                aliases = self.aliases(name)
                aliases["latest"] = version
                self._write_aliases(name, aliases)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return ResolvedAdapter(name, version, adapter_dir / version, final)

    def set_alias(self, name: str, alias: str, target: AliasTarget) -> None:
        """Point `alias` at a version or at weighted versions; every version must exist."""
        validate_alias(alias)
        if alias == "latest":
            raise InvalidNameError("'latest' is managed by the registry", hint="it always names the newest version")
        with self._lock(name):
            existing = set(self.versions(name))
            wanted = [target] if isinstance(target, str) else list(target)
            if not isinstance(target, str):
                check_weights(alias, target)
            for version in wanted:
                validate_version(version)
                if version not in existing:
                    raise NotFoundError(f"adapter {name!r} has no version {version}",
                                        hint=f"versions: {', '.join(sorted(existing, key=version_number)) or 'none'}")
            aliases = self.aliases(name)
            aliases[alias] = target if isinstance(target, str) else {k: float(v) for k, v in target.items()}
            self._write_aliases(name, aliases)

    def remove_alias(self, name: str, alias: str) -> None:
        with self._lock(name):
            aliases = self.aliases(name)
            if alias == "latest":
                raise InvalidNameError("'latest' is managed by the registry",
                                       hint="it always names the newest version; it cannot be deleted")
            if alias not in aliases:
                known = ", ".join(sorted(a for a in aliases if a != "latest")) or "none"
                raise NotFoundError(f"adapter {name!r} has no alias {alias!r}", hint=f"aliases: {known}")
            del aliases[alias]
            self._write_aliases(name, aliases)

    def remove(self, ref: str, *, all_versions: bool = False) -> list[str]:
        """Remove one version (`name@vN` or `name@alias`), or every version with `all_versions`."""
        parsed = parse_ref(ref)
        with self._lock(parsed.name):
            if parsed.selector is None and not all_versions:
                raise RegistryError(f"{ref!r} names a whole adapter",
                                    hint=f"remove one version ({parsed.name}@v1) or pass --all")
            versions = self.versions(parsed.name)
            if parsed.selector is None:
                doomed = versions
            else:
                doomed = [parsed.selector if parsed.is_version else self._alias_version(parsed, None, None)]
                if doomed[0] not in versions:
                    raise NotFoundError(f"adapter {parsed.name!r} has no version {doomed[0]}")
            aliases = self.aliases(parsed.name)
            if parsed.selector is None:  # --all: a client using name@prod would lose it silently
                users = sorted(a for a in aliases if a != "latest")
                if users:
                    raise RegistryError(
                        f"alias {users[0]!r} of {parsed.name!r} still points at a version",
                        hint=f"delete it first: lorafleet adapters alias {parsed.name} {users[0]} --delete")
            else:
                users = [a for a in aliases_of(aliases, doomed[0]) if a != "latest"]
                if users:
                    raise RegistryError(
                        f"alias {users[0]!r} of {parsed.name!r} points at {doomed[0]}",
                        hint=f"move it first: lorafleet adapters alias {parsed.name} {users[0]} VERSION")
            adapter_dir = self._adapter_dir(parsed.name)
            for version in doomed:
                trash = adapter_dir / f".trash-{version}-{uuid.uuid4().hex}"
                os.rename(adapter_dir / version, trash)
                shutil.rmtree(trash, ignore_errors=True)
            remaining = [v for v in versions if v not in doomed]
            if remaining:
                aliases["latest"] = remaining[-1]
                self._write_aliases(parsed.name, aliases)
            else:
                (adapter_dir / ALIASES_FILE).unlink(missing_ok=True)
            return doomed

    def update_card(self, ref: str, **fields: object) -> AdapterCard:
        """Update what is learned after creation (metrics, eval runs, review, notes); weights never change.

        The fields replace what is there: to add to a list (eval_runs) use `update_card_with`."""
        check_mutable(fields)
        return self.update_card_with(ref, lambda _card: fields)

    def update_card_with(self, ref: str, fn: Callable[[AdapterCard], Mapping[str, object]]) -> AdapterCard:
        """Apply `fn` to the version's current card under the adapter's lock and write the fields it returns.

        The read, `fn` and the write form one step across processes, so concurrent appenders never
        lose each other's entries; `fn` returning {} writes nothing."""
        resolved = self.resolve(ref)
        with self._lock(resolved.name):
            card = self.card(resolved.name, resolved.version)
            fields = dict(fn(card))
            if not fields:
                return card
            check_mutable(fields)
            updated = card.model_copy(update=fields)
            AdapterCard.model_validate(updated.model_dump())
            atomic_write_json(resolved.path / CARD_FILE, updated)
        return updated

    # ---- internals -------------------------------------------------------------------------
    def _last_issued(self, name: str) -> int:
        """Highest version number ever issued, so removed numbers are never reused."""
        counter = self._adapter_dir(name) / COUNTER_FILE
        issued = int(counter.read_text().strip() or 0) if counter.exists() else 0
        existing = [version_number(v) for v in self.versions(name)]
        return max([issued, *existing])

    def _set_counter(self, name: str, number: int) -> None:
        atomic_write_text(self._adapter_dir(name) / COUNTER_FILE, f"{number}\n")

    def _write_aliases(self, name: str, aliases: dict[str, AliasTarget]) -> None:
        ordered = dict(sorted(aliases.items(), key=lambda kv: (kv[0] != "latest", kv[0])))
        atomic_write_json(self._adapter_dir(name) / ALIASES_FILE, ordered)


def check_mutable(fields: Mapping[str, object]) -> None:
    """Only what is learned after creation may change on a card."""
    bad = set(fields) - MUTABLE_CARD_FIELDS
    if bad:
        raise RegistryError(f"card fields {sorted(bad)} are immutable", hint="register a new version instead")


def aliases_of(aliases: Mapping[str, AliasTarget], version: str) -> list[str]:
    """The aliases that point at `version`, alone or as part of a weighted split."""
    return sorted(a for a, t in aliases.items() if t == version or (isinstance(t, dict) and version in t))


def pick_weighted(weights: Mapping[str, float], *, key: str | None = None,
                  rng: random.Random | None = None) -> str:
    """Pick a version by weight; with `key` the pick is sticky (same key, same version)."""
    if key is not None:
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
    else:
        u = (rng or random).random()
    acc = 0.0
    items = sorted(weights.items(), key=lambda kv: version_number(kv[0]))
    for version, weight in items:
        acc += float(weight)
        if u < acc:
            return version
    return items[-1][0]


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        return f"{loc}: {err['msg']}"
    return str(exc)
