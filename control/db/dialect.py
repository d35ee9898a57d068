"""SQLite's SQL, as the control plane writes it, in PostgreSQL's dialect.

Contract:
- `statement(sql)` turns one SQLite statement with `?` placeholders into PostgreSQL
  text for psycopg (`%s` placeholders, a literal `%` doubled: send it WITH a parameter
  sequence, even an empty one, so psycopg undoubles it). The translation is sqlglot's
  (`sqlite` to `postgres`: `IFNULL`, `IS NOT` to `IS DISTINCT FROM`, `instr`, NULL
  ordering kept as SQLite sorts) plus what sqlglot leaves alone or gets wrong: `INSERT
  OR IGNORE` becomes `ON CONFLICT DO NOTHING`, `COLLATE NOCASE` compares `LOWER()` of
  both sides, the keys of an `ON CONFLICT` lose the NULL ordering PostgreSQL refuses
  there, a subquery in FROM gets the name PostgreSQL 15 wants, an ORDER BY of a column
  that is never NULL keeps PostgreSQL's own NULL order (so an index serves it), and scalar `MAX`/`MIN` call the schema's `clawfleet_greatest`/`clawfleet_least`,
  NULL when an argument is (GREATEST and LEAST would skip it). Results are cached per statement text (the
  statements are the program's constants). `INSERT OR REPLACE` and anything sqlglot
  cannot parse raise `UnsupportedStatement`: nothing is sent half-translated. A
  savepoint's statements pass as they are.
- `bind(sql, params)` is `statement(sql)` with its parameters for psycopg: a sequence,
  or for SQLite's numbered `?N` (one value in several places) a mapping of `%(pN)s`
  names. A statement with both `?` and `?N` is refused.
- `script(ddl)` translates a migration (several statements) the same way, with
  SQLite's 64-bit INTEGER as BIGINT (PostgreSQL's INTEGER is 32 bits: byte counts and
  Stripe's timestamps would overflow), REAL as DOUBLE PRECISION (float4 cannot hold
  epoch seconds), and an index's columns without NULL ordering.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from control.errors import ClawfleetError

_NUMBERED = re.compile(r"\?(\d+)")
# The same words in both dialects; sqlglot parses them only as an opaque command, with a
# warning in the log.
_SAVEPOINT = re.compile(r"(SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT) \w+")
# `IN (?, ?, ...)` of plain placeholders, and what stands for one while it is translated
# (an identifier sqlglot keeps as it is, numbered in the order of the lists).
_IN_LIST = re.compile(r"\bIN\s*\(\s*\?(?!\d)(?:\s*,\s*\?(?!\d))*\s*\)", re.IGNORECASE)
_LIST_MARK = "clawfleet_in_list_"
_MARKED = re.compile(rf"IN \({_LIST_MARK}\d+\)")


class UnsupportedStatement(ClawfleetError):
    """A statement this module cannot translate (a bug in the caller's SQL for PostgreSQL)."""


def bind(sql: str, params: Iterable[Any]) -> tuple[str, Sequence[Any] | dict[str, Any]]:
    """The statement and its parameters as psycopg takes them: SQLite's numbered `?N`
    become the names `pN`, so that one value can serve several places."""
    values = tuple(params)
    if _NUMBERED.search(sql) is None:
        return statement(sql), values
    return statement(sql), {f"p{i}": value for i, value in enumerate(values, start=1)}


def statement(sql: str) -> str:
    """`sql` in PostgreSQL's dialect. Lists of placeholders (`IN (?, ?, ?)`: a batch's
    ids, as many as it holds) are translated once per shape, whatever their lengths:
    each new length was a new parse (whose trees are garbage for the collector) and a
    new entry pushing the program's constant statements out of the cache."""
    lengths = [m.group(0).count("?") for m in _IN_LIST.finditer(sql)]
    if not lengths:
        return _translated(sql)
    counter = iter(range(len(lengths)))
    shape = _IN_LIST.sub(lambda _: f"IN ({_LIST_MARK}{next(counter)})", sql)
    lists = iter(lengths)
    return _MARKED.sub(lambda _: "IN (" + ", ".join(["%s"] * next(lists)) + ")", _translated(shape))


@functools.lru_cache(maxsize=4096)
def _translated(sql: str) -> str:
    if _SAVEPOINT.fullmatch(sql):
        return sql
    if _NUMBERED.search(sql) is not None:
        if re.search(r"\?(?!\d)", sql):
            raise UnsupportedStatement(f"both ? and ?N in one statement: {sql!r}")
        sql = _NUMBERED.sub(r":p\1", sql)
    trees = _parse(sql)
    if len(trees) != 1:
        raise UnsupportedStatement(f"one statement expected, got {len(trees)}: {sql!r}")
    return _generate(_rewrite(trees[0]).transform(_index_order))


def script(ddl: str) -> list[str]:
    """A migration's statements, each in PostgreSQL's dialect."""
    return [_generate(_ddl_types(_rewrite(tree))) for tree in _parse(ddl)]


def _parse(sql: str) -> list[exp.Expr]:
    try:
        trees = sqlglot.parse(sql, read="sqlite")
    except SqlglotError as exc:
        raise UnsupportedStatement(f"cannot translate for PostgreSQL: {exc}") from exc
    return [tree for tree in trees if tree is not None]


def _generate(tree: exp.Expr) -> str:
    for literal in tree.find_all(exp.Literal):
        if literal.is_string and "%" in literal.this:
            literal.set("this", literal.this.replace("%", "%%"))
    return tree.sql(dialect="postgres")


def _rewrite(tree: exp.Expr) -> exp.Expr:
    if isinstance(tree, exp.Insert) and tree.args.get("alternative"):
        alternative = str(tree.args["alternative"]).upper()
        if alternative != "IGNORE" or tree.args.get("conflict"):
            raise UnsupportedStatement(f"INSERT OR {alternative} has no PostgreSQL twin")
        tree.set("alternative", None)
        tree.set("conflict", exp.OnConflict(duplicate=False, action=exp.var("DO NOTHING")))
    for conflict in tree.find_all(exp.OnConflict):
        keys = conflict.args.get("conflict_keys") or []
        conflict.set("conflict_keys", [_unordered(key) for key in keys])
    for n, subquery in enumerate(tree.find_all(exp.Subquery)):
        # PostgreSQL before 16 refuses a subquery in FROM without a name; SQLite needs none.
        if isinstance(subquery.parent, exp.From | exp.Join) and not subquery.alias:
            subquery.set("alias", exp.TableAlias(this=exp.to_identifier(f"_sub{n}")))
    tree = tree.transform(_nocase).transform(_scalar_extremes).transform(_unlimited)
    return tree.transform(_truth).transform(_counted_truths)


_TRUTHS = (exp.Predicate, exp.Connector, exp.Not)


def _unlimited(node: exp.Expr) -> exp.Expr:
    """SQLite's `LIMIT -1` (no limit, before an OFFSET) is PostgreSQL's `LIMIT NULL`."""
    if isinstance(node, exp.Limit) and isinstance(node.expression, exp.Neg):
        node.set("expression", exp.Null())
    return node


def _counted_truths(node: exp.Expr) -> exp.Expr:
    """`SUM(age <= ?)`, `MAX(id = ?)`: SQLite's comparisons are 0 or 1, PostgreSQL's
    booleans are not numbers; the aggregate is taken over 0 and 1, as on SQLite."""
    if isinstance(node, exp.Sum | exp.Avg | exp.Max | exp.Min) and isinstance(node.this, _TRUTHS):
        node.set("this", exp.Cast(this=node.this.copy(), to=exp.DataType.build("INT")))
    return node


def _truth(node: exp.Expr) -> exp.Expr:
    """A parameter as a truth value (`CASE WHEN ? THEN`, `x AND ?`, `NOT ?`): SQLite
    takes a number, PostgreSQL wants a boolean (and a Python bool is sent as 0 or 1,
    control/db/postgres_conn.py), so it is compared with 0."""
    if isinstance(node, exp.Is) and isinstance(node.this, exp.Placeholder):
        # `? IS NULL`: PostgreSQL must know the parameter's type; any value is NULL as
        # text exactly when it is NULL.
        node.set("this", exp.Cast(this=node.this.copy(), to=exp.DataType.build("TEXT")))
    if isinstance(node, exp.If | exp.Not | exp.Connector):
        for arg in ("this", "expression") if isinstance(node, exp.Connector) else ("this",):
            value = node.args.get(arg)
            if isinstance(value, exp.Placeholder):
                node.set(arg, exp.NEQ(this=value.copy(), expression=exp.Literal.number(0)))
    return node


_EXTREMES: dict[type[exp.Expr], str] = {exp.Greatest: "greatest", exp.Least: "least"}


def _scalar_extremes(node: exp.Expr) -> exp.Expr:
    """SQLite's scalar MAX/MIN is NULL when any argument is; PostgreSQL's GREATEST and
    LEAST skip NULLs. `clawfleet_greatest`/`clawfleet_least` (control/db/postgres_schema.py)
    answer as SQLite, each argument written once (a `?` stays one parameter)."""
    name = _EXTREMES.get(type(node))
    if name is None or node.args.get("ignore_nulls"):
        return node
    arguments = [node.this, *node.expressions]
    return exp.Anonymous(this=f"clawfleet_{name}", expressions=[a.copy() for a in arguments])


def _index_order(node: exp.Expr) -> exp.Expr:
    """`ORDER BY id` of a column that is never NULL in PostgreSQL's order (no NULLS
    FIRST): the same rows, and PostgreSQL can walk the column's index instead of
    sorting the whole table for a page (it does not match NULLS FIRST to an index
    of a NOT NULL column)."""
    order = node.parent
    select = order.parent if isinstance(order, exp.Order) else None
    if not (isinstance(node, exp.Ordered) and isinstance(node.this, exp.Column)):
        return node
    if not isinstance(select, exp.Select) or not _from_tables(select):
        return node  # a union's column, a subquery's, or one an outer join may leave NULL
    name = node.this.name
    if name in _never_null() and name not in {e.alias for e in select.expressions}:
        node.set("nulls_first", bool(node.args.get("desc")))  # PostgreSQL's own
    return node


def _from_tables(select: exp.Select) -> bool:
    """Whether `select` reads tables only, joined inner: its columns are theirs."""
    joins = select.args.get("joins") or []
    sources = [select.args.get("from_"), *joins]
    return all(s is not None and isinstance(s.this, exp.Table) for s in sources) and not any(
        j.side for j in joins
    )


@functools.cache
def _never_null() -> frozenset[str]:
    """The columns NOT NULL (or a primary key) in every table of the schema that has
    one of that name; none when a table's DDL cannot be read."""
    from control.db import postgres_schema  # it translates with this module
    from control.db.migrations import MIGRATIONS

    never: set[str] = set()
    maybe: set[str] = set()
    for version in range(1, len(MIGRATIONS) + 1):
        for ddl in postgres_schema.migration(version):
            if not re.match(r"\s*(CREATE TABLE|ALTER TABLE)", ddl, re.IGNORECASE):
                continue  # functions, triggers, indexes: no column is declared
            try:
                tree = sqlglot.parse_one(ddl, read="postgres")
            except SqlglotError:
                return frozenset()
            keys = {c.name for key in tree.find_all(exp.PrimaryKey) for c in key.expressions}
            for column in tree.find_all(exp.ColumnDef):
                kinds = {type(c.args.get("kind")) for c in column.constraints}
                required = kinds & {exp.NotNullColumnConstraint, exp.PrimaryKeyColumnConstraint}
                (never if required or column.name in keys else maybe).add(column.name)
    return frozenset(never - maybe)


def _unordered(key: exp.Expr) -> exp.Expr:
    return key.this if isinstance(key, exp.Ordered) else key


def _is_nocase(node: exp.Expr) -> bool:
    return isinstance(node, exp.Collate) and node.expression.name.upper() == "NOCASE"


def _nocase(node: exp.Expr) -> exp.Expr:
    """`a = b COLLATE NOCASE` compares LOWER(a) and LOWER(b); a NOCASE index is one
    on LOWER(column). (SQLite's NOCASE folds ASCII only; LOWER folds more, which can
    only find more rows for an address typed in another case.)"""
    if isinstance(node, exp.Binary) and (_is_nocase(node.left) or _is_nocase(node.right)):
        left, right = (side.this if _is_nocase(side) else side for side in (node.left, node.right))
        node.set("this", exp.Lower(this=left.copy()))
        node.set("expression", exp.Lower(this=right.copy()))
        return node
    if _is_nocase(node):
        return exp.Lower(this=node.this.copy())
    return node


def _ddl_types(tree: exp.Expr) -> exp.Expr:
    for kind in tree.find_all(exp.DataType):
        if kind.this in (exp.DataType.Type.INT, exp.DataType.Type.BIGINT):
            kind.set("this", exp.DataType.Type.BIGINT)
        elif kind.this in (exp.DataType.Type.FLOAT, exp.DataType.Type.DOUBLE):
            kind.set("this", exp.DataType.Type.DOUBLE)
    for index in tree.find_all(exp.IndexParameters):
        columns = index.args.get("columns") or []
        index.set("columns", [_unordered(column) for column in columns])
    return tree
