"""The language reference names every block, key and statement the schema knows."""
from pathlib import Path

from planc import schema as S

DOC = (Path(__file__).resolve().parents[1] / "docs" / "language.md").read_text()


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
