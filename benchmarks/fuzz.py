"""Bad input and faults through the CLI, as a hostile but realistic user would try them.

Every case runs `antdiff ...` in its own process: a fork of one process that has imported
antdiff once (importing torch takes seconds on a busy machine), which then runs `cli.main` as the
`antdiff` process would, with its own stdout, stderr and exit status; kills, torchrun and the
examples run as real subprocesses. Each outcome is one of (checked in this order):

- traceback: "Traceback" in stderr (under torchrun: outside torchrun's own report), or an exit
  status other than 0, 2, 130, 143, or a case that did not end within its time limit;
- data lost: a watched run folder's files (names and bytes) changed by a command that did not
  exit 0, or a run killed at some moment whose resume failed;
- silently wrong: exit 0 for an input that must be refused;
- clean: anything else (a refusal that is one stderr line, or a success where one is allowed).
  A refusal of more than one stderr line is counted clean but listed as "not one line".

    python benchmarks/fuzz.py [--limit N] [--only CLASS] [--jobs J]

prints a table per class and writes benchmarks/results/fuzz.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from antdiff.cli import main as cli_main  # noqa: E402
from antdiff.config import FIELDS, TrainConfig  # noqa: E402
from test_reliability import BAD_INPUTS, snapshot, write_odd_files  # noqa: E402

TOY = "--dataset toy:gaussians8 --model mlp --timesteps 20 --num-samples 2 --sample-steps 2"
TINY = f"{TOY} --steps 2 --device cpu"
OUTCOMES = ("clean", "traceback", "silently wrong", "data lost")
ALLOWED = {0, 2, 130, 143}


@dataclass
class Case:
    cls: str
    argv: list[str]  # after `antdiff` (kind cli), or the whole command (other kinds)
    expect: str = "refuse"  # refuse | either
    watch: list[str] = field(default_factory=lambda: ["{R}"])
    kind: str = "cli"  # cli | process | torchrun | kill
    prepare: typing.Callable[[Path], None] | None = None
    timeout: float = 120.0
    kill: tuple[int, str] | None = None  # (signal, when: importing | started | checkpointed)


def forked(argv: list[str], cwd: Path, timeout: float) -> tuple[int | None, str, str]:
    """`antdiff ARGV` in a forked child of this process (antdiff already imported)."""
    out, err = tempfile.mkstemp(), tempfile.mkstemp()
    pid = os.fork()
    if pid == 0:  # the child: behave as the `antdiff` process
        code = 1
        try:
            os.chdir(cwd)
            os.dup2(out[0], 1)
            os.dup2(err[0], 2)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            code = cli_main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline, status = time.monotonic() + timeout, None
    while status is None:
        done, wstatus = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(wstatus)
        elif time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        else:
            time.sleep(0.05)
    texts = []
    for fd, path in (out, err):
        os.close(fd)
        texts.append(Path(path).read_text(errors="replace"))
        os.unlink(path)
    return status, texts[0], texts[1]


def process(cmd: list[str], cwd: Path, timeout: float, kill=None) -> tuple[int | None, str, str]:
    """A real subprocess; `kill`: (signal, when) sends the signal while importing (0.3 s in),
    once the run folder exists, or once it holds a checkpoint."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill is not None:
        sig, when = kill
        mark = {"started": "run/metrics.jsonl", "checkpointed": "run/checkpoints/latest"}.get(when)
        deadline = time.monotonic() + timeout
        time.sleep(0.3)
        while mark and not (cwd / mark).exists() and proc.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return None, out, err
    return proc.returncode, out, err


def ours(stderr: str) -> str:
    """stderr without torchrun's own report of a failed worker (its traceback, its log lines)."""
    cut = stderr.find("torch/distributed/run.py")
    if cut >= 0:
        stderr = stderr[: stderr.rfind("Traceback", 0, cut)]
    return "\n".join(
        line for line in stderr.splitlines() if line[:1] not in "WEI" or " torch/" not in line
    )


def public(text: str, base: Path) -> str:
    """`text` without this machine's paths: the case folder as {D}, the checkout as ., ..."""
    paths = ((str(base), "{D}"), (str(ROOT), "."), (sys.executable, "python"), (sys.prefix, "venv"))
    for path, name in paths:
        text = text.replace(path, name)
    return text


def judge(case: Case, code: int | None, err: str, changed: bool, resumed: bool) -> str:
    allowed = ALLOWED | ({1} if case.kind == "torchrun" else set())  # torchrun: a worker failed
    if code is None or "Traceback" in err or code not in allowed:
        return "traceback"
    if (changed and code != 0) or not resumed:
        return "data lost"
    if case.expect == "refuse" and code == 0:
        return "silently wrong"
    return "clean"


def run_case(case: Case, base: Path, index: int) -> dict:
    d = base / f"c{index}"
    d.mkdir()
    subst = {"{D}": str(base), "{R}": str(base / "R"), "{C}": str(d), "{ROOT}": str(ROOT)}

    def fill(s: str) -> str:
        for k, v in subst.items():
            s = s.replace(k, v)
        return s

    if case.prepare is not None:
        case.prepare(d)
    argv = [fill(a) for a in case.argv]
    watched = [Path(fill(w)) for w in case.watch]
    before = [snapshot(w) for w in watched]
    start = time.perf_counter()
    resumed = True
    if case.kind == "cli":
        code, _, err = forked(argv, d, case.timeout)
    elif case.kind == "kill":
        cmd = [sys.executable, "-m", "antdiff", *argv]
        code, _, err = process(cmd, d, case.timeout, case.kill)
        if case.kill[0] == signal.SIGKILL and code == -signal.SIGKILL:
            code = 2  # the kill itself is not the program's fault; what matters is the resume
        again = [*argv, "--resume"] if (d / "run" / "config.json").exists() else argv
        rcode, _, rerr = forked(again, d, case.timeout)
        resumed = rcode == 0
        err += rerr
    else:
        code, _out, err = process(argv, d, case.timeout)
        err = ours(err) if case.kind == "torchrun" else err
    changed = [snapshot(w) for w in watched] != before
    outcome = judge(case, code, err, changed, resumed)
    lines = err.strip().splitlines()
    if case.kind == "torchrun":  # one line from each rank
        lines = [line for line in lines if line.strip()]
        quiet = all(line.startswith("antdiff train: error:") for line in lines)
    else:  # a SIGKILLed process says nothing
        quiet = case.kill is not None and case.kill[0] == signal.SIGKILL
    return {
        "class": case.cls,
        "argv": public(" ".join(argv), base),
        "expect": case.expect,
        "exit": code,
        "outcome": outcome,
        "one_line": code == 0 or len(lines) == 1 or quiet,
        "stderr_tail": [public(line, base) for line in lines[-3:]],
        "seconds": round(time.perf_counter() - start, 2),
    }


def flag_cases() -> list[Case]:
    """Each train flag with values of the wrong type, out of range or empty (--dry-run: the
    resolved config is all that is checked)."""
    hints = typing.get_type_hints(TrainConfig)
    cases = []
    for name in FIELDS:
        flag, kind = "--" + name.replace("_", "-"), hints[name]
        args = typing.get_args(kind)
        base = next((a for a in args if a is not type(None)), kind)
        base = typing.get_origin(base) or base
        values = {
            int: ["abc", "", "1.5", "-1", "1e3"],
            float: ["abc", "", "nan", "-inf"],
            str: ["", " "],
            dict: ["", "[]", "{", '"text"', "null"],
            bool: ["yes"],
        }[base]
        for v in values:
            argv = ["train", "--dry-run", *TINY.split(), f"{flag}={v}"]
            cases.append(Case("flags", argv, watch=[]))
    return cases


def table_cases() -> list[Case]:
    """tests/test_reliability.py's table, against a finished run R that must not change."""
    cases = []
    for command, _ in BAD_INPUTS:
        argv = command.replace("{D}", "{D}/files").split(" ")
        if argv[0] == "train" and not any(a.startswith(("--out", "--resume")) for a in argv):
            argv.append("--out={C}/new")
        cases.append(Case("test table", argv))
    return cases


def issue_cases() -> list[Case]:
    """The classes of the reliability issue (late checks, tracebacks, regressions, messages)."""
    train = ["train", *TINY.split(), "--out={C}/run"]
    c = [
        # 3: checks that come late
        Case("late checks", [*train, "--clusters=affinity:20:auto", "--batch-size=16"]),
        Case("late checks", [*train, "--clusters=affinity:9:auto", "--batch-size=4"]),
        Case("late checks", [*train, "--clusters=affinity:10:{D}/files/a8.npy"]),
        Case("late checks", [*train, "--clusters=affinity:9:{D}/files/a8.npy"]),
        # 5: tracebacks
        Case("tracebacks", [*train, f"--seed={2**64}"]),
        Case("tracebacks", ["sample", "--run={R}", f"--seed={2**64}", "--out={C}/s.npz"]),
        Case("tracebacks", ["evaluate", "--run={R}", f"--seed={2**65}", "--num=2"]),
        Case("tracebacks", ["affinity", "--run={R}", f"--seed={2**64}", "--out={C}/a"]),
        # 7: regressions
        Case("regressions", ["cluster", "--timesteps", "10", "-k", "3"], expect="either"),
        Case("regressions", ["cluster", "--cost=affinity", "--affinity={D}/files/noaff.npz"]),
        # 11: ignored input and poor messages
        Case("messages", ["train", *TINY.split(), "--out="]),
        Case("messages", [*train, "--dataset=folder:"]),
        Case("messages", [*train, "--dataset=npz:"]),
        Case("messages", ["sample", "--run={R}", "--out={C}/s.jpg"]),
        Case("messages", ["sample", "--run={R}", "--out={C}/s.tar.gz"]),
        Case("messages", ["export", "--run={R}", "--out={R}"]),
        Case("messages", [*train, "--device=tpu"]),
        Case("messages", ["sample", "--run={R}", "--device=mps", "--out={C}/s.npz"]),
        Case("messages", [*train, "--affinity-warmup=3"]),
        # the option ranges of samplers, weightings and methods
        Case("option ranges", [*train, "--timestep-sampling=loss-aware:nan"]),
        Case("option ranges", [*train, "--weighting=p2:gamma=1e308"]),
        Case("option ranges", [*train, "--weighting=p2:k=1,k=2"]),
        Case("option ranges", [*train, "--weighting=min-snr:inf"]),
        Case("option ranges", [*train, "--timestep-sampling=logit-normal:0,inf"]),
        Case("option ranges", [*train, "--weighting=edm2:lr=nan"]),
        Case("option ranges", [*train, "--method=uw", '--method-options={"lr": -1}']),
        Case("option ranges", [*train, "--method=famo", '--method-options={"gamma": "nan"}']),
    ]
    for opts in ('{"hidden": -5}', '{"hidden": 0}', '{"depth": -2}', '{"hidden": "wide"}'):
        c.append(Case("tracebacks", [*train, f"--model-options={opts}"]))
    return c


def run_folder_cases() -> list[Case]:
    """Copies of R edited by hand; each command on them: refused in one line, or fine."""

    def edit(change: typing.Callable[[Path], None]) -> typing.Callable[[Path], None]:
        def prepare(d: Path) -> None:
            shutil.copytree(d.parent / "R", d / "run", ignore=shutil.ignore_patterns(".lock"))
            change(d / "run")

        return prepare

    def latest(run: Path) -> Path:
        return max((run / "checkpoints").glob("step_*"))

    edits = {
        "config garbage": lambda r: (r / "config.json").write_text("{not json"),
        "config missing": lambda r: (r / "config.json").unlink(),
        "config wrong type": lambda r: (r / "config.json").write_text(
            json.dumps({**json.loads((r / "config.json").read_text()), "steps": "five"})
        ),
        "config unknown key": lambda r: (r / "config.json").write_text(
            json.dumps({**json.loads((r / "config.json").read_text()), "stepz": 5})
        ),
        "run.json truncated": lambda r: (r / "run.json").write_text("{"),
        "run.json missing": lambda r: (r / "run.json").unlink(),
        "weights truncated": lambda r: (latest(r) / "model.safetensors").write_bytes(b"\0" * 9),
        "state garbage": lambda r: (latest(r) / "state.pt").write_bytes(b"garbage"),
        "all checkpoints gone": lambda r: shutil.rmtree(r / "checkpoints"),
        "metrics garbage": lambda r: (r / "metrics.jsonl").write_text("{]\n"),
        "checkpoint folder a file": lambda r: (
            shutil.rmtree(latest(r)),
            latest(r).parent.joinpath("step_999").write_text("x"),
        ),
    }
    commands = [
        ["sample", "--run={C}/run", "--num=2", "--steps=2", "--out={C}/s.npz"],
        ["export", "--run={C}/run", "--out={C}/e"],
        ["train", "--resume", "--out={C}/run", "--steps=6"],
        ["evaluate", "--run={C}/run", "--num=2", "--steps=2"],
    ]
    return [
        Case("run folders", argv, expect="either", watch=["{C}/run"], prepare=edit(change))
        for change in edits.values()
        for argv in commands
    ]


def kill_cases() -> list[Case]:
    """A run stopped by SIGINT, SIGTERM or SIGKILL at some moment, then resumed."""
    argv = [*TOY.split(), "--steps=400", "--checkpoint-every=25", "--out={C}/run"]
    return [
        Case("kills", ["train", *argv], expect="either", watch=[], kind="kill", kill=(sig, at))
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
        for at in ("importing", "started", "checkpointed")
    ]


def process_cases() -> list[Case]:
    """torchrun with ranks that disagree, and the examples with bad arguments."""
    py = sys.executable
    run = [py, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    flags = [str(ROOT / "tests" / "rank_flags.py"), "train", *TINY.split(), "--out={C}/run"]
    c = [
        Case("torchrun", [*run, f"--master_port={29811 + i}", *flags, "--", x], kind="torchrun")
        for i, x in enumerate(("--lr=3e-4", "--seed=3", "--method=pcgrad", "--clusters=log-snr:3"))
    ]
    acc = [py, str(ROOT / "examples" / "train_unconditional_accelerate.py")]
    data = ["--train-data-dir={D}/files/images", "--resolution=8", "--output-dir={C}/o"]
    for bad in (
        "--checkpointing-steps=0",
        "--num-steps=0",
        "--train-batch-size=0",
        "--gradient-accumulation-steps=-1",
        "--learning-rate=nan",
        "--ema-decay=1.5",
        "--resolution=0",
        "--ant-method=bogus",
        "--ant-clusters=foo:3",
        "--train-batch-size=64",  # more than the folder holds
    ):
        c.append(Case("examples", [*acc, *data, bad], kind="process", watch=[]))
    c.append(Case("examples", [*acc, "--train-data-dir={C}/none"], kind="process", watch=[]))
    dropin = [py, str(ROOT / "examples" / "dropin.py")]
    for bad in ("--steps=0", "--method=bogus", "--steps=x"):
        c.append(Case("examples", [*dropin, bad], kind="process", watch=[]))
    return c


def make_files(base: Path) -> None:
    """The finished run R and the odd files of tests/test_reliability.py (same names)."""
    d = base / "files"
    d.mkdir()
    argv = [*TOY.split(), "--steps=4", "--checkpoint-every=2", f"--out={base / 'R'}"]
    assert forked(["train", *argv], base, 300)[0] == 0, "could not train the run R"
    write_odd_files(d)
    np.save(d / "a8.npy", np.eye(8))
    (d / "images").mkdir()
    from PIL import Image

    for i in range(12):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(d / "images" / f"{i}.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, help="run at most N cases (spread over the classes)")
    p.add_argument("--only", help="one class, e.g. flags, kills, 'run folders'")
    p.add_argument("--jobs", type=int, default=1, help="cases at a time (default 1)")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "fuzz.json"))
    args = p.parse_args()
    cases = [
        *flag_cases(),
        *table_cases(),
        *issue_cases(),
        *run_folder_cases(),
        *kill_cases(),
        *process_cases(),
    ]
    if args.only:
        cases = [c for c in cases if c.cls == args.only]
        if not cases:
            p.error(f"no class {args.only!r}")
    if args.limit:
        cases = cases[:: max(1, len(cases) // args.limit)][: args.limit]
    base = Path(tempfile.mkdtemp(prefix="antdiff-fuzz-"))
    try:
        make_files(base)
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda ic: run_case(ic[1], base, ic[0]), enumerate(cases)))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    classes = list(dict.fromkeys(r["class"] for r in results))
    print(
        f"{'class':<14} {'cases':>5} " + " ".join(f"{o:>14}" for o in OUTCOMES) + "  not one line"
    )
    for cls in [*classes, "all"]:
        rows = [r for r in results if cls in ("all", r["class"])]
        counts = [sum(r["outcome"] == o for r in rows) for o in OUTCOMES]
        messy = sum(not r["one_line"] for r in rows)
        print(
            f"{cls:<14} {len(rows):>5} " + " ".join(f"{n:>14}" for n in counts) + f"  {messy:>12}"
        )
    for r in results:
        if r["outcome"] != "clean" or not r["one_line"]:
            print(f"[{r['outcome']}] {r['class']}: {r['argv'][-160:]} -> exit {r['exit']}")
            for line in r["stderr_tail"]:
                print(f"    {line[:200]}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print(f"{len(results)} cases; written to {args.json}")


if __name__ == "__main__":
    main()
