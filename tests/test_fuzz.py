"""Fuzzing the front door: random and mutated pipeline YAML and data through `align validate`
and `align run --smoke`, under a time and a memory cap.

Seeded (same inputs every run). Every outcome must be exit 0 or 2 (2 with exactly one `error:`
line, last, no traceback), within its time cap, and nothing outside the run folder may change:
not the project's own files, not the folder around the project.
- validate: N_VALIDATE cases (structural edits, --set overrides with hostile values, and text
  edits of the repository's real pipelines), in one driver process under RLIMIT_AS.
- run: N_RUN mutations of the corpus base project's data and pipeline through the real CLI.
"""

from __future__ import annotations

import hashlib
import json
import random
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.bad_inputs.harness import CORPUS, REPO, align_cmd, cli_env, error_line, make_project

SEED = 23
N_VALIDATE = 1000
N_RUN = 10
MEMORY_CAP = 6 << 30  # bytes of address space per process (a YAML bomb would need far more)
RUN_SECONDS = 240
DRIVER_FILES = ("cases.jsonl", "results.jsonl")

HOSTILE_VALUES = [
    ".inf", "-.inf", ".nan", "-1", "0", "true", "null", "''", "'x'", "2.5", "1e999",
    str(2**64 + 1), "9" * 60, "[]", "{}", "[1, [2, [3]]]", "'../../x'", "/tmp/x", ".",
    "'" + "a" * 300 + "'", "!!binary aGk=", "'\\u2028'", "&a 1", "*undefined", "{<<: *a}",
    "!!python/object/apply:os.system ['touch PWNED']", "'0 0 31 2 *'", "[&b x, *b, *b]",
    "9" * 5000, "[" * 2000 + "]" * 2000, "{a: &a [x, x, x, x], b: &b [*a, *a, *a, *a]}",
    "{a: &a [x, x, x, x, x, x, x, x, x, x], b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a], "
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b], "
    "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c], "
    "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d]}",
]  # fmt: skip
TEXT_TOKENS = [
    "&a ", "*a", "<<: ", "!!python/name:os.system", "\t", "{", "[", ": ", "- ", "'", '"', "\x00",
    "\u2028", "...", "---\n", "%YAML 1.1\n", "? ", "|", ">", "#", "\\", "\ufeff", "9" * 5000,
    "[" * 3000, "é", "\udcff",
]  # fmt: skip
SEEDS = [
    CORPUS / "_base" / "pipeline.yaml",
    CORPUS / "_judged" / "pipeline.yaml",
    *sorted((REPO / "pipelines").glob("*.yaml")),
]


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a nested mapping, parents before children."""
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str):
                out.append((*prefix, key))
                out += _paths(value, (*prefix, key))
    return out


def _delete(doc: dict, path: tuple) -> None:
    node = doc
    for key in path[:-1]:
        node = node[key]
    node.pop(path[-1], None)


def _text_mutation(rng: random.Random, text: str) -> str:
    pos = rng.randrange(len(text) + 1)
    op = rng.randrange(5)
    if op == 4:  # a value replaced by a hostile one
        lines = text.splitlines(keepends=True)
        valued = [i for i, ln in enumerate(lines) if ": " in ln and not ln.lstrip().startswith("#")]
        if valued:
            i = rng.choice(valued)
            key = lines[i].split(": ", 1)[0]
            lines[i] = f"{key}: {rng.choice(HOSTILE_VALUES)}\n"
            return "".join(lines)
    if op == 0:
        return text[:pos] + rng.choice(TEXT_TOKENS) + text[pos:]
    if op == 1:
        return text[:pos] + text[pos + rng.randrange(1, 40) :]
    if op == 2:
        lines = text.splitlines(keepends=True)
        i = rng.randrange(len(lines))
        return "".join([*lines[: i + 1], lines[i], *lines[i + 1 :]])  # a duplicated line
    return text[:pos]


def validate_cases(rng: random.Random) -> list[dict]:
    """Pipelines and --set lists: a third structural edits, a third overrides, a third text."""
    docs = {p: p.read_text() for p in SEEDS}
    cases = []
    for i in range(N_VALIDATE):
        seed_path = rng.choice(SEEDS)
        text, sets = docs[seed_path], []
        doc = yaml.safe_load(text)
        paths = _paths(doc)
        kind = i % 3
        if kind == 0:
            for _ in range(rng.randint(1, 3)):
                path = rng.choice(paths)
                if rng.random() < 0.4:
                    _delete(doc, path)
                    paths = _paths(doc)
                else:
                    sets.append(f"{'.'.join(path)}={rng.choice(HOSTILE_VALUES)}")
            text = yaml.safe_dump(doc)
        elif kind == 1:
            for _ in range(rng.randint(1, 4)):
                path = ".".join(rng.choice(paths))
                if rng.random() < 0.2:
                    path += rng.choice([".extra", "x", ".0"])
                sets.append(f"{path}={rng.choice(HOSTILE_VALUES)}")
        else:
            for _ in range(rng.randint(1, 3)):
                text = _text_mutation(rng, text) or "{}"
        cases.append({"pipeline": text, "sets": sets})
    return cases


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _tree(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Relative path -> content hash of every file under `root` (except under `skip`)."""
    out = {}
    for path in root.rglob("*"):
        if skip is not None and path.is_relative_to(skip):
            continue
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _assert_clean_outcome(code: int | None, stderr: str, what: str) -> None:
    assert code in (0, 2), f"{what}: exit {code}\n{stderr[-2000:]}"
    assert "Traceback" not in stderr, f"{what}:\n{stderr[-2000:]}"
    if code == 2:
        line = error_line(stderr)
        assert len(line) > len("error: ") + 10, f"{what}: {line!r}"


def test_fuzz_validate(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    cases = validate_cases(rng)
    project = make_project(tmp_path / "p")
    (tmp_path / "cases.jsonl").write_text(
        "".join(json.dumps(c, ensure_ascii=True) + "\n" for c in cases)
    )
    before_outside = sorted(p.name for p in tmp_path.iterdir())
    before = _tree(project)
    res = subprocess.run(
        [sys.executable, "-m", "tests.bad_inputs.fuzz_driver", *DRIVER_FILES, str(project)],
        cwd=tmp_path,
        env={**cli_env(project), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_cap_memory,
    )
    assert (tmp_path / "results.jsonl").is_file(), res.stderr[-3000:]
    results = [json.loads(ln) for ln in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(results) == len(cases), f"driver died at case {len(results)}: {res.stderr[-3000:]}"
    failures = []
    for row in results:
        try:
            assert row["escaped"] is None, row["escaped"]
            _assert_clean_outcome(row["code"], row["stderr"], f"case {row['i']}")
        except AssertionError as exc:
            failures.append(f"{exc}\n  sets={cases[row['i']]['sets']}")
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures[:10])
    codes = [r["code"] for r in results]
    assert codes.count(2) > N_VALIDATE // 2 and codes.count(0) > 10  # both outcomes exercised
    after = _tree(project)
    after.pop("pipeline.yaml"), before.pop("pipeline.yaml")
    assert after == before, "validate wrote files"
    assert sorted(p.name for p in tmp_path.iterdir()) == [*before_outside, "results.jsonl"]


def _not_json(constant: str) -> None:
    raise AssertionError(f"{constant} written into a JSON Lines log")


def _mutate_data(rng: random.Random, text: str) -> str:
    """JSON Lines with one record made hostile, or the bytes edited."""
    rows = [json.loads(ln) for ln in text.splitlines()]
    op = rng.randrange(5)
    if op == 0:
        data = bytearray(text.encode())
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return data.decode("latin-1")
    if op == 1:
        return text[: rng.randrange(len(text))]
    row = rng.choice(rows)
    key = rng.choice(["rewards", "responses", "prompt", "id"])
    hostile = [
        "7", True, None, 1e308 * 10, float("nan"), 10**30, [[1]], {}, [], "", ["x"] * 50, 3,
    ]  # fmt: skip
    if op == 2:
        row[key] = rng.choice(hostile)
    elif op == 3 and isinstance(row.get(key), list) and row[key]:
        row[key][rng.randrange(len(row[key]))] = rng.choice(hostile)
    else:
        row.pop(key)
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.mark.slow
def test_fuzz_run_smoke(tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    for i in range(N_RUN):
        root = tmp_path / f"case{i}"
        project = make_project(root / "p")
        data = project / "data" / "train.jsonl"
        data.write_text(_mutate_data(rng, data.read_text()), encoding="latin-1")
        if i == N_RUN - 1:  # a pipeline edit that still validates: a different loss and K
            text = (project / "pipeline.yaml").read_text().replace("nca", "dpo")
            (project / "pipeline.yaml").write_text(text)
        (root / "beside.txt").write_text("outside the project\n")
        before, outside = _tree(project), _tree(root, skip=project)
        res = subprocess.run(
            align_cmd("run", "--no-prefect", "pipeline.yaml", "--smoke"),
            cwd=project,
            env={**cli_env(project), "PYTHONDONTWRITEBYTECODE": "1"},
            capture_output=True,
            text=True,
            timeout=RUN_SECONDS,
            preexec_fn=_cap_memory,
        )
        _assert_clean_outcome(res.returncode, res.stderr, f"run case {i}")
        run_folder = project / "runs" / "corpus-smoke"
        for log in run_folder.glob("*/log.jsonl"):  # strict JSON: no bare NaN or Infinity
            for line in log.read_text().splitlines():
                json.loads(line, parse_constant=_not_json)
        assert _tree(project, skip=run_folder) == before, f"run case {i} touched project files"
        assert _tree(root, skip=project) == outside
