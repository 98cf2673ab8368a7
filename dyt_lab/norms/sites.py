"""The one site selector: glob patterns and named presets over dotted site names (``blocks.*.norm1``).

Placement (which norm goes where), ``convert_norms`` (which modules to replace) and the
diagnostics (which sites to watch) all select sites through these functions, so a pattern means
the same thing everywhere: a preset name expands to its globs, anything else is a glob itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase

Presets = Mapping[str, Sequence[str]]


def as_patterns(patterns: str | Sequence[str]) -> list[str]:
    """One pattern or several, as a list."""
    return [patterns] if isinstance(patterns, str) else list(patterns)


def expand(pattern: str, presets: Presets | None = None) -> list[str]:
    """The globs a pattern stands for: a preset's own, else the pattern itself."""
    return list((presets or {}).get(pattern, [pattern]))


def matches(site: str, patterns: str | Sequence[str], presets: Presets | None = None) -> bool:
    """Whether ``site`` matches any of ``patterns`` (each a preset name or a glob)."""
    return any(fnmatchcase(site, glob) for p in as_patterns(patterns) for glob in expand(p, presets))


def select(sites: Iterable[str], patterns: str | Sequence[str] | None, presets: Presets | None = None) -> list[str]:
    """The sites matching any of ``patterns``, in their own order; None selects all."""
    return [s for s in sites if patterns is None or matches(s, patterns, presets)]


def unmatched(sites: Iterable[str], patterns: str | Sequence[str], presets: Presets | None = None) -> list[str]:
    """The patterns that match none of ``sites``: an error wherever a user wrote them."""
    sites = list(sites)
    return [p for p in as_patterns(patterns) if not any(matches(s, p, presets) for s in sites)]
