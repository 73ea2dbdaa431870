"""Regenerate the tables in docs/ that are read off the code: every job's flags, and the embedders.

    python docs/render_flags.py           # rewrite the generated blocks in place
    python docs/render_flags.py --check   # exit 1 and name the blocks that are out of date

A generated block sits between markers in a Markdown file and is replaced whole:

    <!-- flags:generate_embeddings -->   from ray_jobs/generate_embeddings/job.py: build_parser()
    <!-- flags:pretrain -->              a Hydra job (it has configs/config.yaml): keys and types of the
                                         schema PretrainConfig in ray_jobs/pretrain/config.py, defaults
                                         and trailing comments from configs/config.yaml
    <!-- embedders -->                   every registered embedder, its defaults and options
    <!-- /flags --> or <!-- /embedders --> closes the block.

A job is a folder ray_jobs/<job>/ with a __main__.py; it needs a block in docs/jobs.md
(tests/test_docs.py fails when one is missing or stale). Run from the repository root or anywhere:
the repository root is put first on sys.path, so this checkout's code is the one described.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
JOBS_MD = DOCS / "jobs.md"
EMBEDDERS_MD = DOCS / "embedders.md"
BLOCK = re.compile(r"<!-- (flags:\w+|embedders) -->\n.*?<!-- /(?:flags|embedders) -->", re.S)


def jobs() -> list[str]:
    """Every runnable job: a package under ray_jobs/ with a __main__.py, in name order."""
    return sorted(p.parent.name for p in (ROOT / "ray_jobs").glob("*/__main__.py"))


def _cell(text: str) -> str:
    """Markdown-safe table cell: `|` escaped; <placeholders> in code spans (else read as HTML tags)."""
    parts = str(text).replace("\n", " ").replace("|", "\\|").split("`")
    parts[::2] = [re.sub(r"<[^<>`]+>", lambda m: f"`{m.group(0)}`", p) for p in parts[::2]]
    return "`".join(parts)


def _code(value) -> str:
    return f"`{value}`" if value not in ("", None) else ""


def _argparse_default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "off" if action.default is False else "on"
    default = action.default
    if default is None or default == [] or default is argparse.SUPPRESS:
        return ""
    if isinstance(default, (list, tuple)):
        default = ",".join(map(str, default))
    return _code(default)


def argparse_table(parser: argparse.ArgumentParser) -> str:
    rows = ["| flag | default | meaning |", "| --- | --- | --- |"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help is argparse.SUPPRESS:
            continue
        flag = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}`"
        if action.choices is not None:
            flag += " `{" + ",".join(map(str, action.choices)) + "}`"
        elif action.metavar:
            flag += f" `{action.metavar}`"
        text = (action.help or "") % {**vars(action), "prog": parser.prog} if action.help else ""
        rows.append(f"| {flag} | {_argparse_default(action)} | {_cell(text)} |")
    return "\n".join(rows)


def _yaml_comments(path: Path) -> dict[str, str]:
    """{dotted.key: trailing comment} of a YAML file written as nested `key: value  # comment` lines."""
    comments, stack = {}, []  # stack: (indent, key)
    for line in path.read_text().splitlines():
        m = re.match(r"^(\s*)([A-Za-z_][\w-]*):(.*?)(?:\s+#\s*(.*))?$", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        if m.group(4):
            comments[".".join(k for _, k in stack)] = m.group(4).strip()
    return comments


def _yaml_value(value) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def hydra_table(job: str) -> str:
    """The config keys of a Hydra job: schema (keys, types) + configs/config.yaml (defaults, comments)."""
    import yaml

    schema = importlib.import_module(f"ray_jobs.{job}.config")
    top = getattr(schema, job.title().replace("_", "") + "Config")  # ray_jobs/pretrain/config.py: PretrainConfig
    config_yaml = ROOT / "ray_jobs" / job / "configs" / "config.yaml"
    values, comments = yaml.safe_load(config_yaml.read_text()), _yaml_comments(config_yaml)
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]

    def walk(cls, prefix: str, node: dict) -> None:
        for f in dataclasses.fields(cls):
            key, value = prefix + f.name, (node or {}).get(f.name)
            if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
                walk(f.default_factory, key + ".", value)
                continue
            kind = f.type.__name__ if isinstance(f.type, type) else str(f.type)  # str under PEP 563
            kind = re.sub(r"^(?:typing\.)?Optional\[(.*)\]$", r"\1 or null", kind)
            rows.append(f"| `{key}` | {kind} | {_yaml_value(value)} | {_cell(comments.get(key, ''))} |")

    walk(top, "", values)
    return "\n".join(rows)


def flags_table(job: str) -> str:
    if (ROOT / "ray_jobs" / job / "configs" / "config.yaml").is_file():
        return hydra_table(job)
    module = importlib.import_module(f"ray_jobs.{job}.job")
    if not hasattr(module, "build_parser"):
        raise SystemExit(f"ray_jobs/{job}/job.py has no build_parser(); the flag table is read from it")
    return argparse_table(module.build_parser())


def _option(value) -> str:
    """A default as typed after --audio_option / --symbolic_option KEY= (values are read as JSON)."""
    if isinstance(value, str):
        return value or '""'
    return json.dumps(value)


def embedders_table() -> str:
    from embedders.base import EmbedderError
    from embedders.registry import available, get_embedder_class

    rows = ["| name | modality | input | dim (default config) | options (defaults) | module |",
            "| --- | --- | --- | --- | --- | --- |"]
    for name in available():
        cls = get_embedder_class(name)
        try:
            dim = str(cls.output_dim(cls.Config()))
        except EmbedderError:
            dim = "from the checkpoint"
        source = f"{cls.sample_rate / 1000:g} kHz mono audio" if cls.sample_rate else "MIDI"
        options = ", ".join(f"`{f.name}={_option(f.default)}`" for f in dataclasses.fields(cls.Config))
        path = cls.__module__.replace(".", "/") + ".py"
        rows.append(f"| `{name}` | {cls.modality} | {source} | {dim} | {_cell(options)} | `{path}` |")
    return "\n".join(rows)


def rendered() -> dict[str, str]:
    """{marker key: table} for every block the docs must hold."""
    out = {f"flags:{job}": flags_table(job) for job in jobs()}
    out["embedders"] = embedders_table()
    return out


def blocks(text: str) -> dict[str, str]:
    """{marker key: table between the markers} of one Markdown text."""
    return {m.group(1): m.group(0).split("\n", 1)[1].rsplit("\n", 1)[0] for m in BLOCK.finditer(text)}


def update(path: Path, tables: dict[str, str]) -> list[str]:
    """Rewrite the blocks of ``path`` whose table changed; return their keys."""
    text = path.read_text()
    changed = [k for k, v in blocks(text).items() if k in tables and v != tables[k]]

    def replace(m: re.Match) -> str:
        key = m.group(1)
        if key not in tables:
            return m.group(0)
        close = "flags" if key.startswith("flags:") else key
        return f"<!-- {key} -->\n{tables[key]}\n<!-- /{close} -->"

    if changed:
        path.write_text(BLOCK.sub(replace, text))
    return changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python docs/render_flags.py", description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block is stale or missing")
    args = p.parse_args(argv)
    tables = rendered()
    present = {k for path in (JOBS_MD, EMBEDDERS_MD) for k in blocks(path.read_text())}
    missing = sorted(set(tables) - present)
    if args.check:
        stale = [k for path in (JOBS_MD, EMBEDDERS_MD) for k, v in blocks(path.read_text()).items()
                 if k in tables and v != tables[k]]
        for key in stale:
            print(f"out of date: <!-- {key} -->")
    else:
        stale = [k for path in (JOBS_MD, EMBEDDERS_MD) for k in update(path, tables)]
        for key in stale:
            print(f"updated: <!-- {key} -->")
    for key in missing:
        where = "docs/jobs.md" if key.startswith("flags:") else "docs/embedders.md"
        print(f"missing: add a '<!-- {key} -->' ... block to {where}, then rerun")
    return 1 if missing or (args.check and stale) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
