"""Offline English text corpora for masked-language modelling.

``docstring_corpus`` builds a real English corpus at run time from the docstrings of the
installed Python standard library (modules, their public classes and functions, and the public
methods of those classes), so no download is ever needed.  ``read_text_files`` reads local
WikiText-style files when a user has them.

References:
  Merity et al., "Pointer Sentinel Mixture Models" (WikiText), ICLR 2017.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from jaxprune._validation import check_iterable, check_positive_int

__all__ = [
    "SKIPPED_MODULES",
    "docstring_corpus",
    "leading_documents",
    "normalize_whitespace",
    "read_text_files",
]

#: Standard-library modules never imported: they print, open a browser or a window, touch the
#: terminal, or pull in a GUI toolkit.  Private modules (leading underscore) are skipped too.
SKIPPED_MODULES = frozenset(
    {
        "antigravity",
        "this",
        "idlelib",
        "tkinter",
        "turtle",
        "turtledemo",
        "readline",
        "rlcompleter",
        "pydoc_data",
        "lib2to3",
        "ensurepip",
        "venv",
    }
)


def normalize_whitespace(text: str) -> str:
    """Collapse every run of whitespace (newlines included) into one space and strip the ends."""
    return " ".join(text.split())


def _import_quietly(name: str):
    """Import ``name`` with warnings and stdout/stderr silenced; ``None`` if it fails."""
    sink = io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except Exception:  # platform-specific modules fail to import: skip them
            return None


def _public_members(obj: object) -> list[object]:
    """Public attributes of ``obj`` in name order, skipping any whose lookup fails."""
    members = []
    for name in sorted(vars(obj)):
        if name.startswith("_"):
            continue
        with contextlib.suppress(Exception):
            members.append(getattr(obj, name))
    return members


def _module_docstrings(module: object) -> Iterator[str]:
    """Docstrings of a module, its own public classes and functions, and their public methods."""
    yield module.__doc__ or ""
    for member in _public_members(module):
        if not (inspect.isclass(member) or inspect.isroutine(member)):
            continue
        if getattr(member, "__module__", None) != module.__name__:
            continue  # re-exported from elsewhere: counted where it is defined
        yield member.__doc__ or ""
        if inspect.isclass(member):
            for method in _public_members(member):
                if inspect.isroutine(method):
                    yield getattr(method, "__doc__", None) or ""


def _stdlib_documents() -> Iterator[str]:
    """Normalised, deduplicated docstrings of the standard library, in a fixed order."""
    seen: set[str] = set()
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in SKIPPED_MODULES:
            continue
        module = _import_quietly(name)
        if module is None:
            continue
        for doc in _module_docstrings(module):
            text = normalize_whitespace(doc)
            if text and text not in seen:
                seen.add(text)
                yield text


def leading_documents(documents: Iterable[str], max_chars: int | None) -> list[str]:
    """Leading documents whose total length stays within ``max_chars`` (all if ``None``)."""
    taken: list[str] = []
    total = 0
    for doc in documents:
        if max_chars is not None and total + len(doc) > max_chars:
            break
        taken.append(doc)
        total += len(doc)
    return taken


def docstring_corpus(
    *, max_chars: int | None = None, cache_dir: str | Path | None = None
) -> list[str]:
    """English documents from the docstrings of the installed Python standard library.

    Modules are visited in sorted order of ``sys.stdlib_module_names`` (minus
    ``SKIPPED_MODULES``, private modules and modules that fail to import on this platform);
    within a module its docstring comes first, then those of its public classes and functions
    (sorted by name) each followed by its public methods.  Whitespace is normalised and exact
    duplicates dropped, so the result depends only on the Python version.

    Args:
      max_chars: keep the leading documents whose total length is at most this (``None``: all).
      cache_dir: if given, the corpus is stored there as JSON and read back on later calls.

    Returns:
      A list of documents (non-empty strings).
    """
    if max_chars is not None:
        check_positive_int(max_chars, "max_chars")
    if cache_dir is None:
        return leading_documents(_stdlib_documents(), max_chars)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    path = Path(cache_dir) / f"stdlib_docstrings_py{version}_{max_chars or 'all'}.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    documents = leading_documents(_stdlib_documents(), max_chars)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(documents), encoding="utf-8")
    return documents


def _is_wikitext_heading(line: str) -> bool:
    """WikiText section headings look like ``= Title =`` or ``= = Subtitle = =``."""
    return len(line) > 1 and line.startswith("=") and line.endswith("=")


def _read_utf8(path: Path) -> str:
    """The text of ``path``; a ``ValueError`` naming it when it cannot be read as UTF-8."""
    expected = f"paths: expected readable UTF-8 text files, got {str(path)!r}"
    if path.is_dir():
        raise ValueError(f"{expected} (a directory)")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{expected} (no such file)") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{expected} (not UTF-8: {error.reason} at byte {error.start})") from None
    except OSError as error:
        raise ValueError(f"{expected} ({error.strerror})") from None


def read_text_files(paths: Iterable[str | Path]) -> list[str]:
    """Documents from local UTF-8 text files, e.g. WikiText's ``wiki.train.tokens``.

    Each non-blank line becomes one whitespace-normalised document; WikiText section headings
    (``= Title =``) are dropped.

    Args:
      paths: files to read, in order.

    Returns:
      A list of documents (non-empty strings).

    Raises:
      ValueError: a path that is missing, a directory, or not UTF-8 text (the message names
        it).
    """
    check_iterable(paths, "paths", "an iterable of file paths (a list, also for one file)")
    documents: list[str] = []
    for path in paths:
        if not isinstance(path, (str, Path)):
            raise TypeError(f"paths must hold str or Path, got {path!r}")
        for line in _read_utf8(Path(path)).splitlines():
            text = normalize_whitespace(line)
            if text and not _is_wikitext_heading(text):
                documents.append(text)
    return documents
