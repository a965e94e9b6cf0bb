"""The cases of benchmarks/hostile_battery.py, one builder per class of issue 22 (new inputs, and their
neighbours). Each builder plants what its cases need in the sandbox and returns the cases."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
CONTROL = ["\n", "\r", "\r\n", "\x00", "\x1b", "\x0b", "\x0c", "\x85", "\u2028", "\u2029"]
SPEC = "specs/exp7_all_tokens.yaml"


def _project(box: Any) -> None:
    from tests.fixtures.reportkit import answers, flip, token_stats, write_run

    root = box.root
    shutil.copytree(REPO / "specs", root / "specs")
    shutil.copytree(REPO / "reports" / "reference", root / "reports" / "reference")
    (root / "pyproject.toml").write_text("[project]\nname = 'battery'\n")
    base = answers(60, 30)
    write_run(
        root / "runs" / "a",
        "exp_a",
        {"wmdp_bio_robust": base, "mmlu": answers(60, 40)},
        [
            {
                "lr": 1e-5,
                "values": {"wmdp_bio_robust": flip(base, 3), "mmlu": answers(60, 40)},
                "stats": token_stats(0.3),
            }
        ],
    )
    write_run(
        root / "runs" / "b",
        "exp_b",
        {"wmdp_bio_robust": 0.5, "mmlu": 0.6},
        [{"lr": 1e-5, "values": {"wmdp_bio_robust": 0.4, "mmlu": 0.6}}],
    )
    box.plant(root / "reports" / "mine.md", "a user's own report\n")
    box.plant(root / "runs" / "a" / "my_notes.txt", "notes in a run folder\n")


def _copy_run(box: Any, name: str, edit: Any) -> Path:
    dst = box.root / "runs" / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(box.root / "runs" / "a", dst, ignore=shutil.ignore_patterns("my_notes.txt"))
    data = json.loads((dst / "results.json").read_text())
    edit(data)
    (dst / "results.json").write_text(json.dumps(data))
    return dst


# --------------------------------------------------------------------------- 1: the pull-request check
def _git(cwd: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def _pr_case(box: Any, Case: Any, i: int, name: bytes, base: str, kind: str) -> Any:
    def call() -> tuple[int, str]:
        proj = box.root / "prs" / f"pr{i}"
        shutil.rmtree(proj, ignore_errors=True)
        (proj / "specs").mkdir(parents=True)
        (proj / "reports").mkdir()
        report = (REPO / "reports" / "exp7_all_tokens.json").read_text()
        path = (
            os.fsdecode(b"reports/" + name + b".json") if kind == "report" else os.fsdecode(b"specs/" + name + b".yaml")
        )
        if kind == "report":
            Path(proj / path).write_text(report)
        _git(proj, "init", "-q", "-b", base)
        _git(proj, "add", "-A")
        _git(proj, "commit", "-qm", "base", "--allow-empty")
        _git(proj, "checkout", "-qb", "pr")
        if kind == "report":
            data = json.loads(report)
            row = next(r for r in data["rows"] if r.get("kind") != "baseline")
            task = next(iter(row["cells"]))
            row["cells"][task]["acc"] = round(row["cells"][task]["acc"] - 0.3, 4)
            Path(proj / path).write_text(json.dumps(data))
        else:
            Path(proj / path).write_text((REPO / SPEC).read_text() + "\nbogus: 1\n")
        _git(proj, "add", "-A")
        _git(proj, "commit", "-qm", "change")
        env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        proc = subprocess.run(
            ["bash", str(REPO / ".ci" / "pr-check.sh"), base, "c.md"],
            cwd=proj,
            env=env,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=300,
        )
        comment = (proj / "c.md").read_text(errors="replace") if (proj / "c.md").is_file() else ""
        checked = ("beyond noise" in comment) if kind == "report" else ("bogus" in comment)
        pwned = list(proj.rglob("PWNED*"))
        if pwned:
            box.marker.write_text("pr-check ran a name")
        return (proc.returncode if checked else 99), proc.stdout + proc.stderr

    return Case("1 pr-check names", f"{kind} {name!r} base {base!r}", [], (1,), call=call)


def pr_check(box: Any, Case: Any) -> list[Any]:
    names = [
        b";touch PWNED;#e",
        b"x#e touch PWNED #",
        b"a|touch PWNED|b",
        b"$(touch PWNED)",
        b"`touch PWNED`",
        b"-rf",
        b"q'uote\"d",
        b"100%",
        b"tab\there",
        b"new\nline",
        b"\xc3\xbc-umlaut",
        b"\xff\xfe-not-utf8",
        b"back\\slash",
        b"&touch PWNED&",
        b" lead space",
        b"*glob*",
        b";touch PWNED;#ew o",
        b"$(id);touch PWNED;#gew o",
    ]
    cases = [_pr_case(box, Case, i, n, "main", "report" if i % 2 == 0 else "spec") for i, n in enumerate(names)]
    cases += [_pr_case(box, Case, 100 + i, b"ok", base, "report") for i, base in enumerate(["rel#1", "v1.0#e", "a&b"])]
    return cases


# --------------------------------------------------------------------------- 2: site and profile text
def site_text(box: Any, Case: Any) -> list[Any]:
    cases = []
    base = yaml.safe_load((REPO / "specs" / "profiles" / "slurm_example.yaml").read_text())
    fields = {
        "slurm.partition": ("slurm", "partition"),
        "slurm.account": ("slurm", "account"),
        "slurm.qos": ("slurm", "qos"),
        "slurm.extra_sbatch[0]": ("slurm", "extra_sbatch", 0),
        "slurm.setup[1]": ("slurm", "setup", 1),
        "name": ("name",),
    }
    payloads = [
        f"touch {box.marker} #",
        f"scancel -u root; touch {box.marker}",
        f"#SBATCH --time=1\ntouch {box.marker}",
    ]
    for label, where in fields.items():
        for c in CONTROL:
            for _j, payload in enumerate(payloads[:2] if c != "\n" else payloads):
                data = json.loads(json.dumps(base))
                target = data
                for k in where[:-1]:
                    target = target[k]
                target[where[-1]] = f"{target[where[-1]]}{c}{payload}"
                path = box.root / "sites" / f"s_{len(cases)}.yaml"
                path.parent.mkdir(exist_ok=True)
                path.write_text(json.dumps(data))  # JSON is YAML: escapes deliver every character as is (a YAML
                # dump would fold U+0085 into a space, so the file would hold no control character at all)
                cases.append(
                    Case(
                        "2 site/profile text",
                        f"{label} {c!r}",
                        ["show", SPEC, "--toy", "--cluster", str(path)],
                        (2,),
                        must_say=label,
                    )
                )
    toy = yaml.safe_load((REPO / "unlearnspec" / "profiles" / "toy.yaml").read_text())
    for key in ("name", "output_prefix", "tasks", "corpora", "partition"):
        data = json.loads(json.dumps(toy))
        data["world"] = str(REPO / "unlearnspec" / "profiles" / data["world"])
        if key == "tasks":
            data["tasks"]["mmlu"] = "toy_mmlu\ntouch PWNED"
        elif key == "corpora":
            data["data"]["corpora"]["x\ny"] = "wikitext"
        elif key == "partition":
            data["slurm"]["partition"] = f"cpu\ntouch {box.marker}"
        else:
            data[key] = data[key] + f"\ntouch {box.marker}"
        path = box.root / "sites" / f"p_{key}.yaml"
        path.write_text(yaml.safe_dump(data))
        cases.append(
            Case(
                "2 site/profile text",
                f"profile {key}",
                ["show", SPEC, "--profile", str(path)],
                (2,),
                must_say="control character",
            )
        )
    return cases


# --------------------------------------------------------------------------- 3: links in the reports folder
def links(box: Any, Case: Any) -> list[Any]:
    cases = []
    targets = {
        "canary": box.outside / "canary.txt",
        "dir": box.outside,
        "dangling": box.outside / "nope.md",
        "md": box.outside / "notes.md",
    }
    for fname in ("exp_a.md", "exp_a.json", "exp_a.png", "study.md", "idx.md", "idx.png"):
        for tname, target in targets.items():
            out = box.root / "links" / f"{fname}-{tname}"
            out.mkdir(parents=True)
            os.symlink(target, out / fname)
            cases.append(
                Case(
                    "3 links",
                    f"{fname} -> {tname}",
                    [
                        "report",
                        "runs/a",
                        "runs/b",
                        "--out",
                        str(out),
                        "--study-name",
                        "idx" if fname.startswith("idx") else "study",
                    ],
                    (2,),
                    must_say="symbolic link",
                )
            )
    for tname, target in targets.items():
        out = box.root / "links" / f"recorded-{tname}"
        out.mkdir(parents=True)
        os.symlink(target, out / "recorded.md")
        cases.append(
            Case("3 links", f"recorded.md -> {tname}", ["report", "--reference-only", "--out", str(out)], (2,))
        )
    out = box.root / "links" / "linked-out-is-fine"
    os.symlink(box.root / "links" / "real", out)
    (box.root / "links" / "real").mkdir()
    cases.append(
        Case(
            "3 links",
            "--out itself a link (the user's choice): allowed",
            ["report", "runs/a", "--out", str(out), "--no-plot"],
            (0,),
        )
    )
    return cases


# --------------------------------------------------------------------------- 4: names read back
def names(box: Any, Case: Any) -> list[Any]:
    cases = []
    hostile = [
        "../../../outside/owned",
        f"{box.outside}/notes",
        "../" * 12 + "tmp/owned",
        "a/../../b",
        "..",
        ".",
        "x\ny",
        "\x00",
        "sp ace",
        "ü",
        "n" * 400,
        "a\\b",
        "con/",
        "./exp",
        "exp?",
        "exp*",
    ]
    for i, name in enumerate(hostile):
        run = _copy_run(box, f"name{i}", lambda d, n=name: d["spec"].__setitem__("name", n))
        cases.append(
            Case(
                "4 read-back names",
                repr(name)[:40],
                ["report", str(run), "--out", str(box.root / "rep_names" / "x" / "y")],
                (2,),
            )
        )
    # a valid spec name that looks like an option is only a file name inside the folder
    run = _copy_run(box, "name_dash", lambda d: d["spec"].__setitem__("name", "--out"))
    cases.append(
        Case(
            "4 read-back names",
            "'--out' (a valid spec name)",
            ["report", str(run), "--out", str(box.root / "rep_dash"), "--no-plot"],
            (0,),
            must_say="rep_dash/--out.md",
        )
    )
    for i, (field, value) in enumerate(
        [
            ("samples_file", "/etc/hostname"),
            ("samples_file", "../../outside/canary.txt"),
            ("run_dir", "../.."),
            ("model_dir", "/"),
            ("samples_file", "a\nb"),
        ]
    ):
        run = _copy_run(box, f"path{i}", lambda d, f=field, v=value: d["runs"][0].__setitem__(f, v))
        cases.append(
            Case(
                "4 read-back names",
                f"{field}={value!r}",
                ["report", str(run), "--out", str(box.root / "rep_paths"), "--no-plot"],
                (2,),
                must_say="inside the run folder",
            )
        )
    return cases


# --------------------------------------------------------------------------- 5: toy truth --out
def truth_out(box: Any, Case: Any) -> list[Any]:
    cases = []
    contents = {
        "scores.json": "mine",
        "per_token_scores.pt": "mine",
        "notes.txt": "mine",
        ".hidden": "mine",
        "sub/file.txt": "mine",
    }
    for i, (rel, text) in enumerate(contents.items()):
        out = box.root / "truth" / f"u{i}"
        box.plant(out / rel, text)
        cases.append(
            Case(
                "5 toy truth --out",
                f"holds {rel}",
                ["toy", "truth", "specs/fixed/magic_wmdp.yaml", "--out", str(out)],
                (2,),
                must_say="did not write",
            )
        )
    out = box.root / "truth" / "fake_ours"
    box.plant(out / "scores.json", json.dumps({"produced_by": "toy:truth"}))
    box.plant(out / "extra.txt", "mine")
    cases.append(
        Case(
            "5 toy truth --out",
            "its sidecar plus a user file",
            ["toy", "truth", "specs/fixed/magic_wmdp.yaml", "--out", str(out)],
            (2,),
        )
    )
    link = box.root / "truth" / "linked"
    os.symlink(box.outside, link)
    cases.append(
        Case(
            "5 toy truth --out",
            "--out a link to a folder with user files",
            ["toy", "truth", "specs/fixed/magic_wmdp.yaml", "--out", str(link)],
            (2,),
        )
    )
    good = box.root / "truth" / "fresh"
    cases.append(
        Case(
            "5 toy truth --out",
            "new folder, then again (its own)",
            ["toy", "truth", "specs/fixed/magic_wmdp.yaml", "--out", str(good)],
            (0,),
        )
    )
    cases.append(
        Case(
            "5 toy truth --out",
            "rerun into its own folder",
            ["toy", "truth", "specs/fixed/magic_wmdp.yaml", "--out", str(good)],
            (0,),
        )
    )
    return cases


# --------------------------------------------------------------------------- 6: full or read-only disk
def disk(box: Any, Case: Any, skip_slow: bool) -> list[Any]:
    if (
        shutil.which("unshare") is None
        or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0
    ):
        return []
    cases = []
    mnt = box.root / "mnt"
    mnt.mkdir()
    py = f"{sys.executable} -m unlearnspec"
    fill = f"dd if=/dev/zero of={mnt}/fill bs=1k count=2000 2>/dev/null; "
    setup = f"mount -t tmpfs -o size=1m tmpfs {mnt} && mkdir -p {mnt}/rep && printf 'previous report\\n' > {mnt}/rep/exp_a.md && "
    check = f" ; rc=$?; test \"$(cat {mnt}/rep/exp_a.md)\" = 'previous report' || echo LOST-PREVIOUS-REPORT; exit $rc"
    for what, cmd in [
        ("report, disk full", f"{fill}{py} report runs/a --out {mnt}/rep"),
        ("report, no plot, disk full", f"{fill}{py} report runs/a --out {mnt}/rep --no-plot"),
        ("report two runs + study, disk full", f"{fill}{py} report runs/a runs/b --out {mnt}/rep"),
        (
            "report, 60 KB left",
            f"dd if=/dev/zero of={mnt}/fill bs=1k count=964 2>/dev/null; {py} report runs/a runs/b --out {mnt}/rep",
        ),
        ("recorded tables, disk full", f"{fill}{py} report --reference-only --out {mnt}/rep"),
        ("toy truth, disk full", f"{fill}{py} toy truth specs/fixed/magic_wmdp.yaml --out {mnt}/truth"),
        ("read-only mount", f"mount -o remount,ro {mnt} && {py} report runs/a --out {mnt}/rep --no-plot"),
    ] + (
        []
        if skip_slow
        else [
            (
                "run --toy, the model save hits the full disk",
                f"dd if=/dev/zero of={mnt}/fill bs=1k count=700 2>/dev/null; {py} run {SPEC} --toy --set 'training.lr=[0.001]' "
                f"--set training.max_steps=2 --set 'eval.tasks=[{{name: wmdp_bio_robust, num_fewshot: 0, limit: 10}}]' "
                f"--out {mnt}/run --reports-dir {mnt}/rep",
            )
        ]
    ):
        script = setup + cmd + check
        cases.append(Case("6 full disk", what, ["sh", "-c", script], (2,), subprocess=True, prefix=["unshare", "-rm"]))
    return cases


# --------------------------------------------------------------------------- 7: a rule selecting nothing
def nothing_selected(box: Any, Case: Any, skip_slow: bool) -> list[Any]:
    if skip_slow:
        return []
    cases = []
    base = yaml.safe_load((REPO / "specs" / "controls" / "random.yaml").read_text())
    for i, tokens in enumerate(
        [{"mode": "where", "where": "rand < -2"}, {"mode": "where", "where": "rand > 1 and rand < -1"}]
    ):
        data = json.loads(json.dumps(base))
        data.pop("control")
        data.pop("role")
        data["name"] = f"battery_nothing_{i}"
        data["tokens"] = tokens
        data["training"]["lr"] = [2.0e-5]
        data["eval"]["tasks"] = [{"name": "wmdp_bio_robust", "num_fewshot": 0, "limit": 20}]
        path = box.root / "specs" / f"battery_nothing_{i}.yaml"
        path.write_text(yaml.safe_dump(data))
        out = box.root / "runs" / f"nothing_{i}"
        cases.append(
            Case(
                "7 nothing selected",
                tokens["where"],
                ["run", str(path), "--toy", "--out", str(out), "--reports-dir", str(box.root / "rep_nothing")],
                (2,),
                subprocess=True,
                must_say="selects none",
                timeout=900,
            )
        )
    return cases


# --------------------------------------------------------------------------- 8: bounded reads
def reads(box: Any, Case: Any) -> list[Any]:
    cases = []
    fifo = box.root / "fifo"
    os.mkfifo(fifo)
    sock = box.root / "sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock))
    sparse = box.root / "sparse.json"
    with open(sparse, "wb") as fh:
        fh.truncate(600 * 1024**2)
    for i, target in enumerate(
        ["/dev/zero", "/dev/urandom", str(fifo), str(sock), str(sparse), "/proc/self/environ", str(box.root)]
    ):
        run = _copy_run(box, f"read{i}", lambda d: None)
        (run / "baseline" / "samples.json").unlink()
        os.symlink(target, run / "baseline" / "samples.json")
        cases.append(
            Case(
                "8 bounded reads",
                f"samples -> {target}",
                ["report", str(run), "--out", str(box.root / "rep_reads"), "--no-plot"],
                (0,),
                subprocess=True,
                timeout=120,
            )
        )
        cases.append(
            Case(
                "8 bounded reads",
                f"results.json -> {target}",
                ["diff", "runs/a", str(target)],
                (2,),
                subprocess=True,
                timeout=120,
            )
        )
    for i, t in enumerate(
        [
            torch.zeros(1).expand(2_000_000, 16, 32),
            torch.zeros(1, 64).expand(3000, 64),
            torch.zeros(3063).as_strided((3000, 64), (1, 1)),
            torch.zeros(2, 1, 64).expand(2, 500, 64),
        ]
    ):
        folder = box.root / "scores" / f"s{i}"
        folder.mkdir(parents=True)
        torch.save(t, folder / "per_token_scores.pt")
        spec = yaml.safe_load((REPO / "specs" / "exp5_selective.yaml").read_text())
        spec.pop("control")
        spec["scores"] = {
            k: {"path": str(folder / "per_token_scores.pt"), "alignment": "target"} for k in spec["scores"]
        }
        path = box.root / "specs" / f"battery_expanded_{i}.yaml"
        path.write_text(yaml.safe_dump(spec))
        cases.append(
            Case(
                "8 bounded reads",
                f"expanded score tensor {i}",
                ["doctor", str(path), "--format", "json"],
                (2,),
                subprocess=True,
                must_say="expanded or overlapping",
                timeout=300,
            )
        )
    for target in ("/dev/zero", str(fifo)):
        spec = yaml.safe_load((REPO / "specs" / "exp5_selective.yaml").read_text())
        spec.pop("control")
        spec["scores"] = {k: {"path": target, "alignment": "target"} for k in spec["scores"]}
        path = box.root / "specs" / f"battery_dev_{Path(target).name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        cases.append(
            Case("8 bounded reads", f"score path {target}", ["doctor", str(path)], (2,), subprocess=True, timeout=120)
        )
    return cases


# --------------------------------------------------------------------------- 9: a tampered trajectory.json
def trajectory(box: Any, Case: Any) -> list[Any]:
    from unlearnspec.errors import UserError
    from unlearnspec.magic.lds import load_trajectory_plan

    good = {
        "format": 1,
        "schedule": "sqrt",
        "param_names": ["a"],
        "weight_decay": 0.0,
        "optimizer": {"name": "sgd", "betas": [0.9, 0.999], "eps": 1e-8, "initial_step": 0, "max_grad_norm": None},
        "steps": [{"lr": 0.05, "micro_batches": [[0, 1], [2]]}, {"lr": 0.05, "micro_batches": [[3]]}],
    }
    edits = [
        ("lr", "Infinity"),
        ("lr", "1e-3"),
        ("lr", -0.1),
        ("lr", 1e400),
        ("lr", None),
        ("lr", True),
        ("row", 4),
        ("row", -5),
        ("row", 2**70),
        ("row", 1.5),
        ("row", "0"),
        ("eps", 0),
        ("betas", [1.0, 0.9]),
        ("decay", {"a": float("nan")}),
        ("name", "lion"),
        ("schedule", "every"),
        ("steps", []),
        ("initial_step", -1),
        ("format", 2),
        ("grad_norm", 0.0),
    ]
    cases = []
    for field, value in edits:
        data = json.loads(json.dumps(good))
        {
            "lr": lambda: data["steps"][0].__setitem__("lr", value),
            "row": lambda: data["steps"][1]["micro_batches"][0].__setitem__(0, value),
            "eps": lambda: data["optimizer"].__setitem__("eps", value),
            "betas": lambda: data["optimizer"].__setitem__("betas", value),
            "decay": lambda: data.__setitem__("weight_decay", value),
            "name": lambda: data["optimizer"].__setitem__("name", value),
            "schedule": lambda: data.__setitem__("schedule", value),
            "steps": lambda: data.__setitem__("steps", value),
            "initial_step": lambda: data["optimizer"].__setitem__("initial_step", value),
            "format": lambda: data.__setitem__("format", value),
            "grad_norm": lambda: data["optimizer"].__setitem__("max_grad_norm", value),
        }[field]()
        folder = box.root / "traj" / f"{field}_{len(cases)}"
        folder.mkdir(parents=True)
        (folder / "trajectory.json").write_text(json.dumps(data).replace("1e+400", "1e400"))

        def call(folder: Path = folder) -> tuple[int, str]:
            try:
                load_trajectory_plan(folder, n_rows=4)
            except UserError as exc:
                return 2, str(exc)
            return 0, "accepted"

        cases.append(Case("9 trajectory.json", f"{field}={value!r}", [], (2,), call=call))
    return cases


# --------------------------------------------------------------------------- 10: overflow
def overflow(box: Any, Case: Any) -> list[Any]:
    cases = []
    toy = yaml.safe_load((REPO / "unlearnspec" / "profiles" / "toy.yaml").read_text())
    for key in (
        "data.count_scale",
        "data.max_seq_len_scale",
        "training.steps_scale",
        "training.lr_scale.sgd",
        "training.lr_scale.adamw",
    ):
        for value in (1e308, 1.7e308, 10**30, 1e7, 10**400):
            data = json.loads(json.dumps(toy))
            data["world"] = str(REPO / "unlearnspec" / "profiles" / data["world"])
            parts = key.split(".")
            target = data
            for p in parts[:-1]:
                target = target[p]
            target[parts[-1]] = value
            path = box.root / "profiles_h" / f"{key}_{len(cases)}.yaml"
            path.parent.mkdir(exist_ok=True)
            path.write_text(yaml.safe_dump(data))
            cases.append(
                Case(
                    "10 overflow",
                    f"profile {key}={str(value)[:12]}",
                    ["show", SPEC, "--profile", str(path)],
                    (2,),
                    must_say=key,
                )
            )
    site = yaml.safe_load((REPO / "specs" / "profiles" / "slurm_example.yaml").read_text())
    for kind in ("score", "point", "baseline", "assemble"):
        for field, value in (
            ("mem_gb", 1.7e308),
            ("mem_gb", 1e300),
            ("time_min", 10**19),
            ("cpus", 2**64),
            ("gpus", 10**12),
            ("processes", 10**6),
        ):
            data = json.loads(json.dumps(site))
            data["slurm"]["jobs"][kind][field] = value
            path = box.root / "sites" / f"r_{kind}_{field}_{len(cases)}.yaml"
            path.write_text(yaml.safe_dump(data))
            cases.append(
                Case(
                    "10 overflow",
                    f"site {kind}.{field}={str(value)[:12]}",
                    ["show", SPEC, "--toy", "--cluster", str(path)],
                    (2,),
                    must_say=f"slurm.jobs.{kind}.{field}",
                )
            )
    for i, (spec_field, value) in enumerate(
        [("count", 10**400), ("count", 10**30), ("max_seq_len", 10**300), ("max_steps", 10**400)]
    ):
        spec = yaml.safe_load((REPO / SPEC).read_text())
        (
            spec["data"]["select"]
            if spec_field == "count"
            else spec["data"]
            if spec_field == "max_seq_len"
            else spec["training"]
        )[spec_field] = value
        path = box.root / "specs" / f"battery_big_{i}.yaml"
        path.write_text(yaml.safe_dump(spec))
        cases.append(
            Case(
                "10 overflow",
                f"spec {spec_field}=1e{len(str(value)) - 1} through --toy",
                ["show", str(path), "--toy"],
                (2,),
            )
        )
    for i, text in enumerate(
        [
            '"n": 1' + "0" * 400,
            '"n": 1e400',
            '"n": 18446744073709551616',
            '"acc": 1e400',
            '"lr": 1e400',
            '"n": -1',
            '"n": 1' + "0" * 5000,
        ]
    ):
        run = box.root / "runs" / f"num{i}"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(box.root / "runs" / "a", run, ignore=shutil.ignore_patterns("my_notes.txt"))
        raw = (run / "results.json").read_text()
        key = text.split(":")[0]
        import re

        raw = re.sub(rf"{key}: [0-9.e+-]+", text, raw, count=1)
        (run / "results.json").write_text(raw)
        cases.append(
            Case(
                "10 overflow",
                f"results {text[:30]}",
                ["report", str(run), "--out", str(box.root / "rep_num"), "--no-plot"],
                (2,),
            )
        )
        cases.append(Case("10 overflow", f"diff {text[:30]}", ["diff", "runs/a", str(run)], (2,)))
    return cases


# --------------------------------------------------------------------------- 11: SLURM environment and state
def slurm_state(box: Any, Case: Any) -> list[Any]:
    cases = []
    stubs = box.root / "stubs"
    stubs.mkdir()
    (stubs / "sbatch").write_text("#!/bin/sh\necho 'Submitted batch job 1'\n")
    (stubs / "sbatch").chmod(0o755)
    path = f"{stubs}:{Path(sys.executable).parent}:/usr/bin:/bin"
    cases.append(
        Case(
            "11 SLURM env/state",
            "sbatch without srun",
            [
                "run",
                SPEC,
                "--toy",
                "--executor",
                "slurm",
                "--cluster",
                "specs/profiles/slurm_example.yaml",
                "--out",
                str(box.root / "slurm_out"),
            ],
            (2,),
            subprocess=True,
            env={"PATH": path},
            must_say="srun is not",
        )
    )
    cases.append(
        Case(
            "11 SLURM env/state",
            "no sbatch",
            ["run", SPEC, "--toy", "--executor", "slurm", "--cluster", "specs/profiles/slurm_example.yaml"],
            (2,),
            subprocess=True,
            env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
        )
    )
    for i, payload in enumerate(
        [
            {"paths": 5},
            {"paths": "specs"},
            {"paths": [None]},
            {"paths": ["x"], "overrides": [1]},
            {"paths": ["x"], "retry_failed": "maybe"},
            {"paths": ["x"], "plan_device": "tpu"},
            [],
            7,
            "x",
            {"paths": []},
            {"paths": ["x"], "profile": ["a"]},
            {},
        ]
    ):
        folder = box.root / "slurm_req" / f"r{i}"
        (folder / ".slurm").mkdir(parents=True)
        (folder / ".slurm" / "request.json").write_text(json.dumps(payload))
        cases.append(
            Case("11 SLURM env/state", f"request.json {json.dumps(payload)[:40]}", ["status", str(folder)], (2,))
        )
    folder = box.root / "slurm_req" / "fifo"
    (folder / ".slurm").mkdir(parents=True)
    os.mkfifo(folder / ".slurm" / "request.json")
    cases.append(
        Case("11 SLURM env/state", "request.json a FIFO", ["status", str(folder)], (2,), subprocess=True, timeout=120)
    )
    return cases


# --------------------------------------------------------------------------- 12: toy task names
def toy_tasks(box: Any, Case: Any) -> list[Any]:
    cases = []
    for i, task in enumerate(
        [
            "../facts",
            "../corpora/wikitext",
            "/etc/passwd",
            "../tasks/toy_mmlu",
            "toy_wmdp/../toy_mmlu",
            ".",
            "",
            "*",
            "toy_wmdp*",
            "toy_wmdp\n",
            "_toy_wmdp_by_attribute",
            "toy_wmdp.jsonl",
            "TOY_WMDP",
            "..\\facts",
        ]
    ):
        cases.append(
            Case(
                "12 toy task names",
                repr(task),
                [
                    "toy",
                    "truth",
                    "specs/fixed/magic_wmdp.yaml",
                    "--task",
                    task,
                    "--out",
                    str(box.root / "tt" / f"t{i}"),
                ],
                (2,),
                must_say="no task",
            )
        )
    cases.append(
        Case(
            "12 toy task names",
            "--retain with a path task",
            [
                "toy",
                "truth",
                "specs/fixed/magic_wmdp.yaml",
                "--retain",
                "--task",
                "../facts",
                "--out",
                str(box.root / "tt" / "r"),
            ],
            (2,),
        )
    )
    return cases


# --------------------------------------------------------------------------- 13: devices where files are expected
def specials(box: Any, Case: Any) -> list[Any]:
    cases = []
    sp = box.root / "specials"
    sp.mkdir()
    os.mkfifo(sp / "fifo.yaml")
    os.symlink("/dev/zero", sp / "zero.yaml")
    os.symlink(sp / "loop.yaml", sp / "loop.yaml")
    os.symlink(sp / "nope", sp / "dangling.yaml")
    for target in (
        "/dev/null",
        "/dev/zero",
        str(sp / "fifo.yaml"),
        str(sp / "zero.yaml"),
        str(sp / "loop.yaml"),
        str(sp / "dangling.yaml"),
        str(sp),
    ):
        for cmd in (
            ["validate"],
            ["doctor"],
            ["show"],
            ["plan", "--toy"],
            ["report", "--no-plot", "--out", str(box.root / "rep_sp")],
        ):
            if cmd[0] == "show" and target == str(sp):
                continue
            cases.append(
                Case(
                    "13 devices and links",
                    f"{cmd[0]} {Path(target).name}",
                    [cmd[0], target, *cmd[1:]],
                    (2,),
                    subprocess=True,
                    timeout=120,
                    must_say=("not a regular file" if target in ("/dev/null",) and cmd[0] == "validate" else None),
                )
            )
    return cases


def build_cases(box: Any, Case: Any, skip_slow: bool = False) -> list[Any]:
    box.root.mkdir(parents=True)
    _project(box)
    os.chdir(box.root)
    return [
        *pr_check(box, Case),
        *site_text(box, Case),
        *links(box, Case),
        *names(box, Case),
        *truth_out(box, Case),
        *disk(box, Case, skip_slow),
        *nothing_selected(box, Case, skip_slow),
        *reads(box, Case),
        *trajectory(box, Case),
        *overflow(box, Case),
        *slurm_state(box, Case),
        *toy_tasks(box, Case),
        *specials(box, Case),
    ]
