"""Split legal text into sections, clauses (sentences) and definitions, with exact offsets.

Every span indexes the input unchanged: ``text[start:end]`` is exactly the unit, so spans serve as
provenance. All of it is linear-time heuristics on precompiled regular expressions:

* Headings are found line by line: keywords (``Section 3.``, ``ARTICLE IV -``, ``Clause 7:``,
  ``§ 4``, ``EXHIBIT A``), markers (``1.``, ``1.1``, ``2.3.1``, ``(a)``, ``(iv)``, ``a)``, ``A.``),
  short ALL-CAPS lines and lone title-case lines. A marker opens a section only at a paragraph start
  (after a blank line, a line ending in ``.:;`` or a heading) or when it continues an open list
  (``(b)`` after ``(a)``), so a wrapped line starting ``2.0 of the License`` is no heading.
* Nesting: a marker's style is its shape and number class (``(a)``, ``a)``, ``1.1``, ``Section``,
  roman...). An open style at the same indentation, or whose next number it is, makes a sibling;
  anything else opens a child, so ``a.`` under ``1.`` under ``a.`` (CC-BY 4.0) nests. ``1.1`` is a
  child of the open ``1``; articles, parts and exhibits close any open numbered sections.
* ALL-CAPS and lone title-case headings are level-0 separators: they close every open section and
  never contain numbered ones (``TERMS AND CONDITIONS`` and ``1. Definitions.`` are both level 0).
  Three or more capitalised lines, or ones with verbs (IS, SHALL), are a shouted paragraph.
* Roman or letter: ``(i)``/``(v)``/``(x)``... is a letter right after the preceding letter of the
  same shape (``(i)`` after ``(h)``), roman when it continues an open roman list; otherwise ``i``
  and multi-letter tokens (``ii``) are roman and other single letters (``(c)``, ``(v)``) letters.
* Heading text is the rest of the heading line when title-like (short, mostly capitalised, no
  verbs), the next line after a bare ``ARTICLE I``, or a title fragment ending in ``.``/``:``
  (``2. Grant of Copyright License. Subject to...``, body from "Subject"). Otherwise ``heading``
  is None and ``body_start == start``: a numbered paragraph is its own body.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    """A heading and its body; ``text[start:end]`` runs from the heading to the body's end."""

    number: str | None
    heading: str | None
    level: int
    start: int
    end: int
    body_start: int


@dataclass(frozen=True)
class Definition:
    """A defined term and the span of the whole sentence that defines it."""

    term: str
    start: int
    end: int


@dataclass
class _Open:
    """A section open on the nesting stack: its style, indentation and number."""

    kind: tuple[str, str]
    indent: int
    value: int
    comps: tuple[int, ...] | None


_KW = "ARTICLE|Article|SECTION|Section|CLAUSE|Clause|PART|Part|§§?"
_KW_UNNUMBERED = ("APPENDIX", "Appendix", "EXHIBIT", "Exhibit", "SCHEDULE", "Schedule", "ANNEX")
_MAJOR = {"kw:appendix": 0, "kw:exhibit": 0, "kw:schedule": 0, "kw:annex": 0}
_MAJOR |= {"kw:part": 1, "kw:article": 2}
_KEYWORD = re.compile(
    rf"[ \t]*(?P<kw>{_KW}|{'|'.join(_KW_UNNUMBERED)})(?![A-Za-z])"
    r"(?:[ \t]*(?P<num>\d{1,3}(?:\.\d{1,3})*|[IVXLC]{1,7}|[A-Z])(?=[ \t.:\-–—]|$))?"
    r"(?P<sep>[ \t]*(?:--|[-–—:.]))?[ \t]*"
)
_MARKER = re.compile(
    r"[ \t]*(?:(?P<dec>\d{1,3}(?:\.\d{1,3})+)\.?|(?P<num>\d{1,3})\."
    r"|\((?P<paren>[A-Za-z]{1,2}|[ivxlcIVXLC]{3,6}|\d{1,3})\)"
    r"|(?P<rpar>[A-Za-z]|[ivxlc]{2,6}|\d{1,3})\)"
    r"|(?P<dot>[A-Za-z]|[IVXLC]{2,6}|[ivxlc]{2,6})\.)(?=[ \t]|$)"
)
_ROMAN = re.compile(r"(?=[ivxlc])c{0,3}(?:xc|xl|l?x{0,3})(?:ix|iv|v?i{0,3})")
_ROMAN_VALUES = {"i": 1, "v": 5, "x": 10, "l": 50, "c": 100}
_DECO = re.compile(r"[-=_*~#]{3,}[ \t\r\f\v]*$")
_NONSPACE = re.compile(r"\S")
_ALNUM = re.compile(r"[^\W_]")
_WORD = re.compile(r"[^\W\d_][\w'’-]*")
_LOWER = re.compile(r"[a-z]")
_YEAR = re.compile(r"\d{4}|\([cC]\)|©")
_COPYRIGHT = re.compile(r"\s*(?:copyright[\s,]+)?[\[<(]?(?:\d{4}|yyyy|year)", re.I)
_INLINE_END = re.compile(r"[.:][ \t]+(?=\S)")
_INNER_END = re.compile(r"[^\W\d_]{2}[.!?] ")
_MINOR = {"a", "an", "and", "as", "at", "by", "for", "from", "in", "into", "of", "on", "or",
          "the", "to", "under", "upon", "with", "without", "its", "their", "no", "not",
          "nor"}  # fmt: skip
_VERBS = {"is", "are", "was", "were", "be", "been", "shall", "will", "may", "must", "can",
          "means", "mean", "do", "does", "has", "have", "should", "would", "if", "unless",
          "that", "which", "who", "whether"}  # fmt: skip

_PARA_BREAK = re.compile(r"\n(?:[ \t\r\f\v]*(?:[-=_*~#]{3,}[ \t\r\f\v]*)?(?:\n|$))+")
_SENT_END = re.compile(r"(?<!\S)(?P<tok>\S*?)(?P<p>[.!?]+)[\"'”’)\]]*(?=\s|$)")
_MARKER_TOK = re.compile(r"\(?(?:\d{1,3}(?:\.\d{1,3})*|[A-Za-z]|[ivxlcIVXLC]{1,6})")
_LIST_LEAD_IN = re.compile(r"(?:[:;]|[;,][ \t]+(?:and|or))$")
_LINE_PREFIX = re.compile(rf"[ \t]*(?:(?:{_KW})[ \t]*)?")
_NEVER_END = {"e.g", "i.e", "viz", "cf", "mr", "mrs", "ms", "dr", "prof", "st", "no", "nos",
              "art", "arts", "sec", "secs", "sect", "fig", "vs", "v", "para", "paras", "pp",
              "vol", "ch", "approx", "incl", "u.s", "u.k", "co", "ref", "subsec"}  # fmt: skip
_MAYBE_END = {"etc", "inc", "ltd", "corp", "llc", "l.l.c", "plc", "jr", "sr", "u.s.a", "s.a",
              "n.v", "b.v", "l.p", "p.c"}  # fmt: skip

_DEF_VERB = (
    r"(?:shall\s+(?:mean|refer\s+to|have\s+the\s+meaning|be\s+defined\s+as)|means|mean"
    r"|refers\s+to|is\s+defined\s+as|has\s+the\s+meaning)\b"
)
_DEF_QUOTED = re.compile(  # possessive \s++ keeps long runs of spaces linear
    r"(?<!\w)[\"“'‘](?P<term>\w[^\"“”'‘’]{0,59}?)[\"”'’](?![A-Za-z])"
    r"(?:(?:\s++|\s*+,\s*+)(?:\([^()]{0,80}\)|[A-Za-z]+)){0,3}?(?:\s++|\s*+,\s*+)" + _DEF_VERB
)
_DEF_PAREN = re.compile(
    r"\(\s*(?:hereinafter\s+(?:referred\s+to\s+as\s+|called\s+)?)?(?:collectively,?\s+)?"
    r"(?:(?:the|this|each|an?)\s+)?[\"“](?P<term>\w[^\"“”()]{0,59}?)[\"”]\s*\)"
)
_DEF_UNQUOTED = re.compile(
    r"(?m)^[ \t]*(?:\(?[A-Za-z0-9]{1,6}(?:\.\d{1,3})*[.)]+[ \t]+)?"
    r"(?P<term>[A-Z][\w'’-]*(?:[ \t]+(?:[A-Z][\w'’-]*|and|of|or|the|for|in|to)){0,5}?)"
    r"[ \t]+(?:means|shall[ \t]+mean)\b"
)
_DEF_SECTION = re.compile(r"defin|interpret", re.I)
_OPEN_DEF = re.compile(r"\b(?:means?|to|as|following|includes?)$")
_LIST_START = re.compile(r"\(?(?:[A-Za-z]|[ivxlc]{1,6}|\d{1,3})[.)]\s")
_LEAD_MARKER = re.compile(
    rf"(?:(?:(?:{_KW})[ \t]*)?(?:\(?(?:\d{{1,3}}(?:\.\d{{1,3}})*|[A-Za-z]{{1,2}}"
    r"|[ivxlcIVXLC]{1,6})[.)]{1,2}|\d{1,3}(?:\.\d{1,3})+)\s+)+"
)

Lines = list[tuple[int, int]]

# ----------------------------------------------------------------------------- line helpers


def _lines(text: str) -> Lines:
    """(start, end) of every line; ``end`` excludes the newline and a trailing CR."""
    out, pos = [], 0
    while (nl := text.find("\n", pos)) >= 0:
        out.append((pos, nl - 1 if nl > pos and text[nl - 1] == "\r" else nl))
        pos = nl + 1
    out.append((pos, len(text) - 1 if text.endswith("\r") else len(text)))
    return out


def _norm(s: str) -> str:
    """Heading text: whitespace collapsed, trailing ``.``/``:`` dropped."""
    return " ".join(s.split()).rstrip(".: ")


def _is_title(s: str, loose: bool = False) -> bool:
    """Short and title-like: capitalised first word, no verbs, mostly capitalised (unless loose)."""
    s = s.strip()
    if not 2 <= len(s) <= 80 or _INNER_END.search(s):
        return False
    words = _WORD.findall(s)
    if not words or len(words) > 10 or not words[0][0].isupper():
        return False
    lower = [w.lower() for w in words]
    if _VERBS.intersection(lower) or s.split()[-1].lower() in _MINOR:
        return False
    if loose and (len(words) <= 4 or (len(words) <= 8 and s[-1] != ".")):
        return True
    major = [w for w in words if w.lower() not in _MINOR]
    if "," in s and not s.isupper():
        return False
    return bool(major) and sum(w[0].isupper() for w in major) >= 0.7 * len(major)


def _is_caps(s: str) -> bool:
    """A short ALL-CAPS line that reads like a heading, not a line of a shouted sentence."""
    if not 2 <= len(s) <= 80 or s[-1] in ",;" or _LOWER.search(s) or _YEAR.search(s):
        return False
    words = [w.lower() for w in _WORD.findall(s)]
    if not 1 <= len(words) <= 12 or ". " in s[:-1] or _VERBS.intersection(words):
        return False
    if words[-1] in _MINOR or words[-1] in ("this", "any", "all", "such"):
        return False  # wrapped mid-sentence
    return any(len(w) > 1 and w not in _MINOR for w in words)


def _kind_of_line(text: str, lines: Lines, i: int) -> str:
    """Line ``i`` is 'eof', 'blank', 'deco' (``-----``), 'lower' (starts lowercase) or 'text'."""
    if i >= len(lines):
        return "eof"
    m = _NONSPACE.search(text, *lines[i])
    if m is None:
        return "blank"
    if _DECO.match(text, m.start(), lines[i][1]):
        return "deco"
    return "lower" if text[m.start()].islower() else "text"


def _body_after(text: str, lines: Lines, i: int) -> int:
    """Offset of the first non-space character after line ``i``, skipping decoration lines."""
    for j in range(i + 1, len(lines)):
        m = _NONSPACE.search(text, *lines[j])
        if m and not _DECO.match(text, m.start(), lines[j][1]):
            return m.start()
    return len(text)


# ----------------------------------------------------------------------------- sections


def _continues(stack: list[_Open], kind: tuple[str, str], value: int) -> bool:
    return any(e.kind == kind and e.value == value - 1 for e in stack)


def _classify(shape: str, tok: str, stack: list[_Open]) -> tuple[str, int, tuple[int, ...]]:
    """(number class, value, decimal components) of a marker's number; class '' if invalid."""
    if tok[0].isdigit():
        comps = tuple(int(x) for x in tok.split("."))
        return f"dec{len(comps)}", comps[-1], comps
    alpha, roman = ("Alpha", "Roman") if tok.isupper() else ("alpha", "roman")
    low = tok.lower()
    rom = None
    if (tok.islower() or tok.isupper()) and _ROMAN.fullmatch(low):
        vals = [_ROMAN_VALUES[c] for c in low]
        rom = sum(-v if v < w else v for v, w in zip(vals, [*vals[1:], 0], strict=True))
    if not (len(tok) == 1 or (len(tok) == 2 and tok[0] == tok[1])):
        return (roman, rom, ()) if rom else ("", 0, ())
    letter = ord(low[0]) - 96 + 26 * (len(tok) - 1)  # a=1 ... z=26, aa=27
    if rom is None or _continues(stack, (shape, alpha), letter):
        return alpha, letter, ()
    if _continues(stack, (shape, roman), rom) or len(tok) == 2 or low == "i":
        return roman, rom, ()
    return alpha, letter, ()


def _place(stack: list[_Open], new: _Open) -> int:
    """Push ``new`` on the nesting stack, closing its siblings and their children; its level."""
    for idx in range(len(stack) - 1, -1, -1):
        e = stack[idx]
        if e.kind == new.kind and (abs(e.indent - new.indent) <= 1 or new.value == e.value + 1):
            del stack[idx:]
            break
    else:
        rank = _MAJOR.get(new.kind[0])
        while rank is not None and stack and _MAJOR.get(stack[-1].kind[0], 9) >= rank:
            stack.pop()
        n = len(new.comps or ())
        for idx, e in enumerate(stack):  # 13. closes an open 10.1 (same shape, as deep or deeper)
            if n and e.comps and e.kind[0] == new.kind[0] and len(e.comps) >= n:
                del stack[idx:]
                break
        for idx in range(len(stack) - 1, -1, -1):  # 2.3.1 is a child of the open 2.3
            c = stack[idx].comps
            if new.comps and c and len(c) < len(new.comps) and new.comps[: len(c)] == c:
                del stack[idx + 1 :]
                break
    stack.append(new)
    return len(stack) - 1


def _inline_title(text: str, pos: int, le: int) -> tuple[str, int] | None:
    """A title ending in ``.``/``:`` at ``pos`` (not at ``U.S.``, ``No.``), and its body's start."""
    for m in _INLINE_END.finditer(text, pos, min(le, pos + 90)):
        title = text[pos : m.start()].strip()
        last = title.split()[-1].lower() if title else ""
        if last in _NEVER_END or len(last.replace(".", "")) <= 1:
            continue
        loose = len(_WORD.findall(title)) <= 4
        return (_norm(title), m.end()) if _is_title(title, loose) else None
    return None


def _heading_and_body(
    text: str, lines: Lines, i: int, rest: int, start: int
) -> tuple[str | None, int, int]:
    """(heading, body_start, next line) for a heading line whose marker ends at ``rest``."""
    le = lines[i][1]
    tail = text[rest:le].strip()
    nxt = _kind_of_line(text, lines, i + 1)
    if not tail:  # a bare "ARTICLE I": the heading may be on the next line
        j = i + 2 if nxt == "blank" else i + 1
        if nxt in ("text", "blank") and _kind_of_line(text, lines, j) == "text":
            s = text[lines[j][0] : lines[j][1]].strip()
            titled = _is_caps(s) or _is_title(s)
            if titled and not _MARKER.match(s) and _kind_of_line(text, lines, j + 1) != "lower":
                return _norm(s), _body_after(text, lines, j), j + 1
        return None, _body_after(text, lines, i), i + 1
    if nxt != "lower" and tail[-1] not in ",;":
        loose = nxt in ("blank", "eof", "deco") or len(tail.split()) <= 4
        if _is_title(tail, loose):
            return _norm(tail), _body_after(text, lines, i), i + 1
    inline = _inline_title(text, rest, le)
    return (inline[0], inline[1], i + 1) if inline else (None, start, i + 1)


def _try_marker(
    text: str, lines: Lines, i: int, first: int, stack: list[_Open], ok: bool
) -> tuple[Section | None, int]:
    """A keyword or numbered heading on line ``i``; ``ok``: a paragraph may start there."""
    le = lines[i][1]
    m = _KEYWORD.match(text, first, le)
    if m and (m["num"] or (m["kw"] in _KW_UNNUMBERED and (m["sep"] or m.end() == le))):
        shape = "kw:" + ("section" if m["kw"][0] == "§" else m["kw"].lower())
        number, sep = m["num"], m["sep"]
    else:
        m = _MARKER.match(text, first, le)
        if m is None:
            return None, i
        shape = next(g for g in ("dec", "num", "paren", "rpar", "dot") if m[g])
        number, sep = m[shape], "marker"
        shape = "dec" if shape == "num" else shape
        if shape == "paren" and number in "cC" and _COPYRIGHT.match(text, m.end(), le):
            return None, i  # "(c) 2004 Acme" is a copyright line
    cls, value, comps = _classify(shape, number, stack) if number else ("", 0, ())
    if (number and not cls) or not (ok or _continues(stack, (shape, cls), value)):
        return None, i
    heading, body_start, nxt = _heading_and_body(text, lines, i, m.end(), first)
    opener = m.end() < le and (text[m.end()] in "\"“'‘" or text[m.end()].isupper())
    if not sep and heading is None and m.end() < le and not opener:
        return None, i  # "Section 2.1 of this Agreement ..." is a reference
    level = _place(stack, _Open((shape, cls), first - lines[i][0], value, comps or None))
    label = {"paren": f"({number})", "rpar": f"{number})"}.get(shape, number)
    return Section(label, heading, level, first, -1, body_start), nxt


def _shouting_goes_on(text: str, ls: int, le: int) -> bool:
    """Whether line [ls, le) continues a capitalised block: it shouts too or starts lowercase."""
    m = _NONSPACE.search(text, ls, le)
    if m is None or _DECO.match(text, m.start(), le) or _MARKER.match(text, m.start(), le):
        return False
    return text[m.start()].islower() or not _LOWER.search(text, m.start(), le)


def _try_unnumbered(text: str, lines: Lines, i: int, first: int) -> tuple[Section | None, int]:
    """A lone title-case line, or an ALL-CAPS heading of one or two lines, at line ``i``."""
    s = " ".join(text[first : lines[i][1]].split())
    alone = _kind_of_line(text, lines, i + 1) in ("blank", "deco", "eof")
    if alone and s[-1] not in ".,;:" and _is_title(s):
        return Section(None, _norm(s), 0, first, -1, _body_after(text, lines, i)), i + 1
    parts, j = [], i
    while j < min(len(lines), i + 3) and _is_caps(s := " ".join(text[slice(*lines[j])].split())):
        parts.append(s)
        j += 1
    if not 1 <= len(parts) <= 2 or len(_WORD.findall(" ".join(parts))) > 16:
        return None, i
    if j < len(lines) and _shouting_goes_on(text, *lines[j]):
        return None, i
    return Section(None, _norm(" ".join(parts)), 0, first, -1, _body_after(text, lines, j - 1)), j


def _close(text: str, heads: list[Section]) -> list[Section]:
    """Give each heading its end: the start of the next heading at its level or above."""
    ends = [len(text)] * len(heads)
    open_: list[int] = []
    for k, h in enumerate(heads):
        while open_ and heads[open_[-1]].level >= h.level:
            ends[open_.pop()] = h.start
        open_.append(k)
    out = []
    for h, end in zip(heads, ends, strict=True):
        while end > h.start and text[end - 1].isspace():
            end -= 1
        out.append(dataclasses.replace(h, end=end, body_start=min(h.body_start, end)))
    return out


def segment_sections(text: str) -> list[Section]:
    """Sections in document order; a level-n+1 section lies inside its level-n parent."""
    lines = _lines(text)
    heads: list[Section] = []
    stack: list[_Open] = []
    para_start, prev_punct, i = True, False, 0
    while i < len(lines):
        m = _NONSPACE.search(text, *lines[i])
        if m is None or _DECO.match(text, m.start(), lines[i][1]):
            para_start, i = True, i + 1
            continue
        head, nxt = _try_marker(text, lines, i, m.start(), stack, para_start or prev_punct)
        if head is None and para_start and text[m.start()].isupper():
            head, nxt = _try_unnumbered(text, lines, i, m.start())
            if head is not None:
                stack.clear()
        if head is None:
            nxt = i + 1
        else:
            heads.append(head)
        tail = text[slice(*lines[nxt - 1])].rstrip(" \t\"')]”’")
        para_start = head is not None and head.body_start > lines[nxt - 1][1]  # own-line heading
        prev_punct = not para_start and tail[-1:] in (".", ":", ";")
        i = nxt
    return _close(text, heads)


# ----------------------------------------------------------------------------- clauses


def _clause_ends_with_line(text: str, ls: int, le: int, first_line: bool, nxt: str) -> bool:
    """Whether a clause ends with line [ls, le): a heading without closing punctuation, or a
    line ending in ``:``, ``;`` or ``; and`` before a list item (``nxt``: next line or 'lower')."""
    m = _NONSPACE.search(text, ls, le)
    line = text[ls:le].strip()
    if m is None or nxt == "lower":
        return False
    if _LIST_LEAD_IN.search(line):
        return bool(_MARKER.match(nxt))
    if line[-1] in ".!?,":
        return False
    k = _KEYWORD.match(text, m.start(), le) or _MARKER.match(text, m.start(), le)
    if k and (k.re is _MARKER or k["num"]):
        rest = text[k.end() : le].strip()
        return not rest or _is_title(rest)
    return first_line and bool(_LOWER.search(nxt)) and _is_caps(line)


def _is_boundary(text: str, m: re.Match[str], a: int, b: int) -> bool:
    """Whether the ``.``/``!``/``?`` matched by ``_SENT_END`` in [a, b) ends a sentence."""
    if "!" in m["p"] or "?" in m["p"]:
        return True
    nxt = _NONSPACE.search(text, m.end(), b)
    if nxt is None:
        return True
    c = text[nxt.start()]
    tok = m["tok"].lstrip("([\"'“‘")
    low = tok.lower()
    if c.islower() or low in _NEVER_END or (low in _MAYBE_END and not c.isupper()):
        return False
    if _MARKER_TOK.fullmatch(tok):  # "1." or "Section 2." opening a line is a number
        lo = max(a, m.start() - 40)
        nl = text.rfind("\n", lo, m.start())
        line_start = nl + 1 if nl >= 0 else a if lo == a else -1
        return line_start < 0 or not _LINE_PREFIX.fullmatch(text, line_start, m.start())
    return True


def _emit(text: str, a: int, b: int, out: list[tuple[int, int]]) -> None:
    """Append [a, b) stripped of surrounding whitespace, if it holds a letter or digit."""
    m = _NONSPACE.search(text, a, b)
    if m is None:
        return
    while text[b - 1].isspace():
        b -= 1
    if _ALNUM.search(text, m.start(), b):
        out.append((m.start(), b))


def _paragraph(text: str, a: int, b: int, out: list[tuple[int, int]]) -> None:
    """Split the paragraph [a, b) after heading-only lines and at sentence ends."""
    seg, ls = a, a
    while ls <= b:
        nl = text.find("\n", ls, b)
        le = b if nl < 0 else nl
        if nl >= 0:
            nm = _NONSPACE.search(text, nl + 1, b)
            nn = text.find("\n", nl + 1, b)
            nxt = text[nl + 1 : nn if nn >= 0 else b]
            nxt = "lower" if nm and text[nm.start()].islower() else nxt
        if nl < 0 or _clause_ends_with_line(text, ls, nl, ls == seg, nxt):
            for m in _SENT_END.finditer(text, piece := seg, le):
                if _is_boundary(text, m, piece, le):
                    _emit(text, seg, m.end(), out)
                    seg = m.end()
            _emit(text, seg, le, out)
            seg = le + 1
        if nl < 0:
            break
        ls = nl + 1


def split_clauses(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Sentence spans in ``text[start:end]``, split at sentence ends and paragraph breaks.

    Spans are stripped of surrounding whitespace and hold at least one letter or digit.
    """
    start, end = max(0, start), len(text) if end is None else min(end, len(text))
    out: list[tuple[int, int]] = []
    if start >= end:
        return out
    pos = start
    for m in _PARA_BREAK.finditer(text, start, end):
        _paragraph(text, pos, m.start(), out)
        pos = m.end()
    _paragraph(text, pos, end, out)
    return out


# ----------------------------------------------------------------------------- definitions


def _definition_end(text: str, clauses: list[tuple[int, int]], k: int) -> int:
    """End of a definition in clause ``k``: one ending in ``means``/``:`` runs on through the
    list items (``(a) ...; or``) and lowercase continuations that complete its sentence."""
    end = clauses[k][1]
    tail = text[max(clauses[k][0], end - 9) : end]
    if not (tail.endswith(":") or _OPEN_DEF.search(tail)):
        return end
    for s, e in clauses[k + 1 : k + 12]:
        if not (_LIST_START.match(text, s) or text[s].islower()):
            break
        end = e
        if text[e - 1] in ".!?" or text[e - 2 : e - 1] in (".", "!", "?"):
            break
    return end


def find_definitions(text: str) -> list[Definition]:
    """Defined terms: quoted (``"X" means``), parenthetical (``(the "X")``), or unquoted
    (``X means``) inside a Definitions section, in document order.

    A definition's span is the whole sentence defining the term, without a leading list marker
    (``1.1``, ``(a)``), extended over list items when the sentence continues into them.
    """
    clauses = split_clauses(text)
    starts = [s for s, _ in clauses]
    found: dict[tuple[int, int, str], Definition] = {}

    def add(term: str, pos: int) -> None:
        k = bisect.bisect_right(starts, pos) - 1
        if k < 0 or clauses[k][1] <= pos:
            return
        cs, ce = clauses[k][0], _definition_end(text, clauses, k)
        lead = _LEAD_MARKER.match(text, cs, pos)
        cs = lead.end() if lead else cs
        term = " ".join(term.split())
        found.setdefault((cs, ce, term), Definition(term, cs, ce))

    for m in _DEF_QUOTED.finditer(text):
        add(m["term"], m.start())
    for m in _DEF_PAREN.finditer(text):
        add(m["term"], m.start())
    for sec in segment_sections(text):
        if sec.heading and _DEF_SECTION.search(sec.heading):
            line_start = text.rfind("\n", 0, sec.body_start) + 1
            for m in _DEF_UNQUOTED.finditer(text, line_start, sec.end):
                add(m["term"], m.start("term"))
    return sorted(found.values(), key=lambda d: (d.start, d.term))
