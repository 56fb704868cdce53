"""A seeded, realistic sample registry and landing files, from a thousand packages to npm's size.

Real package names and monthly download totals come from the bundled list of 226,974 npm
packages; past that a synthetic long tail is added. Everything else (dependencies,
accounts, 2FA factors, sessions, tokens, orgs, login events) is drawn from distributions
shaped like npm's. The same seed gives the same registry rows and byte-identical landing
files. Every stage is vectorised numpy/Arrow: no Python object per row, so the 4 million
package ``npm`` scale runs in minutes.

Plain Python on purpose: the CLI and the flows call :func:`generate_sample`.
"""

from __future__ import annotations

import functools
import json
import math
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sqlalchemy import delete, insert, inspect, text, update

from rollout.core.controls import quoted, shell_word, visible
from rollout.core.errors import BadInput, GuardRefused
from rollout.core.files import duckdb_path, make_folder, written_in_place
from rollout.core.words import counted, them
from rollout.registry import Registry, bulk, migrate
from rollout.registry.engine import make_engine, normalize_url, registry_url_shown
from rollout.registry.models import LEDGER_TABLES, REGISTRY_TABLES, RegistryMark

if TYPE_CHECKING:
    from rollout.core.config import Settings

REAL_DOWNLOADS = Path(__file__).parent / "data" / "npm-monthly-downloads.tsv.gz"
# The landing subfolders the sample and its demo write (the story's login, publish and
# delivery events among the sample's): replace=True deletes these and nothing else.
LANDING_KINDS = ("manifests", "downloads", "logins", "publishes", "events")
# What `rollout sample` leaves in the landing folder it writes, before any landing file
# (ingest passes over a name starting with a dot): the folder, and its home's outbox and
# reports, are a sample's (check_locations).
SAMPLE_MARK = ".rollout-sample"
# The end of the registry's sample mark's note until the run that wrote it wrote its last
# landing file: a run stopped part-way leaves a registry that says so (registry_contents).
UNFINISHED = " (unfinished)"

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Scale:
    """How big a sample is and which file formats it writes."""

    name: str
    packages: int
    accounts: int
    mean_dependencies: float
    days: int
    # "mixed": JSONL manifests, older days as CSV and newer as Parquet, API JSON files;
    # "parquet": Parquet only (the npm scale, where CSV/JSON would be tens of GB).
    formats: str
    # The most-downloaded real packages always kept when the real list is sampled.
    top_real: int
    # Dependency targets are drawn with weight (popularity rank + 1) ** -skew.
    dependency_skew: float


SCALES: dict[str, Scale] = {
    "tiny": Scale("tiny", 1_000, 700, 4.0, 35, "mixed", 25, 0.8),
    "small": Scale("small", 20_000, 12_000, 4.5, 35, "mixed", 200, 0.85),
    "medium": Scale("medium", 250_000, 140_000, 5.0, 35, "mixed", 300, 0.75),
    "npm": Scale("npm", 4_000_000, 2_000_000, 5.0, 30, "parquet", 300, 0.68),
}


@dataclass
class SampleSummary:
    """What was generated. Row counts are table rows (web_sessions and tokens include
    revoked ones); download_rows counts the daily files only, not the API files that
    repeat their last week; dependency_edges counts ``dependencies`` (not dev/peer)."""

    scale: str
    seed: int
    packages: int
    dependency_edges: int
    accounts: int
    accounts_with_2fa: int
    web_sessions: int
    tokens: int
    orgs: int
    landing_files: list[Path]
    download_rows: int
    login_events: int
    seconds: float
    dev_dependency_edges: int = 0
    peer_dependency_edges: int = 0
    publish_events: int = 0


# --- time ------------------------------------------------------------------------------

US = 1_000_000
DAY_US = 86_400 * US
_EPOCH = datetime(1970, 1, 1)
REGISTRY_START = datetime(2010, 1, 1)
TOTP_LAUNCH = datetime(2017, 10, 1)
WEBAUTHN_LAUNCH = datetime(2021, 6, 1)
ORGS_LAUNCH = datetime(2015, 4, 14)
# Tokens got names (and the automation kind) at the end of 2020: older ones are legacy.
NAMED_TOKENS_SINCE = datetime(2021, 1, 1)
# About 1,000,000 weekly downloads: the maintainers of such packages use 2FA more often.
POPULAR_MONTHLY = 4_300_000


def _us(moment: datetime | date) -> int:
    """Microseconds since the epoch of a naive UTC datetime (or midnight of a date)."""
    if not isinstance(moment, datetime):
        moment = datetime(moment.year, moment.month, moment.day)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _between(
    rng: np.random.Generator,
    lo: np.ndarray | int,
    hi: np.ndarray | int,
    power: float = 1.0,
    size: int | None = None,
) -> np.ndarray:
    """Whole-second instants between lo and hi (µs); power < 1 leans late, > 1 early.

    ``size`` is needed only when both bounds are scalars.
    """
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.maximum(np.asarray(hi, dtype=np.int64), lo)
    u = rng.random(np.broadcast(lo, hi).shape if size is None else size)
    if power != 1.0:
        u = u**power
    value = lo + (u * (hi - lo)).astype(np.int64)
    # Round up to a whole second so the result stays >= lo (all anchors are whole seconds).
    return np.minimum(-(-value // US) * US, hi)


def _ts(values: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    return pa.array(values.astype(np.int64), type=pa.timestamp("us"), mask=null)


# --- small helpers ---------------------------------------------------------------------


def _null_strings(n: int) -> pa.Array:
    return pa.nulls(n, pa.string())


def _where(mask: np.ndarray, strings: pa.Array) -> pa.Array:
    """``strings`` where mask, null elsewhere (a piece to skip when joining)."""
    return pc.if_else(pa.array(mask), strings, _null_strings(len(strings)))


def _labels(values: Sequence[str], index: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    """values[index] as an Arrow string array (null where ``null``), without Python strings."""
    labels = pa.array(list(values), pa.string()).take(pa.array(index))
    return labels if null is None else _where(~null, labels)


def _join(*parts: pa.Array, sep: str = "") -> pa.Array:
    return pc.binary_join_element_wise(*parts, sep, null_handling="skip")


def _digits(rng: np.random.Generator, n: int) -> pa.Array:
    """Numbers as people put them in names: mostly small, some years, some longer."""
    kind = rng.random(n)
    value = np.where(
        kind < 0.6,
        rng.integers(1, 100, n),
        np.where(kind < 0.8, rng.integers(1975, 2023, n), rng.integers(100, 10_000, n)),
    )
    return pc.cast(pa.array(value), pa.string())


def _pick(
    rng: np.random.Generator, words: pa.Array, n: int, cdf: np.ndarray | None = None
) -> pa.Array:
    if cdf is None:
        index = rng.integers(0, len(words), n)
    else:
        index = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    return words.take(pa.array(index))


def _cdf(weights: np.ndarray) -> np.ndarray:
    return np.cumsum(weights, dtype=np.float64)


def _offsets(group: np.ndarray, groups: int) -> np.ndarray:
    """List offsets for rows sorted by ``group``."""
    out = np.zeros(groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(group, minlength=groups), out=out[1:])
    return out


def _power_law(rng: np.random.Generator, items: int, exponent: float, n: int) -> np.ndarray:
    """n draws of 0..items-1 with P(r) roughly proportional to (r + 1) ** -exponent.

    The continuous inverse CDF: no cumulative table to search, which at 20 million
    draws over 4 million items is ten times faster than searchsorted.
    """
    u = rng.random(n)
    if abs(exponent - 1.0) < 1e-9:
        x = np.expm1(u * np.log1p(items))
    else:
        a = 1.0 - exponent
        x = (1.0 + u * ((items + 1.0) ** a - 1.0)) ** (1.0 / a) - 1.0
    return np.minimum(x.astype(np.int64), items - 1)


def _first_positions(key: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of each distinct key, in position order.

    Sort-based: numpy's hash-based unique is several times slower on tens of millions.
    """
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    first = np.ones(len(key), bool)
    first[1:] = ordered[1:] != ordered[:-1]
    return np.sort(order[first])


def _sorted_unique(key: np.ndarray) -> np.ndarray:
    key = np.sort(key)
    keep = np.ones(len(key), bool)
    keep[1:] = key[1:] != key[:-1]
    return key[keep]


def _in_sorted(key: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Whether each key is in ``sorted_set`` (sorted, distinct)."""
    if len(sorted_set) == 0:
        return np.zeros(len(key), bool)
    at = np.minimum(np.searchsorted(sorted_set, key), len(sorted_set) - 1)
    return sorted_set[at] == key


def _unique_pairs(a: np.ndarray, b: np.ndarray, b_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (a, b) pairs sorted by a then b."""
    key = _sorted_unique(a.astype(np.int64) * b_size + b)
    return key // b_size, key % b_size


_MAX_ROUNDS = 50


def _new_unique(
    make: Callable[[int], tuple[pa.Array, np.ndarray]], n: int, taken: pa.Array
) -> tuple[pa.Array, np.ndarray]:
    """n distinct strings from ``make`` that are not in ``taken`` (compared lowercase).

    ``make(k)`` returns k candidates and a parallel int array (e.g. a scope index) that is
    kept with each accepted string. Candidates are drawn in rounds until n are accepted,
    so the result depends only on the generator's state: deterministic.
    """
    names: list[pa.Array] = []
    extra: list[np.ndarray] = []
    have = 0
    seen = pc.utf8_lower(taken)
    accepted_share = 0.8
    for _ in range(_MAX_ROUNDS):
        if have >= n:
            break
        want = n - have
        # Draw for the share accepted last round: saturated patterns (jane-doe) collide
        # a lot, and each round hashes everything accepted so far, so rounds are few.
        candidates, data = make(int(want / max(accepted_share, 0.05) * 1.1) + 64)
        lower = pc.utf8_lower(candidates)
        first = _first_positions(pc.dictionary_encode(lower).indices.to_numpy())
        new = ~pc.is_in(lower.take(pa.array(first)), value_set=seen).to_numpy(zero_copy_only=False)
        accepted_share = new.sum() / len(candidates)
        fresh = first[new][:want]
        names.append(candidates.take(pa.array(fresh)))
        extra.append(data[fresh])
        seen = pa.concat_arrays([seen, lower.take(pa.array(fresh))])
        have += len(fresh)
    else:
        raise RuntimeError(
            f"could not make {counted(n, 'distinct name')}; the patterns are exhausted"
        )
    return pa.concat_arrays(names), np.concatenate(extra)


# --- the real package list -------------------------------------------------------------


@functools.cache
def _real_packages() -> tuple[pa.Array, np.ndarray]:
    """Names and monthly downloads of the real npm packages bundled with rollout."""
    table = pacsv.read_csv(
        REAL_DOWNLOADS,
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(
            column_types={"name": pa.string(), "downloads_a_month": pa.int64()}
        ),
    )
    names = table["name"].combine_chunks()
    return names, table["downloads_a_month"].to_numpy()


@functools.cache
def _name_words() -> tuple[pa.Array, np.ndarray]:
    """Words of real package names ('eslint', 'plugin', 'loader') and how common they are.

    Synthetic names built from them look like the names people really choose.
    """
    names, _ = _real_packages()
    base = pc.utf8_lower(pc.replace_substring_regex(names, r"^@[^/]*/", ""))
    tokens = pc.list_flatten(pc.split_pattern_regex(base, r"[-._]"))
    tokens = tokens.filter(pc.match_substring_regex(tokens, r"^[a-z]{3,10}$"))
    counts = pc.value_counts(tokens)
    words = counts.field("values")
    frequency = counts.field("counts").to_numpy()
    order = pc.sort_indices(words).to_numpy()
    keep = order[frequency[order] >= 3]
    return words.take(pa.array(keep)), _cdf(frequency[keep].astype(np.float64) ** 0.7)


# --- packages --------------------------------------------------------------------------


@dataclass
class Packages:
    names: pa.Array  # sorted bytewise; every index below refers to this order
    monthly: np.ndarray
    real: np.ndarray
    rank: np.ndarray  # 0 = most downloaded
    scope: np.ndarray  # index into scopes, -1 when unscoped
    scopes: pa.Array  # '@scope'
    versions: pa.Array

    def __len__(self) -> int:
        return len(self.names)


def _choose_real(scale: Scale, rng: np.random.Generator) -> np.ndarray:
    """Indices of the real packages to keep: the top few hundred plus a random sample."""
    names, monthly = _real_packages()
    if scale.packages >= len(names):
        return np.arange(len(names))
    # Most downloaded first; the name index breaks ties so the order is total.
    by_popularity = np.lexsort((np.arange(len(names)), -monthly))
    top = by_popularity[: scale.top_real]
    rest = by_popularity[scale.top_real :]
    sampled = rng.choice(rest, scale.packages - len(top), replace=False)
    return np.concatenate([top, sampled])


def _synthetic_monthly(rng: np.random.Generator, n: int, below: int) -> np.ndarray:
    """Heavy-tailed monthly downloads under the real minimum: most get a handful."""
    return np.floor(float(below) ** (rng.random(n) ** 1.4)).astype(np.int64) - 1


def _word_names(rng: np.random.Generator, n: int) -> pa.Array:
    """'word', 'word-word', 'word-word-word', sometimes with a number."""
    words, cdf = _name_words()
    length = rng.choice(3, n, p=[0.15, 0.6, 0.25])
    parts = [_pick(rng, words, n, cdf) for _ in range(3)]
    base = _join(parts[0], _where(length >= 1, parts[1]), _where(length >= 2, parts[2]), sep="-")
    kind = rng.random(n)
    number = _digits(rng, n)
    dashed = _join(base, _where(kind < 0.12, number), sep="-")
    return _join(dashed, _where((kind >= 0.12) & (kind < 0.25), number))


def _scope_names(rng: np.random.Generator, n: int) -> pa.Array:
    """'@word' or '@word-word', like the orgs and companies that own scopes."""
    words, cdf = _name_words()
    second = _where(rng.random(n) < 0.6, _pick(rng, words, n, cdf))
    return _join(pa.scalar("@"), _join(_pick(rng, words, n, cdf), second, sep="-"))


def _synthetic_packages(
    rng: np.random.Generator, n: int, taken: pa.Array, real_scopes: pa.Array
) -> pa.Array:
    """n new unique package names, about a third of them in new scopes."""
    if n == 0:
        return pa.array([], pa.string())
    # New scopes with Zipf-like sizes: a few big orgs, many with one or two packages.
    scope_count = max(1, n // 12)
    scopes, _ = _new_unique(
        lambda k: (_scope_names(rng, k), np.zeros(k, np.int64)), scope_count, real_scopes
    )

    def make(k: int) -> tuple[pa.Array, np.ndarray]:
        scoped = rng.random(k) < 0.33
        scope = scopes.take(pa.array(_power_law(rng, scope_count, 0.9, k)))
        return _join(_where(scoped, scope), _word_names(rng, k), sep="/"), np.zeros(k, np.int64)

    names, _ = _new_unique(make, n, taken)
    return names


def _scope_of(names: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Scope index per package (-1 when unscoped) and the scopes in sorted order."""
    scoped = pc.starts_with(names, "@")
    first = pc.list_element(pc.split_pattern(names, "/", max_splits=1), 0)
    encoded = pc.dictionary_encode(pc.if_else(scoped, first, _null_strings(len(names))))
    dictionary = encoded.dictionary
    order = pc.sort_indices(dictionary).to_numpy()
    remap = np.empty(len(order), np.int64)
    remap[order] = np.arange(len(order))
    codes = encoded.indices.fill_null(-1).to_numpy().astype(np.int64)
    scope = np.where(codes >= 0, remap[np.maximum(codes, 0)], -1)
    return scope, dictionary.take(pa.array(order))


def _versions(rng: np.random.Generator, real: np.ndarray) -> pa.Array:
    """Semver strings: real packages are further along than the fresh synthetic tail."""
    n = len(real)
    major = np.where(real, rng.geometric(0.25, n), rng.geometric(0.55, n)) - 1
    minor = np.minimum(rng.geometric(0.15, n) - 1, 60)
    patch = np.minimum(rng.geometric(0.2, n) - 1, 40)
    parts = [pc.cast(pa.array(part), pa.string()) for part in (major, minor, patch)]
    return _join(*parts, sep=".")


def make_packages(scale: Scale, rng: np.random.Generator) -> Packages:
    real_names, real_monthly = _real_packages()
    chosen = _choose_real(scale, rng)
    synthetic = max(0, scale.packages - len(chosen))
    real_scopes = pc.unique(pc.list_element(pc.split_pattern(real_names, "/", max_splits=1), 0))
    new_names = _synthetic_packages(rng, synthetic, real_names, real_scopes)
    names = pa.concat_arrays([real_names.take(pa.array(chosen)), new_names])
    monthly = np.concatenate(
        [real_monthly[chosen], _synthetic_monthly(rng, synthetic, int(real_monthly.min()))]
    )
    real = np.arange(len(names)) < len(chosen)
    order = pc.sort_indices(names).to_numpy()
    names, monthly, real = names.take(pa.array(order)), monthly[order], real[order]
    by_popularity = np.lexsort((np.arange(len(names)), -monthly))
    rank = np.empty(len(names), np.int64)
    rank[by_popularity] = np.arange(len(names))
    scope, scopes = _scope_of(names)
    return Packages(names, monthly, real, rank, scope, scopes, _versions(rng, real))


# --- dependencies ----------------------------------------------------------------------


@dataclass
class Edges:
    """Dependencies of one kind, sorted by package then target."""

    package: np.ndarray
    target_index: np.ndarray  # the package drawn as target
    target: pa.Array  # its name, or for a few the name of a package that does not exist
    range: pa.Array
    missing: int

    def __len__(self) -> int:
        return len(self.package)


def _dependency_counts(rng: np.random.Generator, n: int, mean: float, cap: int) -> np.ndarray:
    """Negative binomial: a quarter of packages have none, a few have a hundred."""
    shape = 0.8
    counts = rng.negative_binomial(shape, shape / (shape + mean), n)
    return np.minimum(counts, cap)


def _ranges(rng: np.random.Generator, versions: np.ndarray | pa.Array) -> pa.Array:
    """'^1.2.3' mostly, then '~1.2.3', exact, '>=1.2.3' and '*'."""
    n = len(versions)
    kind = rng.choice(5, n, p=[0.72, 0.12, 0.06, 0.05, 0.05])
    prefix = _labels(["^", "~", "", ">=", ""], kind)
    ranged = _join(prefix, versions)
    return pc.if_else(pa.array(kind == 4), pa.scalar("*"), ranged)


def _missing_names(rng: np.random.Generator, n: int) -> pa.Array:
    """Names of packages that were unpublished or never existed: not in the registry.

    Joined with '_', which synthetic names never contain, so only the real list can
    collide: checking 4 million registry names per call would cost seconds.
    """
    words, cdf = _name_words()

    def make(k: int) -> tuple[pa.Array, np.ndarray]:
        name = _join(_pick(rng, words, k, cdf), _pick(rng, words, k, cdf), sep="_")
        return name, np.zeros(k, np.int64)

    return _new_unique(make, n, _real_packages()[0])[0]


def make_edges(
    rng: np.random.Generator,
    pk: Packages,
    counts: np.ndarray,
    by_rank: np.ndarray,
    skew: float,
    exclude: Edges | None = None,
    missing_share: float = 0.001,
) -> Edges:
    """Dependencies with targets drawn by popularity, without self or duplicate pairs.

    ``by_rank`` lists the packages most downloaded first; a target of rank r is drawn
    with weight (r + 1) ** -skew.
    """
    n = len(pk)
    package = np.repeat(np.arange(n, dtype=np.int64), counts)
    target = by_rank[_power_law(rng, n, skew, len(package))]
    keep = package != target
    package, target = _unique_pairs(package[keep], target[keep], n)
    if exclude is not None and len(exclude):
        # A devDependency that is already a dependency would be listed twice by no one.
        fresh = ~_in_sorted(package * n + target, exclude.package * n + exclude.target_index)
        package, target = package[fresh], target[fresh]
    names = pk.names.take(pa.array(target))
    # An exact count (at least one) so even a tiny sample has a dangling dependency.
    missing = np.zeros(len(package), bool)
    if missing_share > 0 and len(package):
        missing[rng.choice(len(package), max(1, round(missing_share * len(package))), False)] = True
    if missing.any():
        ghosts = _missing_names(rng, int(missing.sum()))
        # replace_with_mask fills the masked slots in order from the replacements.
        names = pc.replace_with_mask(names, pa.array(missing), ghosts)
    ranges = _ranges(rng, pk.versions.take(pa.array(target)))
    return Edges(package, target, names, ranges, int(missing.sum()))


def make_dependencies(
    rng: np.random.Generator, pk: Packages, scale: Scale
) -> tuple[Edges, Edges, Edges]:
    n = len(pk)
    cap = min(n - 1, 250)
    # Rank, not raw downloads: the real list's top is flat (hundreds of packages near a
    # billion a month), so downloads ** alpha cannot give npm's skew of dependents.
    by_rank = np.argsort(pk.rank)
    skew = scale.dependency_skew
    counts = _dependency_counts(rng, n, scale.mean_dependencies, cap)
    deps = make_edges(rng, pk, counts, by_rank, skew)
    counts = _dependency_counts(rng, n, scale.mean_dependencies, cap)
    dev = make_edges(rng, pk, counts, by_rank, skew, exclude=deps)
    # Peer dependencies are rare and name frameworks: a steeper pull to the very top.
    counts = np.minimum(np.where(rng.random(n) < 0.03, rng.integers(1, 3, n), 0), cap)
    peer = make_edges(rng, pk, counts, by_rank, 1.3, missing_share=0.0)
    return deps, dev, peer


# --- maintainers and accounts ----------------------------------------------------------


@dataclass
class Maintainers:
    package: np.ndarray  # sorted by package, then account
    account: np.ndarray
    team_start: np.ndarray  # per scope: the scope's maintainer team in team_account
    team_size: np.ndarray
    team_account: np.ndarray


def _maintainer_draw(rng: np.random.Generator, accounts: int, n: int) -> np.ndarray:
    """Who maintains: a power law over 60% of accounts, so a few maintain thousands."""
    return _power_law(rng, max(1, round(accounts * 0.6)), 0.6, n)


def _scope_teams(
    rng: np.random.Generator, pk: Packages, account_of_rank: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each scope's maintainer team: bigger scopes have bigger teams."""
    scopes = len(pk.scopes)
    per_scope = np.bincount(pk.scope[pk.scope >= 0], minlength=scopes)
    wanted = np.minimum(1 + rng.poisson(0.3 + 0.6 * np.log2(1 + per_scope)), 40)
    scope = np.repeat(np.arange(scopes, dtype=np.int64), wanted)
    member = account_of_rank[_maintainer_draw(rng, len(account_of_rank), len(scope))]
    # Keep the draw order inside each team (its first member is the org's first owner).
    first = _first_positions(scope * len(account_of_rank) + member)
    scope, member = scope[first], member[first]
    size = np.bincount(scope, minlength=scopes)
    return _offsets(scope, scopes)[:-1], size, member


def make_maintainers(rng: np.random.Generator, pk: Packages, accounts: int) -> Maintainers:
    n = len(pk)
    # Spread the prolific accounts over the id range rather than giving them ids 1, 2, 3.
    account_of_rank = rng.permutation(accounts).astype(np.int64)
    wanted = rng.choice(np.arange(1, 6), n, p=[0.72, 0.16, 0.07, 0.03, 0.02])
    start, size, team = _scope_teams(rng, pk, account_of_rank)
    scoped = pk.scope >= 0
    # A scoped package is maintained by members of its scope's team.
    wanted = np.where(scoped, np.minimum(wanted, size[np.maximum(pk.scope, 0)]), wanted)
    package = np.repeat(np.arange(n, dtype=np.int64), wanted)
    account = account_of_rank[_maintainer_draw(rng, accounts, len(package))]
    slot = np.arange(len(package)) - np.repeat(_offsets(package, n)[:-1], wanted)
    in_scope = np.flatnonzero(pk.scope[package] >= 0)
    if len(in_scope):
        # Consecutive members of the team from a random start: distinct by construction.
        scope = pk.scope[package[in_scope]]
        offset = rng.integers(0, 1 << 30, n)[package[in_scope]]
        account[in_scope] = team[start[scope] + (offset + slot[in_scope]) % size[scope]]
    # Dropping duplicate draws never empties a package: its first draw always stays.
    package, account = _unique_pairs(package, account, accounts)
    return Maintainers(package, account, start, size, team)


def _word_list(words: str) -> tuple[str, ...]:
    return tuple(words.split())


# Handles built like people build them: janedoe, jane-doe, jane.doe, jane42, cosmic-fox7.
FIRST_NAMES = _word_list("""
aaron abby adam adrian ahmed aisha alex alice amir ana andre andrea anna ben
bruno carla carlos chen chloe chris clara daniel david diego dmitri elena eli emma eric eva
felix fiona gabriel george grace hana hugo ian igor ines ivan jack jade james jan jana jason
jin joao john jonas jose juan julia kai karim kate kenji kevin kim lars laura leo lena liam
lin lucas lucia luis maya marco maria mark marta max mei mia michael mike nadia nina noah
olga omar oscar pablo paul pedro peter priya rafael rahul raj ravi rosa ryan sam sara sean
sofia stefan sven tara tom tomas uma victor wei yuki yusuf zoe""")
LAST_NAMES = _word_list("""
abe adams ali alves andersen berg brown bui chen cohen costa cruz das diaz
dubois evans fischer garcia gomez gupta hall hansen ito jensen jones kim koch kumar lee lopez
martin meyer miller moreau muller nakamura nguyen novak olsen park patel perez petrov rossi
santos sato schmidt silva singh smith tanaka taylor wagner wang weber white wilson wong yamada
young zhang""")
ADJECTIVES = _word_list("""
happy lazy brave quiet rapid clever cosmic dark bright tiny mega super hyper
ultra little big red blue green silver golden crazy wild smart""")
NOUNS = _word_list("""
byte code coder dev pixel stack node cloud data script hack ninja wizard panda fox
owl wolf tiger otter koala falcon raven cat dog bear lambda vector kernel quark photon rocket
comet nova orbit echo delta sigma omega zen lab forge works studio""")
EMAIL_DOMAINS = ("example.com", "example.org", "example.net")  # RFC 2606: never real mail


def _handles(rng: np.random.Generator, n: int) -> pa.Array:
    first = _pick(rng, pa.array(FIRST_NAMES), n)
    last = _pick(rng, pa.array(LAST_NAMES), n)
    adjective = _pick(rng, pa.array(ADJECTIVES), n)
    noun = _pick(rng, pa.array(NOUNS), n)
    number = _digits(rng, n)
    pattern = rng.choice(7, n, p=[0.16, 0.1, 0.08, 0.22, 0.14, 0.15, 0.15])
    sep = _labels(["", "-", ".", "", "", "-", ""], pattern)
    head = pc.if_else(pa.array(pattern >= 5), adjective, first)
    tail = pc.if_else(pa.array(pattern >= 5), noun, _where(pattern != 3, last))
    with_number = (pattern == 3) | (pattern == 4) | ((pattern >= 5) & (rng.random(n) < 0.5))
    return _join(head, sep, tail, _where(with_number, number))


@dataclass
class Accounts:
    username: pa.Array
    email: pa.Array
    email_verified: np.ndarray
    created: np.ndarray  # µs
    last_login: np.ndarray  # µs; meaningless where never_logged_in
    never_logged_in: np.ndarray
    maintains: np.ndarray  # number of packages
    top_monthly: np.ndarray  # downloads of the most-downloaded package maintained

    def __len__(self) -> int:
        return len(self.username)


def make_accounts(
    rng: np.random.Generator, n: int, pk: Packages, mt: Maintainers, end_us: int
) -> Accounts:
    orgs = pc.utf8_slice_codeunits(pk.scopes, 1)
    username, _ = _new_unique(lambda k: (_handles(rng, k), np.zeros(k, np.int64)), n, orgs)
    domain = _labels(EMAIL_DOMAINS, rng.integers(0, len(EMAIL_DOMAINS), n))
    email = _join(username, domain, sep="@")
    maintains = np.bincount(mt.account, minlength=n)
    top_monthly = np.zeros(n, np.int64)
    np.maximum.at(top_monthly, mt.account, pk.monthly[mt.package])
    # npm grew fast: most accounts are recent, but maintainers of big packages are old.
    popular = top_monthly >= POPULAR_MONTHLY
    start = _us(REGISTRY_START)
    created = _between(rng, start, end_us - DAY_US, power=0.7, size=n)
    old = _between(rng, start, end_us - 365 * DAY_US, power=1.5, size=n)
    created = np.where(popular, old, created)
    return Accounts(
        username=username,
        email=email,
        email_verified=rng.random(n) < 0.93,
        created=created,
        last_login=_last_logins(rng, created, end_us),
        never_logged_in=rng.random(n) < 0.07,
        maintains=maintains,
        top_monthly=top_monthly,
    )


def _last_logins(rng: np.random.Generator, created: np.ndarray, end_us: int) -> np.ndarray:
    """Half the accounts logged in within 90 days of the end, most of those recently."""
    n = len(created)
    recent = end_us - (90 * DAY_US * rng.random(n) ** 2).astype(np.int64)
    older = _between(rng, created, end_us - 90 * DAY_US)
    last = np.where(rng.random(n) < 0.5, recent, older)
    return np.clip(-(-last // US) * US, created + 60 * US, end_us)


# --- 2FA, sessions, tokens -------------------------------------------------------------


@dataclass
class Factors:
    account: np.ndarray
    kind: np.ndarray  # 0 totp, 1 webauthn
    created: np.ndarray
    removed: np.ndarray
    is_removed: np.ndarray
    active_kinds: np.ndarray  # per account: bit 1 totp, bit 2 webauthn

    def __len__(self) -> int:
        return len(self.account)


def _weighted_sample(rng: np.random.Generator, weights: np.ndarray, k: int) -> np.ndarray:
    """k distinct indices, each drawn with probability proportional to its weight.

    Efraimidis-Spirakis: the k largest log(u) / w. Exactly k, so the 2FA share is what
    was asked for even in a tiny sample.
    """
    keys = np.log(rng.random(len(weights))) / weights
    return np.sort(np.argpartition(-keys, k - 1)[:k]) if k else np.zeros(0, np.int64)


def make_factors(rng: np.random.Generator, acc: Accounts, end_us: int) -> Factors:
    n = len(acc)
    weight = np.ones(n)
    weight[acc.maintains > 0] = 1.3
    # Maintainers of big packages were asked to turn 2FA on long before it was required.
    weight[acc.top_monthly >= POPULAR_MONTHLY] = 3.5
    weight[acc.never_logged_in] = 0.4
    enabled = _weighted_sample(rng, weight, round(n * 0.125))
    primary = (rng.random(len(enabled)) < 0.25).astype(np.int64)
    both = enabled[rng.random(len(enabled)) < 0.12]
    other = 1 - primary[np.searchsorted(enabled, both)]
    active_account = np.concatenate([enabled, both])
    active_kind = np.concatenate([primary, other])
    # Some gave up on 2FA (factor removed, none left); some replaced an old device.
    has_none = np.ones(n, bool)
    has_none[enabled] = False
    gave_up = np.flatnonzero(has_none & (rng.random(n) < 0.04))
    replaced = enabled[rng.random(len(enabled)) < 0.05]
    old_account = np.concatenate([gave_up, replaced])
    old_kind = (rng.random(len(old_account)) < 0.2).astype(np.int64)

    account = np.concatenate([active_account, old_account])
    kind = np.concatenate([active_kind, old_kind])
    is_removed = np.arange(len(account)) >= len(active_account)
    launch = np.where(kind == 0, _us(TOTP_LAUNCH), _us(WEBAUTHN_LAUNCH))
    lo = np.minimum(np.maximum(acc.created[account], launch), end_us - DAY_US)
    created = _between(rng, lo, end_us)
    # A replaced factor was removed before its successor was added.
    first_active = np.full(n, end_us)
    np.minimum.at(first_active, active_account, created[: len(active_account)])
    until = np.where(is_removed, first_active[account], end_us)
    created = np.where(is_removed, _between(rng, np.minimum(lo, until), until), created)
    removed = _between(rng, created, until)
    order = np.lexsort((created, account))
    active_kinds = np.zeros(n, np.int64)
    np.bitwise_or.at(active_kinds, active_account, 1 << active_kind)
    return Factors(
        account[order],
        kind[order],
        created[order],
        removed[order],
        is_removed[order],
        active_kinds,
    )


@dataclass
class Sessions:
    account: np.ndarray
    created: np.ndarray
    last_seen: np.ndarray
    revoked: np.ndarray
    is_revoked: np.ndarray
    reason: np.ndarray

    def __len__(self) -> int:
        return len(self.account)


SESSION_REVOKE_REASONS = ("logged out", "password changed", "signed out everywhere")


def make_sessions(rng: np.random.Generator, acc: Accounts, end_us: int) -> Sessions:
    n = len(acc)
    age = end_us - acc.last_login
    recent = ~acc.never_logged_in & (age <= 30 * DAY_US)
    lately = ~acc.never_logged_in & (age > 30 * DAY_US) & (age <= 90 * DAY_US)
    count = np.zeros(n, np.int64)
    count[recent] = rng.choice(np.arange(1, 5), int(recent.sum()), p=[0.5, 0.3, 0.13, 0.07])
    count[lately] = (rng.random(int(lately.sum())) < 0.3).astype(np.int64)
    account = np.repeat(np.arange(n, dtype=np.int64), count)
    login = acc.last_login[account]
    # Sessions start up to a month before the last login and were used until about then.
    created = _between(rng, np.maximum(login - 30 * DAY_US, acc.created[account]), login)
    last_seen = _between(rng, created, np.minimum(login + 2 * DAY_US, end_us), power=0.3)
    revoke_share = np.where(end_us - login > 30 * DAY_US, 0.4, 0.1)
    is_revoked = rng.random(len(account)) < revoke_share
    revoked = _between(rng, last_seen, end_us, power=0.5)
    reason = rng.integers(0, len(SESSION_REVOKE_REASONS), len(account))
    order = np.lexsort((created, account))
    return Sessions(
        account[order],
        created[order],
        last_seen[order],
        revoked[order],
        is_revoked[order],
        reason[order],
    )


TOKEN_KINDS = ("automation", "publish", "read_only", "granular")
TOKEN_NAMES = (
    (
        "github-actions",
        "ci-release",
        "semantic-release",
        "circleci",
        "gitlab-ci",
        "release-bot",
        "changesets",
        "azure-pipelines",
        "jenkins",
        "travis-ci",
    ),
    ("laptop", "publish", "release", "workstation", "manual-release", "local-publish"),
    ("ci-install", "renovate", "dependabot", "docker-build", "mirror", "read-only"),
)


@dataclass
class Tokens:
    account: np.ndarray
    kind: np.ndarray
    name: pa.Array
    created: np.ndarray
    last_used: np.ndarray
    never_used: np.ndarray
    revoked: np.ndarray
    is_revoked: np.ndarray
    # Filled by add_granular_tokens.
    writes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    bypass_2fa: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    expires: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    never_expires: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __len__(self) -> int:
        return len(self.account)


def make_tokens(rng: np.random.Generator, acc: Accounts, end_us: int) -> Tokens:
    n = len(acc)
    maintainer = acc.maintains > 0
    has = np.where(maintainer, rng.random(n) < 0.45, rng.random(n) < 0.05)
    # Prolific maintainers publish from more places.
    extra = np.minimum(rng.geometric(0.55, n) - 1 + (acc.maintains > 20), 6)
    count = np.where(has, 1 + np.where(maintainer, extra, 0), 0)
    account = np.repeat(np.arange(n, dtype=np.int64), count)
    created = _between(rng, acc.created[account], end_us, power=0.6)
    legacy = created < _us(NAMED_TOKENS_SINCE)
    size = len(account)
    kind = np.where(
        legacy,
        np.where(rng.random(size) < 0.7, 1, 2),
        rng.choice(3, size, p=[0.5, 0.3, 0.2]),
    )
    # One flat list of names; each kind picks from its own stretch of it.
    flat = [name for options in TOKEN_NAMES for name in options]
    first = np.cumsum([0] + [len(options) for options in TOKEN_NAMES])
    choice = first[kind] + rng.integers(0, 1 << 30, size) % np.diff(first)[kind]
    names = _labels(flat, choice, null=legacy)
    is_revoked = rng.random(size) < 0.15
    revoked = _between(rng, created, end_us, power=0.7)
    never_used = rng.random(size) < 0.12
    used_until = np.where(is_revoked, revoked, end_us)
    # A token in use is mostly used lately (CI runs every day), so lean late.
    last_used = _between(rng, created, used_until, power=0.25)
    order = np.lexsort((created, account))
    return Tokens(
        account[order],
        kind[order],
        names.take(pa.array(order)),
        created[order],
        last_used[order],
        never_used[order],
        revoked[order],
        is_revoked[order],
    )


# npm's granular access tokens (2022-12-06): opt-in at first, the only kind that can be
# created from 2025-11-05. From 2025-10-13 a new write token lasts 7 days by default and
# 90 at most (docs/data-contracts.md, the research behind the plans).
GRANULAR_SINCE = datetime(2022, 12, 6)
SHORT_WRITE_TOKENS_SINCE = datetime(2025, 10, 13)
CLASSIC_CREATION_ENDS = datetime(2025, 11, 5)
GRANULAR_DAYS = np.array([7, 30, 90, 365])


def add_granular_tokens(rng: np.random.Generator, tok: Tokens) -> None:
    """Turn some tokens made since granular tokens exist into granular ones, and give
    every token its capabilities: a share growing from a tenth at launch to about half
    by late 2025 (most CI publishing still on classic tokens when npm's 2025 campaign
    began), all of them once classic tokens can no longer be made. A granular token
    publishes in about two cases of three; a publishing one bypasses 2FA in about half
    (CI); it expires after 7 to 365 days, a write token made since 2025-10-13 after 7
    (the default) or 90 days (the most). Classic kinds keep what their kind can do."""
    size = len(tok)
    since = _us(GRANULAR_SINCE)
    years = np.clip((tok.created - since) / (365 * DAY_US), 0, None)
    share = np.where(
        tok.created >= _us(CLASSIC_CREATION_ENDS), 1.0, np.minimum(0.1 + 0.15 * years, 0.5)
    )
    granular = (tok.created >= since) & (rng.random(size) < share)
    writes = np.where(granular, rng.random(size) < 2 / 3, tok.kind < 2)
    bypass = np.where(granular, writes & (rng.random(size) < 0.5), tok.kind == 0)
    short = granular & writes & (tok.created >= _us(SHORT_WRITE_TOKENS_SINCE))
    days = np.where(
        short,
        np.where(rng.random(size) < 0.8, 7, 90),
        GRANULAR_DAYS[rng.integers(0, len(GRANULAR_DAYS), size)],
    )
    tok.kind = np.where(granular, len(TOKEN_KINDS) - 1, tok.kind)
    tok.writes = writes
    tok.bypass_2fa = bypass
    tok.expires = tok.created + days * DAY_US
    tok.never_expires = ~granular
    # A token is not used after it expired.
    tok.last_used = np.minimum(tok.last_used, np.where(granular, tok.expires, tok.last_used))


# --- orgs ------------------------------------------------------------------------------


@dataclass
class Orgs:
    created: np.ndarray  # per scope: org id = scope index + 1
    member_org: np.ndarray
    member_account: np.ndarray
    member_role: np.ndarray  # 0 owner, 1 admin, 2 developer
    member_joined: np.ndarray
    member_removed: np.ndarray
    member_is_removed: np.ndarray
    member_removed_reason: np.ndarray
    member_publishes: np.ndarray  # in the org's publishers team

    def __len__(self) -> int:
        return len(self.created)


ORG_ROLES = ("owner", "admin", "developer")
ORG_REMOVED_REASONS = ("left the organization", "removed by an owner")


def make_orgs(
    rng: np.random.Generator, pk: Packages, mt: Maintainers, acc: Accounts, end_us: int
) -> Orgs:
    scopes = len(pk.scopes)
    n = len(acc)
    launch = min(_us(ORGS_LAUNCH), end_us - 30 * DAY_US)
    created = _between(rng, launch, end_us - DAY_US, size=scopes)
    team_org = np.repeat(np.arange(scopes, dtype=np.int64), mt.team_size)
    first = np.zeros(len(team_org), bool)
    first[mt.team_start[mt.team_size > 0]] = True
    team_role = np.where(first, 0, rng.choice(3, len(team_org), p=[0.12, 0.2, 0.68]))
    # A few members who maintain nothing in the scope: designers, managers, new hires.
    extra_count = rng.poisson(0.5, scopes)
    extra_org = np.repeat(np.arange(scopes, dtype=np.int64), extra_count)
    extra_account = rng.integers(0, n, len(extra_org))
    extra_role = rng.choice(3, len(extra_org), p=[0.0, 0.15, 0.85])

    org = np.concatenate([team_org, extra_org])
    account = np.concatenate([mt.team_account, extra_account])
    role = np.concatenate([team_role, extra_role])
    publishes = np.concatenate([np.ones(len(team_org), bool), np.zeros(len(extra_org), bool)])
    keep_first = np.concatenate([first, np.zeros(len(extra_org), bool)])
    # Team members come first, so a duplicate extra is the one dropped.
    unique = _first_positions(org * n + account)
    unique = unique[np.argsort(org[unique], kind="stable")]  # member ids grouped by org
    org, account, role = org[unique], account[unique], role[unique]
    publishes, keep_first = publishes[unique], keep_first[unique]
    joined = _between(rng, np.maximum(created[org], acc.created[account]), end_us, power=1.5)
    # The first owner stays so every org keeps an owner.
    is_removed = ~keep_first & (rng.random(len(org)) < 0.03)
    removed = _between(rng, joined, end_us)
    reason = rng.integers(0, len(ORG_REMOVED_REASONS), len(org))
    return Orgs(created, org, account, role, joined, removed, is_removed, reason, publishes)


# --- login events ----------------------------------------------------------------------


def make_logins(
    rng: np.random.Generator, acc: Accounts, factors: Factors, window_start_us: int, end_us: int
) -> pa.Table:
    """Login events in the download window: the last one of each account is its last login."""
    active = ~acc.never_logged_in & (acc.last_login >= window_start_us)
    who = np.flatnonzero(active)
    count = 1 + rng.poisson(0.6, len(who))
    account = np.repeat(who, count)
    last = np.zeros(len(account), bool)
    last[np.cumsum(count) - 1] = True
    lo = np.maximum(window_start_us, acc.created[account])
    occurred = np.where(
        last, acc.last_login[account], _between(rng, lo, acc.last_login[account] - US)
    )
    bits = factors.active_kinds[account]
    webauthn = np.where(bits == 3, rng.random(len(account)) < 0.5, bits == 2)
    second = np.where(bits == 0, 0, np.where(webauthn, 3, 2))  # none, elv, totp, webauthn
    # Accounts without 2FA are sometimes challenged with an emailed code (ELV).
    second = np.where((bits == 0) & (rng.random(len(account)) < 0.02), 1, second)
    r = rng.random(len(account))
    outcome = np.where(
        second == 1, np.where(r < 0.2, 2, np.where(r < 0.25, 1, 0)), np.where(r < 0.04, 1, 0)
    )
    outcome = np.where(last, 0, outcome)  # the last login succeeded: that is what it records
    order = np.lexsort((account, occurred))
    return pa.table(
        {
            "occurred_at": pa.array(occurred[order], pa.timestamp("us", tz="UTC")),
            "username": acc.username.take(pa.array(account[order])),
            "second_factor": _labels(["none", "elv", "totp", "webauthn"], second[order]),
            "outcome": _labels(["success", "failed", "abandoned"], outcome[order]),
        }
    )


# Trusted publishing (an OIDC identity from CI, no token) on npm: 2025-07-31.
TRUSTED_PUBLISHING_SINCE = datetime(2025, 7, 31)
PUBLISH_VIA = ("token", "session", "trusted")
PUBLISH_FACTORS = ("none", "totp", "webauthn")


def make_publishes(
    rng: np.random.Generator,
    mt: Maintainers,
    pk: Packages,
    acc: Accounts,
    factors: Factors,
    tok: Tokens,
    window_start_us: int,
    end_us: int,
) -> pa.Table:
    """Publish events in the download window (landing/publishes/): each maintainer of a
    package publishes it about once a quarter. Three publishes in four of an account
    with a writing token go through one of its tokens, at a time that token was live;
    the rest from a session, or, once npm had it, by trusted publishing (a sixth). The
    second factor is the account's (WebAuthn when it has both, half the time), none
    through an automation token or one made to bypass 2FA, and none for trusted
    publishing."""
    days = max(1, (end_us - window_start_us) // DAY_US)
    count = rng.poisson(days / 90, len(mt.account))
    package = np.repeat(mt.package, count)
    account = np.repeat(mt.account, count)
    size = len(account)
    # Each account's writing tokens that were not revoked before the window, in a row.
    usable = tok.writes & (~tok.is_revoked | (tok.revoked > window_start_us))
    usable &= np.where(tok.never_expires, True, tok.expires > window_start_us)
    ids = np.flatnonzero(usable)  # tok is sorted by account
    per_account = np.bincount(tok.account[ids], minlength=len(acc))
    first = np.concatenate([[0], np.cumsum(per_account)[:-1]])
    held = per_account[account]
    use_token = (held > 0) & (rng.random(size) < 0.75)
    slot = first[account] + (rng.random(size) * held).astype(np.int64)
    # Where a token is used: which one, and the span it was live in the window.
    chosen = ids[slot[use_token]]
    live_from = np.maximum(window_start_us, tok.created[chosen])
    live_until = np.minimum.reduce(
        [
            np.full(len(chosen), end_us, np.int64),
            np.where(tok.is_revoked[chosen], tok.revoked[chosen], end_us),
            np.where(tok.never_expires[chosen], end_us, tok.expires[chosen]),
        ]
    )
    # A token not live at all in the window is not used: a session instead.
    live = live_until > live_from
    kind = np.full(size, -1, np.int64)  # -1: no token
    kind[use_token] = np.where(live, tok.kind[chosen], -1)
    bypass = np.zeros(size, bool)
    bypass[use_token] = live & tok.bypass_2fa[chosen]
    lo = np.maximum(window_start_us, acc.created[account])
    hi = np.full(size, end_us, np.int64)
    lo[use_token] = np.where(live, live_from, lo[use_token])
    hi[use_token] = np.where(live, live_until, end_us)
    use_token = kind >= 0
    occurred = _between(rng, lo, hi)
    trusted = ~use_token & (occurred >= _us(TRUSTED_PUBLISHING_SINCE)) & (rng.random(size) < 1 / 6)
    via = np.where(use_token, 0, np.where(trusted, 2, 1))
    bits = factors.active_kinds[account]
    webauthn = np.where(bits == 3, rng.random(size) < 0.5, bits == 2)
    factor = np.where(bits == 0, 0, np.where(webauthn, 2, 1))
    factor = np.where(bypass | trusted, 0, factor)
    order = np.lexsort((account, occurred))
    return pa.table(
        {
            "occurred_at": pa.array(occurred[order], pa.timestamp("us", tz="UTC")),
            "package": pk.names.take(pa.array(package[order])),
            "username": acc.username.take(pa.array(account[order])),
            "via": _labels(PUBLISH_VIA, via[order]),
            "token_kind": _labels(TOKEN_KINDS, np.maximum(kind[order], 0), null=kind[order] < 0),
            "second_factor": _labels(PUBLISH_FACTORS, factor[order]),
        }
    )


# --- daily downloads -------------------------------------------------------------------


def _block_counts(rng: np.random.Generator, monthly: np.ndarray, weekend: np.ndarray) -> np.ndarray:
    """(packages, blocks, 30) daily counts: each block sums exactly to the monthly total.

    Weekdays weigh 1, weekend days about 0.6, times mild noise; the rounding remainder
    goes one download each to the largest days, so counts stay integers.
    """
    n = len(monthly)
    blocks = weekend.shape[0] // 30
    factor = rng.uniform(0.55, 0.65, (n, 1)).astype(np.float64)
    w = np.where(weekend[None, :], factor, 1.0) * rng.lognormal(0.0, 0.08, (n, len(weekend)))
    w = w.reshape(n, blocks, 30)
    exact = w * (monthly[:, None, None] / w.sum(axis=2, keepdims=True))
    counts = np.floor(exact).astype(np.int64)
    remainder = monthly[:, None] - counts.sum(axis=2)
    rank = np.argsort(np.argsort(-w, axis=2, kind="stable"), axis=2, kind="stable")
    counts += rank < remainder[:, :, None]
    counts -= rank < -remainder[:, :, None]  # float rounding the other way: never > 1
    return counts


def daily_downloads(
    rng: np.random.Generator, monthly: np.ndarray, end: date, days: int, chunk: int = 200_000
) -> tuple[list[date], np.ndarray]:
    """The days and a (days, packages) matrix of counts ending at ``end``.

    Whole 30-day blocks are drawn ending at ``end`` and the last ``days`` days kept, so
    every full block inside the window sums to the package's monthly total.
    """
    blocks = math.ceil(days / 30)
    span = [end - timedelta(days=blocks * 30 - 1 - k) for k in range(blocks * 30)]
    weekend = np.array([d.weekday() >= 5 for d in span])
    out = np.empty((days, len(monthly)), np.int64)
    for lo in range(0, len(monthly), chunk):
        counts = _block_counts(rng, monthly[lo : lo + chunk], weekend)
        out[:, lo : lo + chunk] = counts.reshape(counts.shape[0], -1)[:, -days:].T
    return span[-days:], out


# --- registry tables -------------------------------------------------------------------


def _ids(n: int) -> pa.Array:
    return pa.array(np.arange(1, n + 1, dtype=np.int64))


def _nullable_ts(n: int) -> pa.Array:
    return pa.nulls(n, pa.timestamp("us"))


def registry_tables(
    acc: Accounts, fac: Factors, ses: Sessions, tok: Tokens, org: Orgs, pk: Packages
) -> list[tuple[str, pa.Table]]:
    """The registry's rows as Arrow tables, named and typed as models.py says."""
    n = len(acc)
    accounts = pa.table(
        {
            "id": _ids(n),
            "username": acc.username,
            "email": acc.email,
            "email_verified": pa.array(acc.email_verified),
            "created_at": _ts(acc.created),
            "last_login_at": _ts(acc.last_login, acc.never_logged_in),
            "elv_enrolled_at": _nullable_ts(n),
            "tfa_required_at": _nullable_ts(n),
        }
    )
    tfa = pa.table(
        {
            "id": _ids(len(fac)),
            "account_id": pa.array(fac.account + 1),
            "kind": _labels(["totp", "webauthn"], fac.kind),
            "created_at": _ts(fac.created),
            "removed_at": _ts(fac.removed, ~fac.is_removed),
        }
    )
    sessions = pa.table(
        {
            "id": _ids(len(ses)),
            "account_id": pa.array(ses.account + 1),
            "created_at": _ts(ses.created),
            "last_seen_at": _ts(ses.last_seen),
            "revoked_at": _ts(ses.revoked, ~ses.is_revoked),
            "revoked_reason": _labels(SESSION_REVOKE_REASONS, ses.reason, null=~ses.is_revoked),
        }
    )
    tokens = pa.table(
        {
            "id": _ids(len(tok)),
            "account_id": pa.array(tok.account + 1),
            "name": tok.name,
            "kind": _labels(TOKEN_KINDS, tok.kind),
            "writes": pa.array(tok.writes),
            "bypass_2fa": pa.array(tok.bypass_2fa),
            "created_at": _ts(tok.created),
            "expires_at": _ts(tok.expires, tok.never_expires),
            "last_used_at": _ts(tok.last_used, tok.never_used),
            "revoked_at": _ts(tok.revoked, ~tok.is_revoked),
        }
    )
    return [
        ("accounts", accounts),
        ("tfa_factors", tfa),
        ("web_sessions", sessions),
        ("tokens", tokens),
        *_org_tables(org, pk, n),
    ]


def _org_tables(org: Orgs, pk: Packages, accounts: int) -> list[tuple[str, pa.Table]]:
    scopes = len(org)
    orgs = pa.table(
        {
            "id": _ids(scopes),
            "name": pc.utf8_slice_codeunits(pk.scopes, 1),
            "created_at": _ts(org.created),
            "tfa_enforced_at": _nullable_ts(scopes),
        }
    )
    members = pa.table(
        {
            "id": _ids(len(org.member_org)),
            "org_id": pa.array(org.member_org + 1),
            "account_id": pa.array(org.member_account + 1),
            "role": _labels(ORG_ROLES, org.member_role),
            "joined_at": _ts(org.member_joined),
            "removed_at": _ts(org.member_removed, ~org.member_is_removed),
            "removed_reason": _labels(
                ORG_REMOVED_REASONS, org.member_removed_reason, null=~org.member_is_removed
            ),
        }
    )
    # Two teams per org: developers read everything, publishers may publish it.
    team_org = np.repeat(np.arange(scopes, dtype=np.int64), 2)
    teams = pa.table(
        {
            "id": _ids(2 * scopes),
            "org_id": pa.array(team_org + 1),
            "name": _labels(["developers", "publishers"], np.tile([0, 1], scopes)),
            "created_at": _ts(org.created[team_org] + 3600 * US),
        }
    )
    live = ~org.member_is_removed
    dev_team = 2 * org.member_org[live] + 1
    pub = live & (org.member_publishes | (org.member_role < 2))
    team_id = np.concatenate([dev_team, 2 * org.member_org[pub] + 2])
    team_account = np.concatenate([org.member_account[live], org.member_account[pub]])
    team_id, team_account = _unique_pairs(team_id, team_account, accounts)
    team_members = pa.table(
        {"team_id": pa.array(team_id), "account_id": pa.array(team_account + 1)}
    )
    scoped = np.flatnonzero(pk.scope >= 0)
    package_team = np.concatenate([2 * pk.scope[scoped] + 1, 2 * pk.scope[scoped] + 2])
    package_index = np.concatenate([scoped, scoped])
    permission = np.repeat([0, 1], len(scoped))
    order = np.lexsort((package_index, package_team))
    team_packages = pa.table(
        {
            "team_id": pa.array(package_team[order]),
            "package_name": pk.names.take(pa.array(package_index[order])),
            "permission": _labels(["read", "write"], permission[order]),
        }
    )
    return [
        ("orgs", orgs),
        ("org_members", members),
        ("teams", teams),
        ("team_members", team_members),
        ("team_packages", team_packages),
    ]


# --- landing files ---------------------------------------------------------------------


def _map(package: np.ndarray, keys: pa.Array, values: pa.Array, n: int) -> pa.Array:
    """One map per package (empty when it has none): JSON writes {} rather than null."""
    offsets = pa.array(_offsets(package, n).astype(np.int32))
    return pa.MapArray.from_arrays(offsets, keys, values)


def manifests_table(
    pk: Packages, deps: Edges, dev: Edges, peer: Edges, mt: Maintainers, acc: Accounts
) -> pa.Table:
    n = len(pk)
    maintainers = pa.ListArray.from_arrays(
        pa.array(_offsets(mt.package, n).astype(np.int32)),
        acc.username.take(pa.array(mt.account)),
    )
    return pa.table(
        {
            "name": pk.names,
            "version": pk.versions,
            "dependencies": _map(deps.package, deps.target, deps.range, n),
            "devDependencies": _map(dev.package, dev.target, dev.range, n),
            "peerDependencies": _map(peer.package, peer.target, peer.range, n),
            "maintainers": maintainers,
        }
    )


def _write_jsonl(table: pa.Table, path: Path) -> None:
    import duckdb

    with duckdb.connect() as con, written_in_place(path) as temporary:
        con.register("manifests", table)
        target = duckdb_path(temporary).replace("'", "''")
        # DuckDB writes maps as JSON objects and keeps the column names as they are.
        con.execute(f"COPY manifests TO '{target}' (FORMAT json)")


def _write_parquet(table: pa.Table, path: Path) -> None:
    with written_in_place(path) as temporary:
        pq.write_table(table, temporary, compression="zstd")


def write_downloads(
    folder: Path,
    names: pa.Array,
    days: Sequence[date],
    counts: np.ndarray,
    mixed: bool,
    progress: Callable[[int], None],
) -> tuple[list[Path], int]:
    """One file per day. Mixed: the older half as CSV, the newer half as Parquet.

    A package without downloads on a day has no row that day, as in npm's dumps.
    """
    make_folder(folder)
    csv_days = len(days) // 2 if mixed else 0
    files: list[Path] = []
    rows = 0
    for i, day in enumerate(days):
        has = counts[i] > 0
        table = pa.table(
            {
                "package": names.filter(pa.array(has)),
                "day": pa.array(np.full(int(has.sum()), np.datetime64(day, "D")), pa.date32()),
                "downloads": pa.array(counts[i][has]),
            }
        )
        if i < csv_days:
            path = folder / f"downloads-{day.isoformat()}.csv"
            with written_in_place(path) as temporary:
                pacsv.write_csv(table, temporary)
        else:
            path = folder / f"downloads-{day.isoformat()}.parquet"
            _write_parquet(table, path)
        files.append(path)
        rows += table.num_rows
        progress(i + 1)
    return files, rows


def write_api_files(
    folder: Path,
    pk: Packages,
    days: Sequence[date],
    counts: np.ndarray,
    top: int = 5,
    span: int = 7,
) -> list[Path]:
    """The downloads API's range format for the top packages' last week.

    The same counts as the daily files: loading both exercises duplicate skipping.
    """
    files = []
    last = list(range(max(0, len(days) - span), len(days)))
    for package in np.argsort(pk.rank)[:top]:
        name = pk.names[int(package)].as_py()
        body = {
            "package": name,
            "start": days[last[0]].isoformat(),
            "end": days[last[-1]].isoformat(),
            "downloads": [
                {"day": days[i].isoformat(), "downloads": int(counts[i, package])} for i in last
            ],
        }
        path = folder / f"api-{name.replace('/', '__')}.json"
        with written_in_place(path) as temporary:
            temporary.write_text(json.dumps(body) + "\n", encoding="utf-8")
        files.append(path)
    return files


# --- the entry point -------------------------------------------------------------------


def _resolve_scale(scale: str | Scale) -> Scale:
    if isinstance(scale, Scale):
        return scale
    if scale not in SCALES:
        raise BadInput(None, None, f"unknown scale {quoted(scale)}; one of {', '.join(SCALES)}")
    return SCALES[scale]


REGISTRY_START = date(2010, 1, 1)


def _end_instant(end: date) -> int:
    """The last whole second of ``end`` (or now, when end is today): nothing in the future."""
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    if end > now.date():
        raise BadInput(None, None, f"end {end.isoformat()} is in the future")
    if end < date(2012, 1, 1):
        raise BadInput(
            None,
            None,
            f"end must be in 2012 or later: the registry starts in {REGISTRY_START.year}",
        )
    return min(_us(end + timedelta(days=1)) - US, _us(now))


def _landing_files(landing_dir: Path) -> list[Path]:
    if not landing_dir.exists():
        return []
    return sorted(p for p in landing_dir.rglob("*") if p.is_file())


@dataclass(frozen=True)
class RegistryContents:
    """What a registry holds, read before anything is changed: what replacing it loses."""

    url: str  # the password hidden
    name: str  # what --confirm must be to replace it (confirm_name)
    is_sample: bool
    has_rows: bool
    accounts: int
    emails: int
    runs: int
    # False for a sample whose `rollout sample` run stopped (or failed) before its last
    # landing file was written: its registry may be whole, its landing folder is not.
    complete: bool = True
    # The `rollout sample` command that wrote it (its mark's note): run with --replace,
    # it writes the same sample whole. Empty for a registry it did not make.
    made_by: str = ""

    def describe(self) -> str:
        kind = "a sample registry" if self.is_sample else "a registry `rollout sample` did not make"
        if self.is_sample and not self.complete:
            kind = (
                "an unfinished sample registry (the `rollout sample` run that wrote it "
                "stopped before its landing files were all written: an ingest would load "
                "only part of the sample)"
            )
        return (
            f"{self.url} holds {kind}: {counted(self.accounts, 'account')}, "
            f"{counted(self.emails, 'email')} and {counted(self.runs, 'run')} would be lost"
        )


def confirm_name(registry: Registry) -> str:
    """The name to type back to replace a registry: the SQLite file's name, or the
    PostgreSQL database's, with the schema when the URL sets a search_path."""
    url = normalize_url(registry.url)
    if url.get_backend_name() == "sqlite":
        return Path(url.database or ":memory:").name
    options = url.query.get("options", "")
    if isinstance(options, tuple):
        options = " ".join(options)
    schema = re.search(r"-c\s*search_path\s*=\s*([^\s,]+)", options)
    return f"{url.database}/{schema.group(1)}" if schema else str(url.database)


def registry_contents(registry: Registry) -> RegistryContents:
    """Read what the registry holds, changing nothing (not even its schema).

    Through an engine of its own, disposed of at once: ``registry.engine`` refuses a
    database at another schema (or none), which is what a sample may replace."""
    engine = make_engine(registry.url)
    try:
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())

            def count(table: str) -> int:
                if table not in tables:
                    return 0
                return connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()

            has_rows = any(
                connection.execute(text(f"SELECT 1 FROM {table} LIMIT 1")).first() is not None
                for table in (*REGISTRY_TABLES, *LEDGER_TABLES)
                if table in tables
            )
            mark = (
                connection.execute(
                    text("SELECT note FROM registry_marks WHERE kind = 'sample'")
                ).first()
                if "registry_marks" in tables
                else None
            )
            is_sample = mark is not None
            return RegistryContents(
                url=registry_url_shown(engine.url),
                name=confirm_name(registry),
                is_sample=is_sample,
                has_rows=has_rows,
                accounts=count("accounts"),
                emails=count("notifications"),
                runs=count("plan_runs"),
                complete=mark is None or not str(mark[0]).endswith(UNFINISHED),
                made_by=str(mark[0] or "").removesuffix(UNFINISHED) if mark else "",
            )
    finally:
        engine.dispose()


def check_replace(contents: RegistryContents, replace: bool, confirm: str | None) -> None:
    """Refuse (GuardRefused, nothing changed) to fill a registry that has rows, unless it
    is a sample, ``replace`` is asked for and its name is typed back."""
    if not contents.has_rows:
        return  # nothing to lose: an empty database is filled without asking
    if not contents.is_sample:
        raise GuardRefused(
            f"refusing to replace it: {contents.describe()}. Nothing was changed. To "
            "rehearse, point ROLLOUT_HOME and ROLLOUT_REGISTRY_URL at a scratch copy (a "
            "scratch SQLite file that is not a sample: delete it yourself)."
        )
    if not replace:
        raise GuardRefused(
            f"{contents.describe()}. Nothing was changed; to replace it: "
            f"--replace --confirm {shell_word(contents.name)}"
        )
    if confirm != contents.name:
        raise GuardRefused(
            f"type the database's name back to replace it: --confirm {shell_word(contents.name)} "
            f"({contents.describe()}). Nothing was changed."
        )


# --- the locations a sample owns -------------------------------------------------------


@dataclass(frozen=True)
class Locations:
    """The files `rollout sample` and `rollout demo` write or delete besides the
    registry (which its own mark shows a sample's: registry_contents), each with the
    setting that names it."""

    landing: Path
    outbox: Path
    reports: Path
    warehouse: Path
    warehouse_setting: str  # ROLLOUT_WAREHOUSE when it overrides the home's

    @classmethod
    def of(cls, settings: Settings) -> Locations:
        return cls(
            landing=settings.landing_dir,
            outbox=settings.outbox_dir,
            reports=settings.reports_dir,
            warehouse=settings.warehouse_path,
            warehouse_setting=(
                "ROLLOUT_WAREHOUSE" if settings.warehouse_path_override else "ROLLOUT_HOME"
            ),
        )


def is_marked(landing_dir: Path) -> bool:
    """Whether `rollout sample` wrote this landing folder (it holds SAMPLE_MARK)."""
    return (Path(landing_dir) / SAMPLE_MARK).is_file()


def _files_in(folder: Path) -> int:
    """How many files ``folder`` holds, in all its subfolders (something that is no
    folder counts as one: it is not the sample's to replace either)."""
    if not folder.exists() and not folder.is_symlink():
        return 0
    if not folder.is_dir():
        return 1
    try:
        return sum(1 for path in folder.rglob("*") if not path.is_dir())
    except OSError:
        return 1  # a subfolder it cannot list: nothing shows it is the sample's


def _not_the_samples(setting: str, what: str, path: Path, why: str) -> GuardRefused:
    return GuardRefused(
        f"refusing to touch {setting}'s {what} {visible(path)}: {why}, so `rollout sample` "
        f"did not make it. Nothing was changed. Point {setting} at a scratch location "
        "(`make demo` uses its own home), or, if an older rollout's sample made it, "
        "delete it yourself."
    )


def check_landing(landing_dir: Path, setting: str = "ROLLOUT_HOME") -> None:
    """Refuse (GuardRefused, nothing changed) a landing folder holding files that
    `rollout sample` did not write: one without SAMPLE_MARK (production's, when
    ROLLOUT_HOME names the worker's home)."""
    landing_dir = Path(landing_dir)
    if is_marked(landing_dir):
        return
    files = _files_in(landing_dir)
    if files:
        raise _not_the_samples(
            setting,
            "landing folder",
            landing_dir,
            f"it holds {counted(files, 'file')} and no {SAMPLE_MARK}",
        )


def check_locations(locations: Locations) -> None:
    """Refuse (GuardRefused, nothing changed), naming the setting and the path, any
    location a sample or its demo would write or delete that is not the sample's own:

    - the landing folder, unless it holds SAMPLE_MARK or no file at all;
    - the outbox and reports folders beside it, unless the landing folder holds the
      mark (they are then the sample's home's) or they hold no file;
    - the warehouse, unless there is none, or every landing file it loaded lies in
      the marked landing folder (one that loaded none: only the home's own).
    """
    check_landing(locations.landing)
    marked = is_marked(locations.landing)
    for what, folder in (("outbox", locations.outbox), ("reports folder", locations.reports)):
        if not marked and (files := _files_in(folder)):
            raise _not_the_samples(
                "ROLLOUT_HOME",
                what,
                folder,
                f"it holds {counted(files, 'file')} and the landing folder beside it has "
                f"no {SAMPLE_MARK}",
            )
    why = _foreign_warehouse(locations, marked)
    if why is not None:
        raise _not_the_samples(locations.warehouse_setting, "warehouse", locations.warehouse, why)


def _foreign_warehouse(locations: Locations, marked: bool) -> str | None:
    """Why the warehouse is not the sample's, or None when it is (or there is none)."""
    import duckdb

    path = locations.warehouse
    if not path.exists() and not path.is_symlink():
        return None
    try:
        connection = duckdb.connect(duckdb_path(path), read_only=True)
    except duckdb.Error as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return f"it cannot be opened to tell whose it is ({reason})"
    try:
        tables = {
            row[0]
            for row in connection.execute(
                "select table_name from information_schema.tables"
            ).fetchall()
        }
        if "ingested_files" not in tables:
            return "it holds no ingested_files table (it is no rollout warehouse)"
        loaded = [
            row[0] for row in connection.execute("select path from ingested_files").fetchall()
        ]
    finally:
        connection.close()
    if not loaded:
        if locations.warehouse_setting == "ROLLOUT_HOME":
            return None  # the home's own, and it loaded nothing
        return "it loaded no landing file, so nothing shows it is the sample's"
    landing = locations.landing.resolve()
    foreign = [name for name in loaded if not Path(name).resolve().is_relative_to(landing)]
    if not marked or foreign:
        example = (foreign or loaded)[0]
        return (
            f"it loaded {counted(len(foreign or loaded), 'file')} from outside the sample's "
            "landing "
            f"folder {visible(locations.landing)}, such as {visible(example)}"
        )
    return None


def prepare_registry(
    registry: Registry,
    replace: bool,
    landing_dir: Path,
    confirm: str | None = None,
    note: str = "rollout sample",
) -> None:
    """Refuse to overwrite anything unless allowed (check_replace, check_landing),
    then mark the landing folder, empty the registry at the newest schema and mark it
    a sample."""
    landing_dir = Path(landing_dir)
    contents = registry_contents(registry)
    check_replace(contents, replace, confirm)
    check_landing(landing_dir)
    mark = landing_dir / SAMPLE_MARK
    existing = [path for path in _landing_files(landing_dir) if path != mark]
    if existing and not replace:
        raise BadInput(
            landing_dir,
            None,
            f"the landing folder already has {counted(len(existing), 'file')}; pass "
            f"replace=True to delete {them(len(existing))}",
        )
    # Marked before any landing file is written: a run that dies half way leaves a
    # folder the next sample can replace.
    if not mark.is_file():
        make_folder(landing_dir)
        with written_in_place(mark) as temporary:
            temporary.write_text(f"written by {note}\n", encoding="utf-8")
    # A bare engine, not registry.engine: migrations work on any schema, or none.
    engine = make_engine(registry.url)
    try:
        migrate.upgrade(engine)
        if contents.has_rows:
            # Down and up again: the ledger's append-only triggers refuse a DELETE.
            # check_replace let only a sample this far.
            migrate.downgrade(engine, "base")
            migrate.upgrade(engine)
        # Marked before any row goes in: a run that dies half way leaves a registry
        # that can still be replaced, and says it is unfinished until the last landing
        # file is written (_mark_finished).
        with engine.begin() as connection:
            connection.execute(delete(RegistryMark))
            connection.execute(
                insert(RegistryMark).values(
                    kind="sample", created_at=_utc_now(), note=note + UNFINISHED
                )
            )
        for kind in LANDING_KINDS:
            shutil.rmtree(landing_dir / kind, ignore_errors=True)
    finally:
        engine.dispose()


def _mark_finished(registry: Registry, note: str) -> None:
    """The sample is whole, registry and landing files: its mark loses UNFINISHED."""
    engine = make_engine(registry.url)
    try:
        with engine.begin() as connection:
            connection.execute(
                update(RegistryMark).where(RegistryMark.kind == "sample").values(note=note)
            )
    finally:
        engine.dispose()


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class _Stages:
    """Reports ``progress(stage, done, total)``: (stage, 0, total) when a stage starts,
    (stage, k, total) as its chunks finish and (stage, total, total) when it ends, so a
    caller can drive one progress bar per stage.
    """

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.current: tuple[str, int] | None = None
        self.done = 0

    def __call__(self, stage: str, total: int = 1) -> None:
        self.finish()
        self.current = (stage, total)
        self._report(0)

    def step(self, done: int) -> None:
        self._report(done)

    def finish(self) -> None:
        if self.current is not None:
            if self.done < self.current[1]:
                self._report(self.current[1])
            self.current = None

    def _report(self, done: int) -> None:
        self.done = done
        if self.progress is not None and self.current is not None:
            self.progress(self.current[0], done, self.current[1])


def check_history(scale: str | Scale, end: date, days: int | None) -> tuple[Scale, int]:
    """The scale and the days of download history a sample ending on ``end`` would
    have, or BadInput saying why not. Checked before anything is written (the registry
    opened, the home made): a bad ``end`` or ``days`` changes nothing."""
    sc = _resolve_scale(scale)
    days = sc.days if days is None else days
    if days < 1:
        raise BadInput(None, None, f"days must be at least 1, not {days}")
    _end_instant(end)
    # A history reaching past year 1 raised OverflowError with the registry half made.
    most = (end - REGISTRY_START).days + 1
    if days > most:
        raise BadInput(
            None,
            None,
            f"days {days} would start the download history before {REGISTRY_START}, when "
            f"the registry starts: at most {counted(most, 'day')} up to {end}",
        )
    return sc, days


def generate_sample(
    scale: str | Scale,
    seed: int,
    *,
    registry: Registry,
    landing_dir: Path,
    end: date = date(2022, 1, 31),
    days: int | None = None,
    replace: bool = False,
    confirm: str | None = None,
    progress: Progress | None = None,
) -> SampleSummary:
    """Fill ``registry`` and write landing files under ``landing_dir``.

    An empty registry (no tables, or no rows) is filled and marked a sample. One with
    rows is replaced only if it is a sample, ``replace`` is set and ``confirm`` is its
    name (confirm_name): otherwise GuardRefused, nothing changed. Landing files already
    there are refused (BadInput) unless ``replace``, which deletes the sample's own
    landing subfolders. ``progress(stage, done, total)`` is called as stages advance.

    On SQLite, no connection to the registry may be open in this process meanwhile: rows
    go in through ADBC's own SQLite library (see rollout/registry/bulk.py). The
    registry's own pooled ones are closed first (``Registry.close``); the caller must
    hold no other.
    """
    started = time.perf_counter()
    sc, days = check_history(scale, end, days)
    end_us = _end_instant(end)
    landing_dir = Path(landing_dir)
    stage = _Stages(progress)
    stage("Preparing the registry")
    registry.close()
    note = f"rollout sample --scale {sc.name} --seed {seed} --end {end} --days {days}"
    prepare_registry(registry, replace, landing_dir, confirm, note=note)

    # Independent streams per stage: changing one stage leaves the others' draws alone.
    spawned = np.random.default_rng(seed).spawn(12)
    streams = iter(spawned)
    stage("Choosing packages")
    pk = make_packages(sc, next(streams))
    stage("Drawing dependencies")
    deps, dev, peer = make_dependencies(next(streams), pk, sc)
    stage("Drawing maintainers and accounts")
    mt = make_maintainers(next(streams), pk, sc.accounts)
    acc = make_accounts(next(streams), sc.accounts, pk, mt, end_us)
    stage("Drawing 2FA factors, sessions and tokens")
    fac = make_factors(next(streams), acc, end_us)
    ses = make_sessions(next(streams), acc, end_us)
    tok = make_tokens(next(streams), acc, end_us)
    # The last stream, so that the draws of every stage before this one stayed the same.
    add_granular_tokens(spawned[-1], tok)
    stage("Drawing orgs and teams")
    org = make_orgs(next(streams), pk, mt, acc, end_us)

    tables = registry_tables(acc, fac, ses, tok, org, pk)
    stage("Writing the registry", len(tables))
    done = iter(range(1, len(tables) + 1))
    bulk.insert_tables(registry.url, tables, progress=lambda _t, _n: stage.step(next(done)))
    bulk.reset_id_sequences(registry.url, [name for name, t in tables if "id" in t.column_names])
    del tables

    mixed = sc.formats == "mixed"
    files: list[Path] = []
    stage("Writing manifests")
    make_folder(landing_dir / "manifests")
    manifests = manifests_table(pk, deps, dev, peer, mt, acc)
    path = landing_dir / "manifests" / ("manifests.jsonl" if mixed else "manifests.parquet")
    (_write_jsonl if mixed else _write_parquet)(manifests, path)
    files.append(path)
    del manifests

    stage("Drawing daily downloads")
    day_list, counts = daily_downloads(next(streams), pk.monthly, end, days)
    stage("Writing downloads", days)
    written, download_rows = write_downloads(
        landing_dir / "downloads", pk.names, day_list, counts, mixed, stage.step
    )
    files += written
    if mixed:
        files += write_api_files(landing_dir / "downloads", pk, day_list, counts)
    del counts

    stage("Writing login events")
    logins = make_logins(next(streams), acc, fac, _us(day_list[0]), end_us)
    make_folder(landing_dir / "logins")
    path = landing_dir / "logins" / "logins.parquet"
    _write_parquet(logins, path)
    files.append(path)
    stage("Writing publish events")
    # The stream after the logins' (its own: the earlier stages' draws stay the same).
    publishes = make_publishes(spawned[10], mt, pk, acc, fac, tok, _us(day_list[0]), end_us)
    make_folder(landing_dir / "publishes")
    path = landing_dir / "publishes" / "publishes.parquet"
    _write_parquet(publishes, path)
    files.append(path)
    _mark_finished(registry, note)
    stage.finish()

    return SampleSummary(
        scale=sc.name,
        seed=seed,
        packages=len(pk),
        dependency_edges=len(deps),
        accounts=len(acc),
        accounts_with_2fa=int((fac.active_kinds > 0).sum()),
        web_sessions=len(ses),
        tokens=len(tok),
        orgs=len(org),
        landing_files=sorted(files),
        download_rows=download_rows,
        login_events=logins.num_rows,
        publish_events=publishes.num_rows,
        seconds=round(time.perf_counter() - started, 3),
        dev_dependency_edges=len(dev),
        peer_dependency_edges=len(peer),
    )
