"""The references say what the code knows: docs/language.md names every block, key and statement of
the schema; docs/rules.md lists exactly the rules of planc/rules.py, each with its registered line."""
import re
from pathlib import Path

from planc import schema as S
from planc.rules import all_rules

DOCS = Path(__file__).resolve().parents[1] / "docs"
DOC = (DOCS / "language.md").read_text()


def _names():
    for block in S.BLOCKS.values():
        yield block.name
        for key in block.keys.values():
            yield key.name
            for opts in key.options.values():
                yield from opts
        for st in block.stmts.values():
            yield st.name
            yield from st.options
            yield from (st.body or {})
            yield from st.styles


def test_every_schema_name_is_documented():
    missing = sorted({n for n in _names() if f"`{n}" not in DOC and f" {n} " not in DOC})
    assert not missing, f"docs/language.md does not mention: {missing}"


def test_every_choice_is_documented():
    """Each enum choice (runtime/vocab.py's lists, mostly) appears as a word in docs/language.md."""
    keys = [k for b in S.BLOCKS.values() for k in b.keys.values()]
    keys += [o for k in keys for opts in k.options.values() for o in opts.values()]
    keys += [k for b in S.BLOCKS.values() for st in b.stmts.values() for k in (*st.options.values(),
                                                                                 *(st.body or {}).values())]
    missing = sorted({c for k in keys for c in k.choices if not re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])", DOC)})
    assert not missing, f"docs/language.md does not mention the choices: {missing}"


def test_rules_md_is_the_rule_registry():
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| (.*) \|$", (DOCS / "rules.md").read_text(), re.M)
    documented = dict(rows)
    assert len(documented) == len(rows), "a rule is listed twice in docs/rules.md"
    rules = all_rules()
    assert sorted(set(rules) - set(documented)) == [], "rules missing from docs/rules.md"
    assert sorted(set(documented) - set(rules)) == [], "docs/rules.md lists rules planc does not have"
    differ = {r: (documented[r], line) for r, line in rules.items() if documented[r] != line}
    assert not differ, f"docs/rules.md line != the rule's RULES line: {differ}"
