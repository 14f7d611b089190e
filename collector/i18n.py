"""Vietnamese and English for everything a person reads: the board, ward pages, audits, `status`.

Messages live in gettext catalogs, ``collector/locale/<lang>/LC_MESSAGES/<domain>.po``, one
domain per area (``board``, ``audit``, ``cli``...), so areas grow their catalogs apart. The .po
files are read with Babel and compiled in memory at first use: there is no build step to
forget, and a missing or empty catalog falls back to the English source text.

Vietnamese is the default: the people who read the board read "Phường Bến Thành".
"""

from __future__ import annotations

import functools
import gettext
import io
import logging
from pathlib import Path

import icu
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

log = logging.getLogger(__name__)

LANGS = ("vi", "en")
DEFAULT = "vi"
LOCALE_DIR = Path(__file__).with_name("locale")

# How a unit's kind reads before its name, by language.
_KIND_WORDS = {
    "vi": {"ward": "Phường", "commune": "Xã", "special_zone": "Đặc khu"},
    "en": {"ward": "Ward", "commune": "Commune", "special_zone": "Special zone"},
}


@functools.cache
def translations(lang: str) -> gettext.NullTranslations:
    """Every domain's catalog for ``lang`` merged into one; English is the source text."""
    merged: gettext.NullTranslations = gettext.NullTranslations()
    folder = LOCALE_DIR / lang / "LC_MESSAGES"
    if lang not in LANGS or not folder.is_dir():
        return merged
    for po in sorted(folder.glob("*.po")):
        with po.open("rb") as f:
            catalog = read_po(f, locale=lang, domain=po.stem)
        buf = io.BytesIO()
        write_mo(buf, catalog)
        buf.seek(0)
        domain = gettext.GNUTranslations(buf)
        domain.add_fallback(merged)
        merged = domain
    return merged


def pick(query: str | None = None, accept_language: str | None = None) -> str:
    """The language to answer in: ``?lang=``, then the Accept-Language header, then Vietnamese."""
    if query in LANGS:
        return query
    if accept_language:
        ranked: list[tuple[float, int, str]] = []
        for i, part in enumerate(accept_language.split(",")):
            tag, _, q = part.strip().partition(";q=")
            try:
                weight = float(q) if q else 1.0
            except ValueError:
                continue
            primary = tag.strip().lower().split("-")[0]
            if primary in LANGS and weight > 0:
                ranked.append((-weight, i, primary))
        if ranked:
            return min(ranked)[2]
    return DEFAULT


def gettext_for(lang: str) -> gettext.NullTranslations:
    return translations(lang if lang in LANGS else DEFAULT)


@functools.cache
def _collator(lang: str) -> icu.Collator:
    return icu.Collator.createInstance(icu.Locale(lang))


def sort_key(text: str, lang: str = DEFAULT) -> bytes:
    """Collation key in the language's own order: Vietnamese puts Ă and Â after A and Đ after
    D (CLDR's tailoring, through ICU), where code points would put "Đa Kao" after "Zz"."""
    return bytes(_collator(lang if lang in LANGS else DEFAULT).getSortKey(text))


def display_name(name: str, kind: str, lang: str = DEFAULT) -> str:
    """``("Bến Thành", "ward")`` -> "Phường Bến Thành" (vi) or "Ward Bến Thành" (en)."""
    word = _KIND_WORDS.get(lang, _KIND_WORDS[DEFAULT]).get(kind)
    return f"{word} {name}" if word else name
