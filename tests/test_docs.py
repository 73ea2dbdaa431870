"""The docs stay true to the code: generated tables current, every job documented and runnable
with --help, README short, every relative link (and heading anchor) resolving."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_LIMIT = 12_000
REGENERATE = "run `python docs/render_flags.py` and commit the result"


def _load_renderer():
    spec = importlib.util.spec_from_file_location("render_flags", ROOT / "docs" / "render_flags.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rf = _load_renderer()


@pytest.fixture(scope="module")
def tables() -> dict[str, str]:
    return rf.rendered()


@pytest.fixture(scope="module")
def documented() -> dict[str, str]:
    out: dict[str, str] = {}
    for path in (rf.JOBS_MD, rf.EMBEDDERS_MD):
        for key, table in rf.blocks(path.read_text()).items():
            assert key not in out, f"<!-- {key} --> appears twice in docs/"
            out[key] = table
    return out


def test_every_job_has_a_table(tables, documented):
    assert len(rf.jobs()) >= 7  # the discovery itself works: the seven jobs of the design
    missing = sorted(set(tables) - set(documented))
    assert missing == [], f"no block for {missing} in docs/jobs.md or docs/embedders.md; add one, then {REGENERATE}"
    unknown = sorted(set(documented) - set(tables))
    assert unknown == [], f"blocks for jobs or tables that do not exist: {unknown}"


def test_generated_tables_are_current(tables, documented):
    stale = sorted(k for k in tables if k in documented and documented[k] != tables[k])
    assert stale == [], f"out of date: {stale}; {REGENERATE}"


def test_readme_is_short():
    size = len((ROOT / "README.md").read_text())
    assert size <= README_LIMIT, f"README.md has {size} characters (limit {README_LIMIT}); move reference text to docs/"


# --- links ---------------------------------------------------------------------------------------
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped (word characters, '-' and ' ' kept), spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for line in re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M).splitlines():
        if m := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line):
            base = slug(m.group(1))
            name, n = base, 0
            while name in found:  # GitHub numbers repeated headings: x, x-1, x-2
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    bad = []
    for target in LINK.findall(_prose(path.read_text())):
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            bad.append(f"{path.relative_to(root)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{path.relative_to(root)}: {target} (no heading with that anchor)")
    return bad


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_relative_links_resolve():
    bad = [b for path in doc_files() for b in broken_links(path)]
    assert bad == []


def test_link_checker_finds_broken_links(tmp_path):
    (tmp_path / "b.md").write_text("# Title: `x` and y\n## Title: x and y\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md) [ok](b.md#title-x-and-y-1) [ok](#own) [web](https://example.org/x)\n"
                    "# Own\n`[code](missing.md)`\n```\n[fenced](missing.md)\n```\n"
                    "[gone](c.md) [bad anchor](b.md#nope) ![img](pic.png)\n")
    assert broken_links(page, tmp_path) == ["a.md: c.md (no such file)", "a.md: b.md#nope (no heading with that anchor)",
                                            "a.md: pic.png (no such file)"]
    assert anchors(tmp_path / "b.md") == {"title-x-and-y", "title-x-and-y-1"}


# --- the generator -------------------------------------------------------------------------------
def test_argparse_table_renders_each_kind_of_flag():
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--path", required=True, help="a | b under <root>/raw/")
    p.add_argument("--mode", choices=("slow", "fast"), default="fast", help="speed (default %(default)s)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="repeatable; keeps `<as is>`")
    p.add_argument("--flag", action="store_true")
    p.add_argument("--names", type=str, default=["a", "b"], help="100%% sure")
    p.add_argument("--none", default=None, help=argparse.SUPPRESS)
    assert rf.argparse_table(p) == "\n".join([
        "| flag | default | meaning |",
        "| --- | --- | --- |",
        "| `--path` | required | a \\| b under `<root>`/raw/ |",
        "| `--mode` `{slow,fast}` | `fast` | speed (default fast) |",
        "| `--opt` `KEY=VALUE` |  | repeatable; keeps `<as is>` |",
        "| `--flag` | off |  |",
        "| `--names` | `a,b` | 100% sure |",
    ])


def test_yaml_comments_follow_nesting(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("defaults:\n  - schema\ntrain:\n  lr: 0.1   # step size\n  inner:\n    k: 2 # deep\n"
                    "  n: 3\nseed: 4  # top\n")
    assert rf._yaml_comments(path) == {"train.lr": "step size", "train.inner.k": "deep", "seed": "top"}


def test_update_rewrites_only_stale_blocks(tmp_path):
    path = tmp_path / "p.md"
    path.write_text("intro\n<!-- flags:a -->\nold\n<!-- /flags -->\nmiddle\n<!-- flags:b -->\nsame\n<!-- /flags -->\n"
                    "<!-- embedders -->\nold\n<!-- /embedders -->\nend\n")
    assert rf.update(path, {"a": "x", "flags:a": "new | table", "flags:b": "same", "embedders": "e"}) == ["flags:a", "embedders"]
    assert path.read_text() == ("intro\n<!-- flags:a -->\nnew | table\n<!-- /flags -->\nmiddle\n<!-- flags:b -->\nsame\n"
                                "<!-- /flags -->\n<!-- embedders -->\ne\n<!-- /embedders -->\nend\n")
    assert rf.update(path, {"flags:a": "new | table"}) == []


def test_pretrain_table_lists_every_schema_key():
    from ray_jobs.pretrain.config import PretrainConfig

    def keys(cls, prefix=""):
        import dataclasses

        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.default_factory):
                yield from keys(f.default_factory, prefix + f.name + ".")
            else:
                yield prefix + f.name

    listed = re.findall(r"^\| `([\w.]+)` \|", rf.flags_table("pretrain"), flags=re.M)
    assert listed == list(keys(PretrainConfig))
    assert "| `train.bucket_by_length` | bool | `true` |" in rf.flags_table("pretrain")


# --- every job's --help is the live reference ----------------------------------------------------
@pytest.mark.parametrize("job", rf.jobs())
def test_help_works(job):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    out = subprocess.run([sys.executable, "-m", f"ray_jobs.{job}", "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert ("usage: python -m ray_jobs." + job) in out.stdout or "Override anything in the config" in out.stdout
