"""A small SQLite tokenizer: enough to cut stored DDL into clauses.

PRAGMAs give columns, keys, indexes and foreign keys, but not CHECK
constraints, generated-column expressions or per-column collations; those are
only in ``sqlite_schema.sql``. We split that text at top-level commas and
pick the clauses out by keyword, never by regular expressions over raw SQL
(quotes, comments and nested parentheses defeat those).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Token:
    kind: str  # "word", "quoted", "string", "number", "punct", "blob"
    text: str
    start: int
    end: int

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "word" else ""


def tokenize(sql: str) -> list[Token]:
    """Tokens of ``sql`` without whitespace and comments."""
    out: list[Token] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c in "'\"`[":
            close = {"'": "'", '"': '"', "`": "`", "[": "]"}[c]
            j = i + 1
            while j < n:
                if sql[j] == close:
                    if close != "]" and j + 1 < n and sql[j + 1] == close:
                        j += 2  # doubled quote inside a quoted string
                        continue
                    break
                j += 1
            kind = "string" if c == "'" else "quoted"
            if c == "'" and out and out[-1].kind == "word" and out[-1].upper == "X" \
                    and out[-1].end == i:
                out.pop()
                kind = "blob"
                i -= 1
            out.append(Token(kind, sql[i : j + 1], i, j + 1))
            i = j + 1
        elif c.isdigit() or (c == "." and i + 1 < n and sql[i + 1].isdigit()):
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] == "." or
                             (sql[j] in "+-" and sql[j - 1] in "eE")):
                j += 1
            out.append(Token("number", sql[i:j], i, j))
            i = j
        elif c.isalpha() or c == "_" or ord(c) > 127 or c == "$":
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] in "_$" or ord(sql[j]) > 127):
                j += 1
            out.append(Token("word", sql[i:j], i, j))
            i = j
        else:
            two = sql[i : i + 2]
            if two in ("<=", ">=", "<>", "!=", "==", "||", "<<", ">>", "->"):
                width = 3 if sql[i : i + 3] == "->>" else 2
                out.append(Token("punct", sql[i : i + width], i, i + width))
                i += width
            else:
                out.append(Token("punct", c, i, i + 1))
                i += 1
    return out


def unquote(name: str) -> str:
    """The identifier a (possibly quoted) SQLite name denotes."""
    if len(name) >= 2 and name[0] in "\"`[" :
        close = {"\"": "\"", "`": "`", "[": "]"}[name[0]]
        inner = name[1:-1]
        return inner if close == "]" else inner.replace(close * 2, close)
    if len(name) >= 2 and name[0] == "'":
        return name[1:-1].replace("''", "'")
    return name


def split_top_level(tokens: list[Token]) -> list[list[Token]]:
    """Split tokens at commas that are not inside parentheses."""
    parts: list[list[Token]] = [[]]
    depth = 0
    for t in tokens:
        if t.kind == "punct" and t.text == "(":
            depth += 1
        elif t.kind == "punct" and t.text == ")":
            depth -= 1
        if depth == 0 and t.kind == "punct" and t.text == ",":
            parts.append([])
        else:
            parts[-1].append(t)
    return [p for p in parts if p]


def paren_group(tokens: list[Token], open_index: int) -> int:
    """Index of the ``)`` matching the ``(`` at ``open_index``."""
    depth = 0
    for k in range(open_index, len(tokens)):
        t = tokens[k]
        if t.kind == "punct" and t.text == "(":
            depth += 1
        elif t.kind == "punct" and t.text == ")":
            depth -= 1
            if depth == 0:
                return k
    raise ValueError("unbalanced parentheses")


def text_between(sql: str, tokens: list[Token], first: int, last: int) -> str:
    """The original SQL text from token ``first`` to token ``last`` inclusive."""
    return sql[tokens[first].start : tokens[last].end]
