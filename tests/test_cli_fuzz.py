"""Fuzz test of the CLI (issue 11): Hypothesis-generated specs (mutations of the shipped ones), raw
YAML texts, score files, results/report JSON and argument lists go through validate, show, doctor,
report and diff in-process (typer's CliRunner); `run --toy` gets a few bounded inputs under `slow`.

Property, for every input: exit code 0, 1 or 2, no exception escapes (so no traceback), no file
the tool did not create is deleted or changed (sentinel files in the project, the repo's specs/ and
reports/ hashed before and after), nothing is written outside the project (a canary folder beside it,
which links planted in report folders point at), and no text runs as a command (the marker file that
injected text would create). Issue 22's classes get their own generators (tests/fixtures/hostile.py):
read-back spec names, links in report folders, site-file fields, profile scales, numbers and paths in
results.json, expanded tensors, toy task names and --out folders, devices and FIFOs. The default run is
derandomized and bounded (a few seconds); `-m slow` runs more examples (60 each;
UNLEARNSPEC_FUZZ_EXAMPLES=400 for a deep run). With UNLEARNSPEC_FUZZ_COUNTS=path the counts are written there.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from unlearnspec.cli import app

from .fixtures import hostile
from .fixtures.reportkit import answers, flip, token_stats, write_run

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (REPO / "specs").rglob("*.yaml") if "profiles" not in p.parts)
COUNTS: Counter = Counter()
OUTSIDE: dict[str, Any] = {}
"""The canary folder beside the project (root, its files' bytes) and the marker injected text would create."""
FAST = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
LONG_EXAMPLES = int(os.environ.get("UNLEARNSPEC_FUZZ_EXAMPLES", "60"))
"""Examples per `slow` fuzz test: 60 in the suite (.ci/run; the same strategies as a deep run), and
UNLEARNSPEC_FUZZ_EXAMPLES=400 for a deep (nightly) run, the count these tests ran with before issue 23."""
LONG = settings(
    max_examples=LONG_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# --------------------------------------------------------------------------- the sandbox project
def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


SENTINELS = {
    "runs/exp7_all_tokens/lr=1e-05/my_notes.txt": "user data in a sweep-point-like folder",
    "runs/toy/exp7_all_tokens/.tmp-mine/keep.txt": "user data in a tmp-like folder",
    "reports/my_report.md": "a user's own report",
    "out/keep.txt": "user file in an output folder",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project copy (specs, reference tables) with sentinel user files; cwd is inside it, so
    default outputs (reports/, runs/) land here. Yields the root; checks nothing was lost at the end."""
    root = tmp_path_factory.mktemp("fuzzproject")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "canary.txt").write_text("the user's file, outside the project\n")
    OUTSIDE.update(root=outside, before={"canary.txt": (outside / "canary.txt").read_bytes()}, marker=root / "PWNED")
    (root / "pyproject.toml").write_text("[project]\nname = 'fuzz'\n")
    shutil.copytree(REPO / "specs", root / "specs")
    shutil.copytree(REPO / "reports" / "reference", root / "reports" / "reference")
    for rel, text in SENTINELS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    runs = root / "results"
    base = answers(60, 30)
    write_run(
        runs / "a",
        "exp_a",
        {"wmdp_bio_robust": base, "mmlu": answers(60, 40)},
        [
            {
                "lr": 1e-5,
                "values": {"wmdp_bio_robust": flip(base, 3), "mmlu": answers(60, 40)},
                "stats": token_stats(0.3),
            },
            {"lr": 2e-5, "values": {"wmdp_bio_robust": 0.3, "mmlu": 0.6}},
        ],
    )
    write_run(
        runs / "b",
        "exp_a",
        {"wmdp_bio_robust": base, "mmlu": answers(60, 41)},
        [
            {
                "lr": 1e-5,
                "values": {"wmdp_bio_robust": flip(base, 9), "mmlu": answers(60, 39)},
                "stats": token_stats(0.31),
            }
        ],
    )
    repo_before = {d: _tree_hash(REPO / d) for d in ("specs", "reports")}
    old_cwd = os.getcwd()
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(old_cwd)
    for rel, text in SENTINELS.items():
        assert (root / rel).read_text() == text, f"deleted or changed: {rel}"
    assert {d: _tree_hash(REPO / d) for d in ("specs", "reports")} == repo_before
    if os.environ.get("UNLEARNSPEC_FUZZ_COUNTS"):
        Path(os.environ["UNLEARNSPEC_FUZZ_COUNTS"]).write_text(
            json.dumps(dict(COUNTS), indent=2, sort_keys=True) + "\n"
        )


def invoke(project: Path, kind: str, *args: Any) -> Any:
    """Run one command line in-process and check the property; counts every input tried."""
    argv = [str(a) for a in args]
    result = CliRunner().invoke(app, argv)
    COUNTS["inputs"] += 1
    COUNTS[f"{kind}:{argv[0] if argv else '-'}"] += 1
    bad_exit = result.exit_code not in (0, 1, 2)
    escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
    COUNTS["wrong_exit_codes"] += bad_exit
    COUNTS["tracebacks"] += escaped or "Traceback" in result.output
    assert not escaped, f"{argv}\n{result.output}\n{result.exception!r}"
    assert not bad_exit, (argv, result.exit_code, result.output)
    assert "Traceback" not in result.output, (argv, result.output)
    for rel, text in SENTINELS.items():
        ok = (project / rel).is_file() and (project / rel).read_text() == text
        COUNTS["deletions"] += not ok
        assert ok, f"{argv} deleted or changed {rel}"
    outside_ok = hostile.outside_untouched(OUTSIDE["root"], OUTSIDE["before"])
    COUNTS["outside_writes"] += not outside_ok
    assert outside_ok, f"{argv} wrote outside the project"
    COUNTS["executed"] += OUTSIDE["marker"].exists()
    assert not OUTSIDE["marker"].exists(), f"{argv} ran injected text"
    return result


# --------------------------------------------------------------------------- strategies
NASTY_TEXT = [
    "",
    "/",
    "..",
    "../..",
    "runs/x",
    "specs/magic/magic_wmdp.yaml",
    "specs/exp7_all_tokens.yaml",
    "wmdp > 0",
    "( (",
    "not " * 50 + "a > 0",
    "toy_wmdp",
    "sgd",
    "adamw",
    "all",
    "where",
    "target",
    "input",
    "1e-5",
    "nan",
    "∞",
    "min_q(wmdp) < 0",
    "max_q(wmdp) < 0",
    "rank_q(wmdp.x) <= 3",
    "wsum_q() > 0",
    "min_q (wmdp) < 0",
    "rank_q(wmdp)",
    "min_t(wmdp) < 0",
    "max_t(wmdp) < 0",
    "rank_t(wmdp.x) <= 3",
    "wsum_t(wmdp)",
]
LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NASTY_TEXT),
    st.text(max_size=12),
)
VALUE = st.recursive(
    LEAF,
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=6), c, max_size=3)),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _mutate(data: Any, draw) -> Any:
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(data) if p]
        if not paths or not isinstance(data, dict):
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        op = draw(st.sampled_from(["set", "set", "delete", "add"]))
        if op == "set":
            parent[path[-1]] = draw(VALUE)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "lr", "dir", "where", "count", "seed", "path"]))] = draw(VALUE)
    return data


def _text_mutation(text: str, draw) -> str:
    lines = text.splitlines(keepends=True)
    op = draw(st.sampled_from(["drop", "dup", "cut", "insert"]))
    if not lines:
        return text
    i = draw(st.integers(0, len(lines) - 1))
    if op == "drop":
        del lines[i]
    elif op == "dup":
        lines.insert(i, lines[i])
    elif op == "cut":
        return text[: draw(st.integers(0, len(text)))]
    else:
        lines.insert(i, draw(st.text(alphabet="[]{}:-,&*!|>'\"#%@ \t\nab1.", max_size=30)))
    return "".join(lines)


@st.composite
def spec_files(draw) -> str:
    base = draw(st.sampled_from(SHIPPED))
    text = base.read_text()
    if draw(st.booleans()):
        return _text_mutation(text, draw)
    data = _mutate(yaml.safe_load(text), draw)
    return yaml.safe_dump(data, allow_unicode=True)


@st.composite
def yaml_texts(draw) -> str:
    kind = draw(st.sampled_from(["chars", "deep", "aliases", "dups", "tags"]))
    if kind == "chars":
        return draw(st.text(alphabet="[]{}:-,&*!|>'\"#%@`? \n\tabz019.=", max_size=200))
    if kind == "deep":
        n = draw(st.integers(30, 3000))
        return draw(st.sampled_from(["[", "{a: ", "- "])) * n
    if kind == "aliases":
        k = draw(st.integers(1, 12))
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [
            f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, k)
        ]
        return "\n".join(lines) + draw(st.sampled_from(["", "\nself: &s [*s]", "\nm: {<<: *a0}"]))
    if kind == "dups":
        return "name: a\nname: b\nmodel: {toy: tiny-neox, toy: tiny-neox}\n"
    return draw(
        st.sampled_from(
            [
                "a: !!python/object/apply:os.system [ls]",
                "a: 2024-13-45",
                "a: !!int x",
                "? [a]\n: b",
                "--- a\n--- b",
                "%YAML 9.9\n---\na: 1",
            ]
        )
    )


@st.composite
def score_payloads(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "tensor", "tensor", "pickle", "safetensors", "expanded"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "expanded":
        return hostile.expanded_tensor(draw)
    shape = draw(st.lists(st.integers(0, 20), min_size=0, max_size=3))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64, torch.bool]))
    t = torch.zeros(shape, dtype=dtype)
    if t.is_floating_point() and t.numel():
        t = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
        if draw(st.booleans()):
            t.view(-1)[0] = draw(st.sampled_from([float("nan"), float("inf"), 0.0]))
    buf = io.BytesIO()
    if kind == "safetensors":
        from safetensors.torch import save

        return save({draw(st.sampled_from(["scores", "x"])): t.contiguous()})
    if kind == "pickle":
        torch.save(draw(st.sampled_from([{"scores": t}, [t], {"x": 1}, 3])), buf)
    else:
        torch.save(t, buf)
    return buf.getvalue()


JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=6), c, max_size=3)),
    max_leaves=6,
)


@st.composite
def json_mutations(draw, original: str) -> str:
    kind = draw(st.sampled_from(["value", "value", "text", "deep"]))
    if kind == "deep":
        return "[" * draw(st.integers(10, 200_000))
    if kind == "text":
        return _text_mutation(original, draw)
    data = json.loads(original)
    paths = [p for p in _paths(data) if p]
    path = draw(st.sampled_from(paths))
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = draw(JSON_VALUE)
    return json.dumps(data)


# --------------------------------------------------------------------------- the fuzz tests
def _spec_commands(project: Path, path: Path, draw) -> None:
    invoke(project, "spec", "validate", path)
    keys = st.one_of(
        st.sampled_from(
            [
                "training.lr",
                "training.batch_size",
                "data.max_seq_len",
                "tokens.where",
                "training.seed",
                "x.y.0",
                "",
                "a..b",
                "eval.tasks.0.name",
                "a.²",
                "training.lr.9",
            ]
        ),
        st.text(max_size=10),
    )
    values = st.one_of(st.sampled_from(NASTY_TEXT + ["[1, 2", "{a: 1}", "true", "-1"]), st.text(max_size=10))
    sets = draw(st.lists(st.tuples(keys, values), max_size=2))
    args = ["show", path] + [x for k, v in sets for x in ("--set", f"{k}={v}")]
    invoke(project, "spec", *args, *(["--toy"] if draw(st.booleans()) else []))
    invoke(project, "spec", "doctor", path, "--format", "json", *(["--toy"] if draw(st.booleans()) else []))


def _check_specs(project: Path, data) -> None:
    path = project / "specs" / "fuzz_spec.yaml"
    path.write_text(data.draw(spec_files()), encoding="utf-8")
    _spec_commands(project, path, data.draw)


def _check_yaml(project: Path, data) -> None:
    path = project / "specs" / "fuzz_text.yaml"
    path.write_text(data.draw(yaml_texts()), encoding="utf-8", errors="surrogatepass")
    _spec_commands(project, path, data.draw)
    invoke(project, "yaml", "validate", project / "specs")  # one bad file must not stop the others


def _check_scores(project: Path, data) -> None:
    folder = project / "scores"
    folder.mkdir(exist_ok=True)
    name = data.draw(st.sampled_from(["s.pt", "s.safetensors"]))
    (folder / name).write_bytes(data.draw(score_payloads()))
    side = folder / "scores.json"
    side.unlink(missing_ok=True)
    if data.draw(st.booleans()):
        side.write_text(json.dumps(data.draw(JSON_VALUE)))
    spec = yaml.safe_load((REPO / "specs" / "exp5_selective.yaml").read_text())
    spec.pop("control")
    src = {"path": f"scores/{name}", "alignment": data.draw(st.sampled_from(["target", "input", None]))}
    spec["scores"] = {"wmdp": {k: v for k, v in src.items() if v}, "mmlu": {k: v for k, v in src.items() if v}}
    spec["data"]["select"] = {"count": data.draw(st.integers(1, 20))}
    spec["data"]["max_seq_len"] = data.draw(st.integers(1, 20))
    path = project / "specs" / "fuzz_scores.yaml"
    path.write_text(yaml.safe_dump(spec))
    invoke(project, "scores", "validate", path)
    invoke(project, "scores", "doctor", path, "--format", "json")


def _check_results(project: Path, data) -> None:
    src = project / "results" / "a"
    target = project / "results" / "fuzz"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(src, target)
    which = data.draw(st.sampled_from(["results.json", "baseline/samples.json", "lr=1e-05/samples.json"]))
    (target / which).write_text(data.draw(json_mutations((src / which).read_text())))
    out = project / "reports" / "fuzz"
    invoke(project, "results", "report", target, "--out", out, "--no-plot")
    invoke(project, "results", "diff", project / "results" / "a", target)
    report = out / "exp_a.json"
    if report.is_file():
        bad = project / "reports" / "fuzz_report.json"
        bad.write_text(data.draw(json_mutations(report.read_text())))
        invoke(project, "results", "diff", report, bad)


ARG_POOL = [
    "validate",
    "show",
    "doctor",
    "report",
    "diff",
    "schema",
    "--toy",
    "--set",
    "--format",
    "json",
    "table",
    "--strict",
    "--lr-factor",
    "nan",
    "-1",
    "1e400",
    "--out",
    "reports/fuzz_args",
    "--profile",
    "--reference-only",
    "--no-plot",
    "--quiet",
    "--help",
    "specs/",
    "specs/exp7_all_tokens.yaml",
    "specs/profiles/toy.yaml",
    "results/a",
    "results/b",
    "results/a/results.json",
    "reports/reference/exp7_all_tokens.json",
    "nope",
    "",
    "/proc/nope/x",
    "specs/profiles/toy_world.yaml",
]


def _check_args(project: Path, data) -> None:
    first = data.draw(st.sampled_from(["validate", "show", "doctor", "report", "diff", "schema"]))
    rest = data.draw(st.lists(st.one_of(st.sampled_from(ARG_POOL), st.text(max_size=8)), max_size=6))
    invoke(project, "args", first, *rest)


# --------------------------------------------------------------------------- issue 22's classes
def _check_report_names(project: Path, data) -> None:
    """Read-back spec names and links in the report folder: nothing lands outside it or through a link."""
    target = project / "results" / "hostile"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(project / "results" / "a", target)
    raw = json.loads((target / "results.json").read_text())
    raw["spec"]["name"] = data.draw(hostile.hostile_names(OUTSIDE["root"]))
    (target / "results.json").write_text(json.dumps(raw))
    out = project / "reports" / "hostile_out"
    hostile.plant_links(out, OUTSIDE["root"], data.draw)
    extra = [project / "results" / "b"] if data.draw(st.booleans()) else []
    invoke(
        project,
        "names",
        "report",
        target,
        *extra,
        "--out",
        out,
        "--study-name",
        "fuzzstudy",
        *(["--no-plot"] if data.draw(st.booleans()) else []),
    )
    for link in out.iterdir():  # the planted links are still links, never replaced by files
        assert not link.name.startswith("exp_h") or link.is_symlink() or link.is_file()


def _check_site(project: Path, data) -> None:
    """Site-file text with line breaks and hostile resources: refused at validation, or never a script line."""
    from unlearnspec.errors import UserError
    from unlearnspec.run.sbatch import SbatchJob
    from unlearnspec.run.slurm import sbatch_script
    from unlearnspec.spec.cluster import load_cluster

    site = project / "specs" / "profiles" / "fuzz_site.yaml"
    hostile.site_file(site, OUTSIDE["marker"], data.draw)
    result = invoke(project, "site", "show", project / "specs" / "exp7_all_tokens.yaml", "--toy", "--cluster", site)
    if result.exit_code != 0:
        return
    settings = load_cluster(site).slurm
    for kind in ("score", "point", "baseline", "assemble"):
        try:
            text = sbatch_script(project / "runs" / "job", settings, SbatchJob(kind, "j", ("1",)), "python -u -m x")
        except UserError:
            continue
        leaked = hostile.script_leaks(text, OUTSIDE["marker"], list(settings.setup))  # as loaded: YAML folds U+0085
        COUNTS["executed"] += leaked
        assert not leaked, text


def _check_profile_numbers(project: Path, data) -> None:
    profile = project / "fuzz_profile.yaml"
    hostile.profile_file(profile, data.draw)
    invoke(project, "profile", "show", project / "specs" / "exp7_all_tokens.yaml", "--profile", profile)


def _check_read_back(project: Path, data) -> None:
    """Numbers and paths read back from results.json: finite, in range, inside the run folder, never a device
    or FIFO (a FIFO would hang the read)."""
    fifo = project / "results" / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    target = project / "results" / "numbers"
    hostile.numbers_in_results(project / "results" / "a", target, OUTSIDE["root"], fifo, data.draw)
    invoke(project, "numbers", "report", target, "--out", project / "reports" / "numbers", "--no-plot")
    invoke(project, "numbers", "diff", project / "results" / "a", target)


def _check_toy_names(project: Path, data) -> None:
    """Toy task names that are paths, and --out folders holding the user's files (SENTINELS' out/)."""
    task = data.draw(
        st.sampled_from(
            [
                "../facts",
                "../tasks/toy_mmlu",
                "/etc/passwd",
                "toy_wmdp/../toy_mmlu",
                "",
                ".",
                "toy_wmdp\n",
                "*",
                "toy_*",
                "toy_wmdp",
                "_toy_wmdp_by_attribute",
            ]
        )
    )
    out = data.draw(st.sampled_from(["out", "out/keep.txt", "reports/my_report.md"]))
    invoke(
        project,
        "toy",
        "toy",
        "truth",
        project / "specs" / "fixed" / "magic_wmdp.yaml",
        "--task",
        task,
        "--out",
        project / out,
    )


def _check_specials(project: Path, data) -> None:
    """Devices, FIFOs and links where a spec, profile or folder is expected."""
    special = project / "specs" / "special"
    shutil.rmtree(special, ignore_errors=True)
    special.mkdir()
    kind = data.draw(st.sampled_from(["fifo", "devnull", "devzero", "loop", "dangling"]))
    if kind == "fifo":
        os.mkfifo(special / "x.yaml")
    elif kind in ("devnull", "devzero"):
        os.symlink(f"/dev/{kind[3:]}", special / "x.yaml")
    elif kind == "loop":
        os.symlink(special / "x.yaml", special / "x.yaml")
    else:
        os.symlink(special / "nope", special / "x.yaml")
    cmd = data.draw(st.sampled_from(["validate", "doctor", "show", "plan"]))
    target = special / "x.yaml" if data.draw(st.booleans()) or cmd in ("show",) else special
    invoke(project, "special", cmd, target, *(["--toy"] if cmd in ("show", "plan") else []))
    invoke(project, "special", "validate", "/dev/null")


def _check_trajectory(project: Path, data) -> None:
    """trajectory.json as an LDS run reads it: any tampering is a UserError naming the file."""
    from unlearnspec.errors import UserError
    from unlearnspec.magic.lds import load_trajectory_plan

    folder = project / "traj"
    folder.mkdir(exist_ok=True)
    good = {
        "format": 1,
        "schedule": "sqrt",
        "param_names": ["a"],
        "weight_decay": 0.0,
        "optimizer": {"name": "adamw", "betas": [0.9, 0.999], "eps": 1e-8, "initial_step": 0, "max_grad_norm": 1.0},
        "steps": [{"lr": 1e-3, "micro_batches": [[0, 1], [2]]}, {"lr": 5e-4, "micro_batches": [[3]]}],
    }
    (folder / "trajectory.json").write_text(data.draw(json_mutations(json.dumps(good))))
    COUNTS["inputs"] += 1
    COUNTS["trajectory:lds"] += 1
    try:
        plan = load_trajectory_plan(folder, n_rows=4)
    except UserError:
        return
    assert all(0 <= int(r) < 4 for s in plan.steps for mb in s.micro_batches for r in mb)
    assert all(0.0 <= s.lr < float("inf") for s in plan.steps)


HOSTILE = [
    _check_report_names,
    _check_site,
    _check_profile_numbers,
    _check_read_back,
    _check_toy_names,
    _check_specials,
    _check_trajectory,
]


@pytest.mark.parametrize("check", HOSTILE)
@settings(FAST, max_examples=5)
@given(data=st.data())
def test_fuzz_hostile(project, check, data):
    check(project, data)


@pytest.mark.slow
@pytest.mark.parametrize("check", HOSTILE)
@LONG
@given(data=st.data())
def test_fuzz_hostile_long(project, check, data):
    check(project, data)


@pytest.mark.parametrize("check", [_check_specs, _check_yaml, _check_scores, _check_results, _check_args])
@FAST
@given(data=st.data())
def test_fuzz_cli(project, check, data):
    check(project, data)


@pytest.mark.slow
@pytest.mark.parametrize("check", [_check_specs, _check_yaml, _check_scores, _check_results, _check_args])
@LONG
@given(data=st.data())
def test_fuzz_cli_long(project, check, data):
    check(project, data)


@pytest.mark.slow
@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_fuzz_run_toy(project, data):
    """`run --toy` on bounded mutations of exp7 (small N, few steps): a run may fail, but only cleanly."""
    spec = yaml.safe_load((REPO / "specs" / "exp7_all_tokens.yaml").read_text())
    spec["training"]["lr"] = data.draw(st.sampled_from([1e-3, [1e-3, 2e-3], 1e30, -1.0, 0.0]))
    spec["training"]["max_steps"] = data.draw(st.sampled_from([4, 0, True, 1.5]))
    spec["data"]["select"]["count"] = data.draw(st.sampled_from([40, 10**9, 0]))
    spec["training"]["batch_size"] = data.draw(st.sampled_from([4, True, 10**6]))
    path = project / "specs" / "fuzz_run.yaml"
    path.write_text(yaml.safe_dump(spec))
    invoke(
        project,
        "run",
        "run",
        path,
        "--toy",
        "--out",
        project / "runs" / "fuzz",
        "--reports-dir",
        project / "reports" / "fuzz_run",
        "--set",
        "eval.tasks=[{name: wmdp_bio_robust, num_fewshot: 0, limit: 20}]",
    )
