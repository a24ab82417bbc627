"""Give a parsed plan its meaning: names, types, ranges and defaults from planc/schema.py.

The result is a `Plan` (planc/plan.py): flat settings keyed `block.key`, the parallelize rules and
the data sources, each keeping the span it came from. Each written value is typed by planc/values.py.
"""
from __future__ import annotations

import re

from . import schema as S
from .diagnostics import Diagnostic, Span, did_you_mean, elide, suggest
from .plan import Glob, Plan, Rule, Setting, Source
from .syntax import Assign, Document, Stmt, Value
from .values import BAD, typed

_REQUIRED = [b.name for b in S.BLOCKS.values() if b.required]
RULES = {
    "plan-name": "`plan \"NAME\"` comes first; NAME can name a file and does not shadow an importable module "
                 "(generated/NAME.py would be imported in its place)",
    "unknown-block": f"blocks are {', '.join(S.BLOCKS)}",
    "duplicate-block": "each block appears once",
    "missing-block": f"{', '.join(_REQUIRED[:-1])} and {_REQUIRED[-1]} are present",
    "block-args": "a block takes a { body } and no arguments",
    "block-body": "a block has a { body }",
    "unknown-key": "keys and options are known names (with did-you-mean)",
    "duplicate-key": "a key is set once per block",
    "missing-key": "required keys are present",
    "unknown-statement": "statements are known in their block",
    "statement-args": "statements get the arguments they take",
    "source-name": "source names are simple and do not shadow data keys",
    "type": "values have the key's type",
    "range": "values are in the key's range, at least as strict as what each value feeds (AdamW, torch and "
              "numpy seeding, the loader, the schedule: betas in [0, 1), eps > 0, seed 0 .. 2**64 - 1, weight > 0)",
    "unknown-value": "enum values are known (with did-you-mean)",
}


_PLAN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def _shadows_a_module(name: str) -> bool:
    """A script named like an importable module (json, torch, runtime, ...) would be imported in its
    place by the script itself."""
    import importlib.util
    import sys

    if not name.isidentifier():
        return False  # `llama3-70b` can never be imported
    if name in sys.stdlib_module_names:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class _Resolver:
    def __init__(self, doc: Document):
        self.doc = doc
        self.plan = Plan(doc)
        self.diags: list[Diagnostic] = []
        # (scope, name) of required names a reported typo most likely meant (`stpes = 10`, `modle { }`):
        # one mistake, one diagnostic, so they are not also reported missing
        self.meant: set[tuple[int, str]] = set()

    def typo(self, scope: dict, name: str, choices) -> None:
        near = name if name in choices else did_you_mean(name, choices)
        if near:
            self.meant.add((id(scope), near))

    def missing(self, scope: dict, name: str) -> bool:
        return name not in scope and (id(scope), name) not in self.meant

    def err(self, rule, message, span, help=None, severity="error"):
        self.diags.append(Diagnostic(rule, message, span, help, severity))

    # top level ---------------------------------------------------------------------------------
    def run(self) -> tuple[Plan, list[Diagnostic]]:
        seen: dict[str, Span] = {}
        for entry in self.doc.entries:
            if isinstance(entry, Assign):
                self.err("unknown-block", f"`{entry.key} = ...` cannot stand outside a block", entry.key_span,
                         "a plan holds `plan \"NAME\"` and blocks: " + ", ".join(S.BLOCKS))
                continue
            if entry.name in seen:
                self.err("duplicate-block", f"`{entry.name}` is given twice (first at line {seen[entry.name].line})",
                         entry.name_span, "merge the two into one block")
                continue
            if entry.name == "plan":
                seen["plan"] = entry.name_span
                self.plan_stmt(entry)
            elif entry.name in S.BLOCKS:
                seen[entry.name] = entry.name_span
                self.block(S.BLOCKS[entry.name], entry)
            else:
                self.err("unknown-block", f"unknown block `{entry.name}`", entry.name_span,
                         suggest(entry.name, S.TOP_LEVEL, "blocks"))
                self.typo(seen, entry.name, S.TOP_LEVEL)
        first = Span(self.doc.file, 1, 1)
        if self.missing(seen, "plan"):
            self.err("missing-block", "the plan has no name", first, 'start the file with `plan "NAME"`')
        for spec in S.BLOCKS.values():
            if spec.name not in seen:
                if spec.required and self.missing(seen, spec.name):
                    self.err("missing-block", f"the plan has no `{spec.name}` block", self.plan.name_span or first,
                             f"add `{spec.name} {{ ... }}` ({spec.doc})")
                self.defaults(spec)
        return self.plan, self.diags

    def plan_stmt(self, st: Stmt):
        if st.body is not None or st.options or len(st.args) != 1 or st.args[0].kind != "string":
            self.err("plan-name", "`plan` takes one string: its name", st.span, 'write `plan "my-plan"`')
            return
        name = st.args[0].value
        self.plan.name_span = st.args[0].span
        if not _PLAN_NAME.fullmatch(name):
            self.err("plan-name", f"plan name {elide(repr(name))} cannot be a file name", st.args[0].span,
                     "use letters, digits, `_`, `-` and `.` (it becomes generated/NAME.py)")
            return
        if _shadows_a_module(name):
            self.err("plan-name", f"generated/{name}.py would shadow the module `{name}` that the script imports "
                     "(a script's own folder comes first on sys.path)", st.args[0].span,
                     f'rename the plan, e.g. `plan "{name}-run"`')
            return
        self.plan.name = name

    def defaults(self, spec: S.BlockSpec):
        for key in spec.keys.values():
            self.default(spec.name, key)
        for st in spec.stmts.values():
            if st.body is not None and st.once:
                for key in st.body.values():
                    self.default(spec.name, key)

    def default(self, block: str, key: S.Key):
        name = key.setting or f"{block}.{key.name}"
        if name not in self.plan.settings:
            self.plan.settings[name] = Setting(None if key.required else key.default)
        if key.type == "enum" and key.options:
            chosen = self.plan.settings[name].value
            for opt in key.options.get(chosen, {}).values():
                oname = f"{block}.{opt.name}"
                if oname not in self.plan.settings:
                    self.plan.settings[oname] = Setting(None if opt.required else opt.default)

    # blocks ------------------------------------------------------------------------------------
    def block(self, spec: S.BlockSpec, st: Stmt):
        self.plan.blocks[spec.name] = st.name_span
        self.plan.block_spans[spec.name] = st.span
        if st.args or st.options:
            self.err("block-args", f"`{spec.name}` takes no arguments, only a {{ body }}", st.span,
                     f"write `{spec.name} {{ ... }}`")
        if st.body is None:
            self.err("block-body", f"`{spec.name}` needs a {{ body }}", st.span, f"write `{spec.name} {{ ... }}`")
            self.defaults(spec)
            return
        written: dict[str, Span] = {}
        once: dict[str, Span] = {}
        for entry in st.body.entries:
            if isinstance(entry, Assign):
                self.assign(spec, entry, written)
            else:
                self.statement(spec, entry, once, written)
        for key in spec.keys.values():
            # a key written with a refused value was reported where it is written: not missing too
            if key.required and self.missing(written, key.name):
                self.err("missing-key", f"`{spec.name}` needs `{key.name}` ({key.doc})", st.name_span,
                         f"add `{key.name} = ...` to the `{spec.name}` block")
        self.defaults(spec)

    def assign(self, spec: S.BlockSpec, a: Assign, written: dict[str, Span], prefix: str | None = None,
               keys=None, where: str | None = None):
        keys = spec.keys if keys is None else keys
        where = where or f"`{spec.name}`"
        if a.key not in keys:
            if a.key in spec.stmts:
                self.err("unknown-key", f"`{a.key}` is a statement, not a key", a.key_span,
                         f"write `{a.key} ...` without `=`")
            else:
                self.err("unknown-key", f"unknown key `{a.key}` in {where}", a.key_span,
                         suggest(a.key, keys, "keys"))
                self.typo(written, a.key, keys)
            return
        if a.key in written:
            self.err("duplicate-key", f"`{a.key}` is set twice in {where} (first at line {written[a.key].line})",
                     a.key_span, "keep one")
            return
        written[a.key] = a.key_span
        key = keys[a.key]
        value = typed(key, a.value, self.err)
        if value is BAD:
            return
        name = key.setting or f"{prefix or spec.name}.{key.name}"
        self.plan.settings[name] = Setting(value, a.value.span, a.span)
        if key.type == "enum" and a.value.body is not None:
            self.value_options(spec, key, a.value, value)
        elif key.type == "enum" and key.options and value in key.options:
            for opt in key.options[value].values():
                if opt.required:
                    self.err("missing-key", f"`{value}` needs `{opt.name}` ({opt.doc})", a.value.span,
                             f"write `{key.name} = {value} {{ {opt.name} = ... }}`")

    def value_options(self, spec: S.BlockSpec, key: S.Key, v: Value, chosen):
        opts = key.options.get(chosen)
        if opts is None:
            self.err("unknown-key", f"`{chosen}` takes no options", v.body.span,
                     f"write `{key.name} = {chosen}`")
            return
        written: dict[str, Span] = {}
        for entry in v.body.entries:
            if isinstance(entry, Stmt):
                self.err("unknown-key", f"`{entry.name}` must be written `{entry.name} = value`", entry.name_span,
                         suggest(entry.name, opts, f"options of {chosen}"))
                self.typo(written, entry.name, opts)
                continue
            self.assign(spec, entry, written, keys=opts, where=f"`{chosen}`")
        for opt in opts.values():
            if opt.required and self.missing(written, opt.name):
                self.err("missing-key", f"`{chosen}` needs `{opt.name}` ({opt.doc})", v.span,
                         f"add `{opt.name} = ...` inside the braces")

    def statement(self, spec: S.BlockSpec, st: Stmt, once: dict[str, Span], written: dict[str, Span]):
        if st.name not in spec.stmts:
            self.typo(written, st.name, spec.keys)
            if st.name in spec.keys:
                for o in st.options:  # `steps 10  global_batch = 8`: the keys after it became its options
                    self.typo(written, o.key, spec.keys)
                self.err("unknown-statement", f"`{st.name}` is a key: it needs `=`", st.name_span,
                         f"write `{st.name} = ...`")
            else:
                self.err("unknown-statement", f"unknown statement `{st.name}` in `{spec.name}`", st.name_span,
                         suggest(st.name, list(spec.stmts) + list(spec.keys), "valid here"))
            return
        sspec = spec.stmts[st.name]
        if sspec.once:
            if st.name in once:
                self.err("duplicate-key", f"`{st.name}` is given twice (first at line {once[st.name].line})",
                         st.name_span, "keep one")
                return
            once[st.name] = st.name_span
        if sspec.args == "label":
            self.source(spec, sspec, st)
        elif sspec.body is not None:
            self.stmt_body(spec, sspec, st)
        else:
            self.rule(sspec, st)

    def stmt_body(self, spec, sspec: S.StmtSpec, st: Stmt):
        if st.args or st.options or st.body is None:
            self.err("statement-args", f"`{st.name}` takes only a {{ body }}", st.span,
                     f"write `{st.name} {{ {', '.join(k + ' = ...' for k in sspec.body)} }}`")
            return
        written: dict[str, Span] = {}
        for entry in st.body.entries:
            if isinstance(entry, Stmt):
                self.err("unknown-key", f"`{entry.name}` must be written `{entry.name} = value`", entry.name_span,
                         suggest(entry.name, sspec.body, f"keys of {st.name}"))
                continue
            self.assign(spec, entry, written, keys=sspec.body, where=f"`{st.name}`")

    def source(self, spec, sspec: S.StmtSpec, st: Stmt):
        if len(st.args) != 1 or st.args[0].kind != "string" or st.options:
            self.err("statement-args", f"`{st.name}` takes a name in quotes, then a {{ body }}", st.span,
                     f'write `{st.name} "web" {{ path = "..." }}`')
            return
        name = st.args[0].value
        into = self.plan.sources if spec.name == "data" else self.plan.val_sources  # data or validation
        if any(s.name == name for s in into):
            self.err("duplicate-key", f"two sources are named {elide(repr(name))}", st.args[0].span, "give each a name of its own")
            return
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name in spec.keys:
            self.err("source-name", f"source name {elide(repr(name))} cannot name a setting ({spec.name}.NAME.path)",
                     st.args[0].span, f"use letters, digits and `_`, and not a key of `{spec.name}`")
            return
        src = Source(name, st.span, {})
        if st.body is None:
            self.err("missing-key", f"source {name!r} needs a body with `path`", st.span,
                     f'write `source "{name}" {{ path = "..." }}`')
            return
        written: dict[str, Span] = {}
        for entry in st.body.entries:
            if isinstance(entry, Stmt):
                self.err("unknown-key", f"`{entry.name}` must be written `{entry.name} = value`", entry.name_span,
                         suggest(entry.name, sspec.body, "keys of a source"))
                self.typo(written, entry.name, sspec.body)
                continue
            self.assign(spec, entry, written, prefix=f"{spec.name}.{name}", keys=sspec.body, where=f"source {name!r}")
        for key in sspec.body.values():
            full = f"{spec.name}.{name}.{key.name}"
            if key.required and self.missing(written, key.name):
                self.err("missing-key", f"source {name!r} needs `{key.name}` ({key.doc})", st.name_span,
                         f"add `{key.name} = ...`")
            setting = self.plan.settings.get(full) or Setting(None if key.required else key.default)
            self.plan.settings[full] = setting
            src.settings[key.name] = setting
        into.append(src)

    def rule(self, sspec: S.StmtSpec, st: Stmt):
        if st.body is not None:
            self.err("statement-args", f"`{st.name}` takes no {{ body }}", st.body.span, sspec.doc)
        style = None
        args = list(st.args)
        if sspec.args == "style+globs":
            head = args.pop(0) if args else None
            plan_opt = next((o for o in st.options if o.key == "plan"), None)
            if head is None or head.kind != "word":
                if plan_opt is None:
                    self.err("statement-args", f"`{st.name}` needs a style first: {', '.join(sspec.styles)}",
                             st.name_span, f"e.g. `{st.name} {sspec.styles[0]} \"model.layers.*\"`")
                    return
                if head is not None:
                    args.insert(0, head)
            elif head.value not in sspec.styles:
                self.err("unknown-value", f"unknown {st.name} style `{head.value}`", head.span,
                         suggest(head.value, sspec.styles, "styles"))
                return
            else:
                style = head.value
        globs, flags = [], {}
        for a in args:
            if a.kind == "string":
                globs.append(Glob(a.value, a.span))
            elif a.kind == "word" and a.value in sspec.options and sspec.options[a.value].type == "bool":
                flags[a.value] = Setting(True, a.span, a.span)
            elif a.kind == "word":
                self.err("unknown-key", f"unknown option `{a.value}` of `{st.name}`", a.span,
                         suggest(a.value, sspec.options, "options") if sspec.options else
                         "module names go in quotes: \"model.layers.*\"")
            else:
                self.err("statement-args", f"`{st.name}` takes module globs in quotes, not {a.kind}s", a.span,
                         'e.g. "model.layers.*"')
        for o in st.options:
            if o.key not in sspec.options:
                self.err("unknown-key", f"unknown option `{o.key}` of `{st.name}`", o.key_span,
                         suggest(o.key, sspec.options, "options") if sspec.options else f"`{st.name}` has no options")
                continue
            v = typed(sspec.options[o.key], o.value, self.err)
            if v is not BAD:
                flags[o.key] = Setting(v, o.value.span, o.span)
        for name, key in sspec.options.items():
            # a written option with a refused value was reported where it is written: not missing too
            if key.required and name not in flags and not any(o.key == name for o in st.options):
                self.err("missing-key", f"`{st.name}` needs `{name} = ...` ({key.doc})", st.span,
                         f"e.g. `{st.name} \"model.visual\"  {name} = 0.1`")
                return
            flags.setdefault(name, Setting(key.default))
        if sspec.args in ("globs", "style+globs") and not globs and flags.get("plan", Setting(None)).value is None:
            self.err("statement-args", f"`{st.name}` needs at least one module glob", st.span,
                     f'e.g. `{st.name}{" " + style if style else ""} "model.layers.*"`')
            return
        if sspec.args == "none" and globs:
            self.err("statement-args", f"`{st.name}` takes no module globs", globs[0].span, sspec.doc)
        self.plan.rules.append(Rule(st.name, style, globs, flags, st.span))


def resolve(doc: Document) -> tuple[Plan, list[Diagnostic]]:
    return _Resolver(doc).run()
