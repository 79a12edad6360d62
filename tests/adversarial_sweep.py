r"""The adversarial sweep of issue 12, re-runnable.

Tries what an adversarial user would: bad values for every flag of every
binary, corrupt IDX files, a results folder tampered with before --resume,
two writers on one folder, SIGKILL at random points (during the first compile
and during checkpoint writes too) and SIGTERM/SIGINT once and twice. Each case
is classified:

* clean: a one-line error (naming the flag or file where the case says which)
  and an exit status != 0, or a correct result;
* traceback: a Python traceback on stderr;
* not_one_line: refused, but with several lines (e.g. the whole help) or
  without naming what was wrong;
* silent_damage: wrong, mixed or corrupt output accepted (exit status 0 for
  a value that cannot be right, a resumed file that differs from the
  uninterrupted run's, a folder changed by a refused command);
* crash: killed by a signal of its own (segfault, abort);
* timeout: still running after the case's limit.

Not collected by pytest (no test_ prefix). Run it pinned to one core:

  taskset -c 0 python tests/adversarial_sweep.py --out=/tmp/sweep

``--only=flags,idx,tamper,concurrent,kills,signals`` runs some categories;
``--kills=N`` sets the number of SIGKILLs (default 21). The whole sweep takes
about an hour on one busy CPU core. The IDX cases corrupt copies of the
MNIST IDX files in ``--mnist`` (default: $EAHES_MNIST_DIR, else
/work/shared/data/mnist).
"""

import argparse
import collections
import concurrent.futures
import dataclasses
import gzip
import hashlib
import json
import os
import pathlib
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from typing import Callable

# The checkout whose binaries run (--repo: e.g. an older one, for totals
# before a fix).
REPO = pathlib.Path(__file__).resolve().parent.parent
# absl's log lines (I1125 17:40:05 ...) are not error lines.
_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")
_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS,
                  signal.SIGILL, signal.SIGFPE}

# The reproduction: T and K.
T = ("train", "--model=mlp", "--data_source=sample", "--num_workers=4")
K = ("--checkpoint_every=5", "--rounds=60", "--eval_every=5", "--seed=3",
     "--method=DEAHES-O")
# A tiny run of train for flag cases that a value does not stop.
TINY = ("--model=mlp", "--data_source=sample", "--num_workers=2",
        "--rounds=2", "--eval_every=2", "--train_eval_size=200")
HUGE = str(2**63)


@dataclasses.dataclass
class Outcome:
  category: str
  case: str
  outcome: str
  detail: str = ""


# absl's hint after a flag it cannot parse (its first line names the flag).
_ABSL_HINT = "Pass --helpshort or --helpfull to see help on flags."


def error_lines(stderr: str) -> list[str]:
  """The lines a user reads as the error: not log lines, warnings or
  absl's fixed hint."""
  return [l for l in stderr.splitlines()
          if l.strip() and not _LOG_LINE.match(l)
          and not l.startswith("warning:") and l.strip() != _ABSL_HINT]


# The commands running now: killed if the sweep itself is stopped (each
# runs in its own process group, so that signals reach only it).
_LIVE: set[subprocess.Popen] = set()


def start(binary: str, *args: str) -> subprocess.Popen:
  proc = subprocess.Popen(
      [sys.executable, "-m", f"experiments.{binary}", *args], cwd=REPO,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      start_new_session=True)
  _LIVE.add(proc)
  return proc


def _stop_live(signum, frame):
  del frame
  for proc in list(_LIVE):
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
  sys.exit(128 + signum)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int | None, str,
                                                             str]:
  """Waits for ``proc``; (None, out, err) if it ran past ``timeout``."""
  try:
    out, err = proc.communicate(timeout=timeout)
    rc = proc.returncode
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    rc = None
  _LIVE.discard(proc)
  return rc, out, err


def classify(rc: int | None, err: str, *, expect: str = "reject",
             mention: str | None = None, damage: str | None = None
             ) -> tuple[str, str]:
  """An outcome and a detail for one finished command.

  Args:
    rc: its exit status (None: timed out).
    err: its stderr.
    expect: "reject" (a value that cannot be right: must exit != 0),
      "accept" (must succeed) or "either".
    mention: what a refusal must name (a flag, a file), if anything.
    damage: a description of wrong output found by the case's check.
  """
  lines = error_lines(err)
  last = lines[-1][:160] if lines else ""
  if rc is None:
    return "timeout", last
  if rc < 0 and -rc in _CRASH_SIGNALS or rc in (134, 139):
    return "crash", f"rc={rc} {last}"
  if "Traceback (most recent call last)" in err:
    tail = [l for l in err.splitlines() if l.strip()]
    return "traceback", tail[-1][:160] if tail else ""
  if damage:
    return "silent_damage", damage
  if rc == 0:
    if expect == "reject":
      return "silent_damage", "accepted (exit 0)"
    return "clean", "ok"
  if expect == "accept":
    return "not_one_line", f"refused: {last}"
  if len(lines) != 1:
    return "not_one_line", f"{len(lines)} lines: {last}"
  if mention and mention not in lines[0]:
    return "not_one_line", f"does not name {mention}: {last}"
  return "clean", lines[0][:160]


def run_case(binary: str, args: list[str], *, expect: str = "reject",
             mention: str | None = None, timeout: float = 240,
             check: Callable[[int], str | None] | None = None
             ) -> tuple[str, str]:
  rc, _, err = finish(start(binary, *args), timeout)
  damage = check(rc) if check is not None and rc is not None else None
  return classify(rc, err, expect=expect, mention=mention, damage=damage)


def strict_json(text: str):
  def reject(name):
    raise ValueError(f"non-standard JSON constant {name}")
  return json.loads(text, parse_constant=reject)


def folder_problem(out: pathlib.Path) -> str | None:
  """Wrong output in a results folder a run reported as finished."""
  metrics = out / "metrics.jsonl"
  if not (out / "summary.json").exists():
    return None  # Not finished: checked by the exit status.
  try:
    rows = [strict_json(l) for l in metrics.read_text().splitlines()]
    summary = strict_json((out / "summary.json").read_text())
    config = strict_json((out / "config.json").read_text())["config"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"unreadable results: {e}"
  keys = [(r["round"], r["seed"]) for r in rows]
  if len(set(keys)) != len(keys):
    return "repeated (round, seed) rows"
  want = (config["rounds"] + 1) * config["num_seeds"]
  if len(rows) != want:
    return f"{len(rows)} rows, expected {want}"
  if any(v is None for v in summary["final_test_accuracy"]):
    return "a null final accuracy"
  return None


def snapshot(out: pathlib.Path) -> dict[str, bytes]:
  if not out.exists():
    return {}
  return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*")
          if p.is_file() and p.name != ".lock"}


# ------------------------------------------------------------------ flags --


def flag_cases(tmp: pathlib.Path) -> list[tuple]:
  """(binary, args, expect, mention, check factory) for bad flag values."""
  a_file = tmp / "a_file"
  a_file.write_text("x")
  cases = []
  n = iter(range(10**6))

  def out():
    return tmp / f"out{next(n)}"

  def train(flag, value, expect="reject"):
    d = out()
    cases.append(("train", [*TINY, f"--out_dir={d}", f"--{flag}={value}"],
                  expect, f"--{flag}", lambda rc, d=d: folder_problem(d)))

  valid_zero = {"rounds", "train_eval_size", "checkpoint_every", "seed"}
  for flag in ("num_workers", "comm_period", "rounds", "batch_size",
               "hessian_samples", "dw_history", "num_seeds", "seed",
               "eval_every", "train_eval_size", "checkpoint_every"):
    train(flag, -1)
    train(flag, 0, "either" if flag in valid_zero else "reject")
    # A huge checkpoint interval is a valid "never" (the run is checked).
    train(flag, HUGE, "either" if flag == "checkpoint_every" else "reject")
    train(flag, "abc")
  for flag in ("lr", "momentum", "alpha", "overlap_ratio", "label_skew",
               "weight_decay", "failure_rate", "mean_outage",
               "straggler_rate", "straggler_slowdown", "dw_threshold"):
    train(flag, -1, "either" if flag == "dw_threshold" else "reject")
    train(flag, "nan")
    train(flag, "inf")
  train("lr", "abc")
  train("num_workers", 10**6)
  train("batch_size", 10**7)
  train("eval_every", 10**9, "either")
  for flag in ("method", "model", "failure_model", "failure_mode",
               "exchange_order", "dw_master_estimate", "oracle_variant",
               "execution", "conv_impl", "seed_execution", "data_source"):
    train(flag, "nosuch")
  for value in ("", "a,b", "nan,0.5", "0.5,0.6", "1"):
    train("dw_coeffs", value, "either" if value == "1" else "reject")
  # Flags naming files and folders.
  train("mnist_dir", tmp / "missing")
  train("mnist_dir", a_file)
  cases.append(("train", [*TINY, f"--out_dir={a_file}"], "reject",
                str(a_file), None))
  cases.append(("train", [*TINY, f"--out_dir={a_file}/sub"], "reject",
                str(a_file), None))
  cases.append(("train", [*TINY, "--out_dir=/proc/self/nope/run"], "reject",
                "/proc/self/nope", None))
  cases.append(("train", [*TINY, f"--out_dir={out()}",
                          f"--tensorboard_dir={a_file}/tb"], "reject",
                "--tensorboard_dir", None))
  cases.append(("train", [*TINY, f"--out_dir={out()}", "stray"], "reject",
                "stray", None))
  cases.append(("train", [*TINY, f"--out_dir={out()}", "--nosuch=1"],
                "reject", "nosuch", None))

  # reproduce_paper: a one-run grid.
  def grid(*args, expect="reject", mention=None):
    d = out()
    cases.append(("reproduce_paper",
                  ["--model=mlp", "--data_source=sample", "--rounds=2",
                   "--eval_every=2", "--num_seeds=1", "--methods=EASGD",
                   "--workers=2", "--periods=1", "--overlap_ratios=",
                   f"--out_dir={d}", *args], expect, mention, None))

  grid("--preset=nosuch", mention="--preset")
  grid("--study=nosuch", mention="--study")
  grid("--workers=abc", mention="--workers")
  grid("--workers=0", mention="--workers")
  grid("--workers=", expect="either")
  grid("--periods=-1", mention="--periods")
  grid("--overlap_ratios=2", mention="--overlap_ratios")
  grid("--overlap_ratios=nan", mention="--overlap_ratios")
  grid("--methods=NOSUCH", mention="--methods")
  grid("--rounds=-1", mention="--rounds")
  grid(f"--rounds={HUGE}", mention="--rounds")
  grid("--num_seeds=0", mention="--num_seeds")
  grid("--eval_every=0", mention="--eval_every")
  grid("--checkpoint_every=-1", mention="--checkpoint_every")
  grid("--model=nosuch", mention="--model")
  grid("stray", mention="stray")
  cases.append(("reproduce_paper", ["--model=mlp"], "reject", "--out_dir",
                None))
  cases.append(("reproduce_paper", [f"--out_dir={a_file}", "--model=mlp",
                                    "--data_source=sample"], "reject",
                str(a_file), None))

  # benchmark, sized down by hand (--smoke would override the flags tried).
  def bench(*args, mention=None, expect="reject"):
    cases.append(("benchmark", ["--methods=sgd", "--models=mlp",
                                "--executions=map", "--workers=1",
                                "--rounds=1", "--repeats=1", "--noisolate",
                                *args], expect, mention, None))

  bench("--repeats=0", mention="--repeats")
  bench("--repeats=-1", mention="--repeats")
  bench(f"--repeats={HUGE}", mention="--repeats")
  bench("--batch_size=0", mention="--batch_size")
  bench("--comm_period=0", mention="--comm_period")
  bench("--rounds=0", mention="--rounds")
  bench("--workers=abc", mention="--workers")
  bench("--workers=", mention="--workers")
  bench("--methods=nosuch", mention="nosuch")
  bench("--models=nosuch", mention="nosuch")
  bench("--executions=nosuch", mention="nosuch")
  bench("--skip=garbage", mention="garbage")
  bench(f"--json_out={a_file}/r.json", mention="--json_out")
  bench(f"--json_out={tmp}", mention="--json_out")
  bench("stray", mention="stray")

  def hess(*args, mention=None):
    cases.append(("hessian_benchmark", ["--models=mlp", "--batch_size=8",
                                        "--repeats=1", *args], "reject",
                  mention, None))

  hess("--repeats=0", mention="--repeats")
  hess("--batch_size=0", mention="--batch_size")
  hess("--batch_size=-5", mention="--batch_size")
  hess("--models=nosuch", mention="nosuch")
  hess("--models=", mention="--models")
  hess("--conv_impl=nosuch", mention="--conv_impl")
  hess("stray", mention="stray")

  def cross(*args, mention=None):
    cases.append(("crosscheck_torch",
                  ["--data_source=synthetic", "--steps=2", "--report_steps=1",
                   "--nocontrol", *args], "reject", mention, None))

  cross("--steps=0", mention="--steps")
  cross("--steps=-1", mention="--steps")
  cross("--report_steps=abc", mention="--report_steps")
  cross("--lr=nan", mention="--lr")
  cross("--batch_size=0", mention="--batch_size")
  cross(f"--seed={HUGE}", mention="--seed")
  cross("--data_source=nosuch", mention="--data_source")
  cross("stray", mention="stray")

  def dist(*args, mention=None):
    cases.append(("train_distributed",
                  ["--model=mlp", "--data_source=sample", "--num_workers=2",
                   "--rounds=2", f"--out_dir={out()}", *args], "reject",
                  mention, None))

  dist("--num_workers=0", mention="--num_workers")
  dist("--rounds=-1", mention="--rounds")
  dist("--lr=nan", mention="--lr")
  dist(f"--seed={HUGE}", mention="--seed")
  dist("--kill_worker=abc", mention="--kill_worker")
  dist("--kill_worker=9:1", mention="--kill_worker")
  dist("stray", mention="stray")
  cases.append(("train_distributed", ["--model=mlp", "--data_source=sample",
                                      f"--out_dir={a_file}"], "reject",
                str(a_file), None))

  # plot: a results folder argument.
  bad = tmp / "bad_results"
  bad.mkdir()
  (bad / "metrics.jsonl").write_text("{not json\n")
  (bad / "config.json").write_text("{}")
  cases.append(("plot", [], "reject", None, None))
  cases.append(("plot", [str(tmp / "missing")], "reject", "missing", None))
  cases.append(("plot", [str(a_file)], "reject", str(a_file), None))
  cases.append(("plot", [str(bad)], "reject", str(bad), None))
  cases.append(("plot", [str(bad), "extra"], "reject", None, None))
  return cases


def sweep_flags(tmp: pathlib.Path, report, jobs: int) -> None:
  """Runs the flag cases, ``jobs`` at a time (they mostly wait on imports)."""

  def one(case):
    binary, args, expect, mention, check = case
    shown = [a for a in args if a not in TINY
             and not a.startswith(f"--out_dir={tmp}/out")]
    outcome, detail = run_case(binary, args, expect=expect, mention=mention,
                               check=check, timeout=300)
    return f"{binary} " + " ".join(shown), outcome, detail

  with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
    for name, outcome, detail in pool.map(one, flag_cases(tmp)):
      report("flags", name.strip(), outcome, detail)


# -------------------------------------------------------------------- idx --


def _idx(magic_dims: tuple[int, ...], body: bytes) -> bytes:
  magic = 0x803 if len(magic_dims) == 3 else 0x801
  return struct.pack(">I", magic) + struct.pack(
      f">{len(magic_dims)}I", *magic_dims) + body


def sweep_idx(tmp: pathlib.Path, mnist: pathlib.Path, report) -> None:
  names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
           "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
  raw = {}
  for name in names:
    with gzip.open(mnist / (name + ".gz"), "rb") as f:
      raw[name] = f.read()
  small = {  # 600 training and 100 test digits keep accepted runs short.
      "train-images-idx3-ubyte": _idx((600, 28, 28), raw[names[0]][16:16 + 600
                                                                   * 784]),
      "train-labels-idx1-ubyte": _idx((600,), raw[names[1]][8:8 + 600]),
      "t10k-images-idx3-ubyte": _idx((100, 28, 28), raw[names[2]][16:16
                                                                  + 100 * 784]),
      "t10k-labels-idx1-ubyte": _idx((100,), raw[names[3]][8:8 + 100]),
  }
  ti, tl = names[0], names[1]
  variants = {
      "intact": ({}, "accept", None),
      "truncated_images": ({ti: small[ti][:len(small[ti]) // 2]}, "reject",
                           ti),
      "header_only": ({ti: small[ti][:10]}, "reject", ti),
      "empty_file": ({tl: b""}, "reject", tl),
      "zero_records": ({ti: _idx((0, 28, 28), b""), tl: _idx((0,), b"")},
                       "reject", "train"),
      "wrong_magic": ({tl: struct.pack(">I", 0x999) + small[tl][4:]},
                      "reject", tl),
      "images_magic_for_labels": ({tl: small[ti]}, "reject", tl),
      "mismatched_counts": ({tl: _idx((500,), small[tl][8:508])}, "reject",
                            "train"),
      "extra_trailing_bytes": ({ti: small[ti] + b"\0" * 100}, "reject", ti),
      "label_out_of_range": ({tl: small[tl][:8] + bytes([200])
                              + small[tl][9:]}, "reject", tl),
      "wrong_image_size": ({ti: _idx((600, 14, 56), small[ti][16:])},
                           "reject", ti),
      "bad_gzip": ({tl + ".gz": b"\x1f\x8bnot gzip"}, "reject", tl),
      "missing_file": ({"-" + tl: b""}, "reject", tl),
  }
  for name, (changes, expect, mention) in variants.items():
    folder = tmp / f"idx_{name}"
    folder.mkdir()
    files = dict(small)
    for fname, content in changes.items():
      if fname.startswith("-"):
        files.pop(fname[1:])
      elif fname.endswith(".gz"):
        files.pop(fname[:-3])
        files[fname] = content
      else:
        files[fname] = content
    for fname, content in files.items():
      (folder / fname).write_bytes(content)
    d = tmp / f"idx_{name}_out"
    outcome, detail = run_case(
        "train", ["--model=mlp", "--data_source=idx", f"--mnist_dir={folder}",
                  "--num_workers=2", "--rounds=2", "--eval_every=2",
                  "--train_eval_size=200", f"--out_dir={d}"],
        expect=expect, mention=mention, check=lambda rc: folder_problem(d))
    report("idx", name, outcome, detail)


# --------------------------------------------------------------- baseline --


def baseline(tmp: pathlib.Path) -> tuple[pathlib.Path, bytes]:
  """An uninterrupted run of T K; its folder and metrics bytes."""
  out = tmp / "baseline"
  rc, _, err = finish(start(*T, *K, f"--out_dir={out}"), 600)
  if rc != 0:
    sys.exit(f"the baseline run failed: {err[-2000:]}")
  return out, (out / "metrics.jsonl").read_bytes()


def resume(out: pathlib.Path, *extra: str, timeout: float = 300
           ) -> tuple[int | None, str]:
  rc, _, err = finish(start(*T, *K, f"--out_dir={out}", "--resume", *extra),
                      timeout)
  return rc, err


def same_as(out: pathlib.Path, base: bytes) -> str | None:
  metrics = out / "metrics.jsonl"
  if not metrics.exists():
    return "no metrics.jsonl"
  if metrics.read_bytes() != base:
    return "metrics.jsonl differs from the uninterrupted run's"
  if not (out / "summary.json").exists():
    return "no summary.json"
  return None


# ---------------------------------------------------------------- tamper --


def _newest_checkpoint(out: pathlib.Path) -> pathlib.Path:
  steps = [p for p in (out / "checkpoints").iterdir() if p.name.isdigit()]
  return max(steps, key=lambda p: int(p.name))


def _biggest_file(folder: pathlib.Path) -> pathlib.Path:
  return max((p for p in folder.rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)


def sweep_tamper(tmp: pathlib.Path, base_dir: pathlib.Path, base: bytes,
                 report) -> None:
  """Damage a copy of the finished run (summary.json removed), then resume.

  A resume that succeeds must give the uninterrupted run's metrics; one that
  refuses must leave the folder as it was.
  """

  def metrics_edit(fn):
    return lambda d: (d / "metrics.jsonl").write_bytes(
        fn((d / "metrics.jsonl").read_bytes()))

  def flip(d):
    f = _biggest_file(_newest_checkpoint(d))
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10
    f.write_bytes(bytes(data))

  def truncate_ckpt(d):
    f = _biggest_file(_newest_checkpoint(d))
    f.write_bytes(f.read_bytes()[:100])

  def unlink(*names):
    def fn(d):
      for name in names:
        p = d / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return fn

  def write(name, text):
    return lambda d: (d / name).write_text(text)

  def other_lr_config(d):
    rec = json.loads((d / "config.json").read_text())
    rec["config"]["lr"] = 0.5
    (d / "config.json").write_text(json.dumps(rec))

  def all_checkpoints(d):
    shutil.rmtree(d / "checkpoints")

  cases = {
      # name: (damage, extra flags, "resume" (must finish identical) or
      # "refuse" (one line, folder unchanged), mention)
      "none": (lambda d: None, (), "resume", None),
      "metrics_truncated_5000": (metrics_edit(lambda b: b[:5000]), (),
                                 "refuse", "metrics.jsonl"),
      "metrics_truncate_extended": (metrics_edit(lambda b: b + b"\0" * 4096),
                                    (), "resume", None),
      "metrics_extra_rows": (metrics_edit(lambda b: b + b.splitlines(True)[-1]
                                          * 3), (), "resume", None),
      "metrics_deleted": (unlink("metrics.jsonl"), (), "refuse",
                          "metrics.jsonl"),
      "metrics_byte_changed_in_prefix": (
          metrics_edit(lambda b: b[:200] + (b"7" if b[200:201] != b"7"
                                            else b"8") + b[201:]),
          (), "refuse", "metrics.jsonl"),
      "metrics_empty": (metrics_edit(lambda b: b""), (), "refuse",
                        "metrics.jsonl"),
      "config_list": (write("config.json", "[1,2]"), (), "refuse",
                      "config.json"),
      "config_null": (write("config.json", '{"config": null}'), (), "refuse",
                      "config.json"),
      "config_nan": (write("config.json", "NaN"), (), "refuse", "config.json"),
      "config_empty": (write("config.json", ""), (), "refuse", "config.json"),
      "config_other_lr": (other_lr_config, (), "refuse", "lr"),
      "config_deleted": (unlink("config.json"), (), "resume", None),
      "config_deleted_other_lr": (unlink("config.json"), ("--lr=0.5",),
                                  "refuse", "lr"),
      "config_deleted_other_k": (unlink("config.json"), ("--num_workers=2",),
                                 "refuse", "num_workers"),
      "other_seed": (lambda d: None, ("--seed=4",), "refuse", "seed"),
      "summary_corrupt": (write("summary.json", "{oops"), (), "refuse",
                          "summary.json"),
      "summary_list": (write("summary.json", "[]"), (), "refuse",
                       "summary.json"),
      "newest_checkpoint_bitflip": (flip, (), "resume", None),
      "newest_checkpoint_truncated": (truncate_ckpt, (), "resume", None),
      "newest_checkpoint_deleted": (
          lambda d: shutil.rmtree(_newest_checkpoint(d)), (), "resume", None),
      "all_checkpoints_deleted": (all_checkpoints, (), "either", None),
      "checkpoints_is_a_file": (
          lambda d: (all_checkpoints(d), (d / "checkpoints").write_text("x")),
          (), "refuse", "checkpoints"),
      "both_checkpoints_bitflip": (
          lambda d: [flip(d), shutil.rmtree(_newest_checkpoint(d)), flip(d)],
          (), "refuse", "checkpoint"),
  }
  for name, (damage, extra, want, mention) in cases.items():
    d = tmp / f"tamper_{name}"
    shutil.copytree(base_dir, d)
    if name not in ("summary_corrupt", "summary_list"):
      (d / "summary.json").unlink()
    damage(d)
    before = snapshot(d)
    rc, err = resume(d, *extra)
    found = None
    if rc == 0 and want in ("resume", "either"):
      found = same_as(d, base)
    elif rc != 0 and want == "refuse" and snapshot(d) != before:
      found = "a refused resume changed the folder"
    outcome, detail = classify(
        rc, err, expect={"resume": "accept", "refuse": "reject"}.get(
            want, "either"), mention=mention, damage=found)
    report("tamper", name, outcome, detail)


# ------------------------------------------------------------ concurrent --


def sweep_concurrent(tmp: pathlib.Path, base: bytes, report) -> None:
  # Two trains of different seeds on one folder: one is refused, the other's
  # rows are its own.
  d = tmp / "conc_two_trains"
  p1 = start(*T, *K, f"--out_dir={d}")
  time.sleep(1.0)
  p2 = start(*T, *K[:-2], "--seed=4", K[-1], f"--out_dir={d}")
  (rc1, _, e1), (rc2, _, e2) = finish(p1, 600), finish(p2, 600)
  found = None
  if rc1 == 0 and rc2 == 0:
    found = "both writers succeeded"
  elif rc1 == 0 and same_as(d, base):
    found = same_as(d, base)
  outcome, detail = classify(rc2 if rc1 == 0 else rc1, e2 if rc1 == 0 else e1,
                             mention="in use", damage=found)
  report("concurrent", "two_trains_other_seed", outcome, detail)

  # A resume started while the run is live.
  d = tmp / "conc_train_resume"
  p1 = start(*T, *K, f"--out_dir={d}")
  time.sleep(12.0)
  rc2, e2 = resume(d)
  rc1, _, e1 = finish(p1, 600)
  found = None
  if rc1 != 0:
    found = f"the live run failed: {error_lines(e1)[-1:]}"
  elif same_as(d, base):
    found = same_as(d, base)
  outcome, detail = classify(rc2, e2, mention="in use", damage=found)
  report("concurrent", "train_and_live_resume", outcome, detail)

  # Two trains of the same configuration.
  d = tmp / "conc_same_config"
  p1 = start(*T, *K, f"--out_dir={d}")
  p2 = start(*T, *K, f"--out_dir={d}")
  (rc1, _, e1), (rc2, _, e2) = finish(p1, 600), finish(p2, 600)
  found = None
  if rc1 == 0 and rc2 == 0:
    found = "both writers succeeded"
  elif (rc1 == 0 or rc2 == 0) and same_as(d, base):
    found = same_as(d, base)
  elif rc1 != 0 and rc2 != 0:
    found = "neither writer finished"
  rc, e = (rc2, e2) if rc1 == 0 else (rc1, e1)
  outcome, detail = classify(rc, e, damage=found)
  report("concurrent", "two_trains_same_config", outcome, detail)

  # Two reproduce_paper grids on one folder, then the same command again.
  d = tmp / "conc_grids"
  grid = ["--model=mlp", "--data_source=sample", "--rounds=10",
          "--eval_every=5", "--num_seeds=1", "--methods=EASGD,DEAHES-O",
          "--workers=2", "--periods=1", "--overlap_ratios=",
          "--checkpoint_every=5", f"--out_dir={d}"]
  p1 = start("reproduce_paper", *grid)
  time.sleep(2.0)
  p2 = start("reproduce_paper", *grid)
  (rc1, _, e1), (rc2, _, e2) = finish(p1, 600), finish(p2, 600)
  rc3, _, e3 = finish(start("reproduce_paper", *grid), 600)
  runs = [p for p in (d / "runs").iterdir()] if (d / "runs").exists() else []
  problems = [f"{p.name}: {folder_problem(p) or 'unfinished'}" for p in runs
              if folder_problem(p) or not (p / "summary.json").exists()]
  found = None
  if rc3 != 0:
    found = f"the grid did not finish on a rerun: {error_lines(e3)[-1:]}"
  elif len(runs) != 2 or problems:
    found = f"{len(runs)} runs; {problems}"
  rc, e = (rc2, e2) if rc1 == 0 else (rc1, e1)
  outcome, detail = classify(rc, e, expect="either", damage=found)
  report("concurrent", "two_grids", outcome, detail)


# ------------------------------------------------------------------ kills --


def _wait_for(pred: Callable[[], bool], proc: subprocess.Popen,
              limit: float) -> bool:
  end = time.monotonic() + limit
  while time.monotonic() < end and proc.poll() is None:
    if pred():
      return True
    time.sleep(0.002)
  return False


def _rows(out: pathlib.Path) -> int:
  try:
    return (out / "metrics.jsonl").read_bytes().count(b"\n")
  except OSError:
    return 0


def _holds_lock(out: pathlib.Path, proc: subprocess.Popen) -> bool:
  try:
    return (out / ".lock").read_text().strip() == str(proc.pid)
  except OSError:
    return False


def sweep_kills(tmp: pathlib.Path, base: bytes, kills: int, report,
                rng: random.Random) -> None:
  """SIGKILLs at random points of three folders; each then resumes to the
  end and must equal the uninterrupted run."""
  per = [kills // 3 + (i < kills % 3) for i in range(3)]
  for f, count in enumerate(per):
    d = tmp / f"kills_{f}"
    points = []
    failed = None
    for i in range(count):
      proc = start(*T, *K, f"--out_dir={d}", "--resume")
      mode = ("compile", "checkpoint_write", "random")[(f + i) % 3]
      if mode == "compile":
        # During the first XLA compile, which follows the lock (the run holds
        # it, with its PID, once its signal handlers are in place).
        _wait_for(lambda: _holds_lock(d, proc), proc, 120)
        time.sleep(rng.uniform(0.5, 4.0))
      elif mode == "checkpoint_write":
        ckdir = d / "checkpoints"

        def writing():
          try:
            return any("tmp" in p.name for p in ckdir.iterdir())
          except OSError:
            return False

        _wait_for(writing, proc, 60)
      else:
        time.sleep(rng.uniform(2.0, 30.0))
      alive = proc.poll() is None
      if alive:
        os.killpg(proc.pid, signal.SIGKILL)
      rc, _, err = finish(proc, 60)
      points.append(mode if alive else f"{mode}(finished first)")
      if not alive and rc != 0:
        failed = classify(rc, err, expect="accept")
        break
    if failed is None:
      rc, err = resume(d)
      outcome, detail = classify(rc, err, expect="accept",
                                 damage=same_as(d, base) if rc == 0 else None)
    else:
      outcome, detail = failed
    killed = sum("finished" not in p for p in points)
    report("kills", f"folder {f}: {killed} SIGKILLs ({', '.join(points)})",
           outcome, detail, kills=killed)


def sweep_signals(tmp: pathlib.Path, base: bytes, report,
                  rng: random.Random) -> None:
  """SIGTERM/SIGINT once (mid-run) and twice (during the first compile):
  exit 130 with one line, and a folder --resume finishes identically."""
  for sig in (signal.SIGTERM, signal.SIGINT):
    for times, when in ((1, "compile"), (1, "running"), (2, "compile"),
                        (2, "running")):
      d = tmp / f"sig_{sig.name}_{times}_{when}"
      proc = start(*T, *K, f"--out_dir={d}")
      # The run holds the lock once its handlers are in place; the first
      # XLA compile follows within a second or so and lasts several.
      _wait_for(lambda: _holds_lock(d, proc), proc, 120)
      if when == "compile":
        time.sleep(rng.uniform(0.3, 2.0))
      else:
        # Mid-run for certain: after the first chunks' rows, well before the
        # last (a fixed sleep let a fast run finish first, then an exit 0
        # looked like an ignored signal).
        rows = rng.randint(10, 30)
        _wait_for(lambda: _rows(d) >= rows, proc, 300)
      os.killpg(proc.pid, sig)
      if times == 2:
        time.sleep(0.2)
        if proc.poll() is None:
          os.killpg(proc.pid, sig)
      rc, _, err = finish(proc, 300)
      found = None
      if rc == 130:
        rc2, err2 = resume(d)
        if rc2 != 0:
          found = f"--resume failed: {error_lines(err2)[-1:]}"
        else:
          found = same_as(d, base)
      elif rc == 0:
        found = same_as(d, base)  # Finished before the signal.
      outcome, detail = classify(rc, err, mention="stopped by",
                                 damage=found)
      if rc not in (0, 130, None) and outcome == "clean":
        outcome, detail = "not_one_line", f"exit status {rc}"
      report("signals", f"{sig.name} x{times} during {when}", outcome, detail)


# ------------------------------------------------------------------- main --


def main() -> None:
  global REPO
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="scratch folder (wiped)")
  parser.add_argument("--only", default="flags,idx,tamper,concurrent,kills,"
                      "signals")
  parser.add_argument("--kills", type=int, default=21)
  parser.add_argument("--jobs", type=int, default=3,
                      help="flag cases run side by side")
  parser.add_argument(
      "--mnist", default=os.environ.get("EAHES_MNIST_DIR",
                                        "/work/shared/data/mnist"),
      help="a folder of the four MNIST IDX files (.gz)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--repo", default=str(REPO),
                      help="the checkout whose binaries run")
  args = parser.parse_args()
  REPO = pathlib.Path(args.repo).resolve()
  tmp = pathlib.Path(args.out).resolve()
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  only = set(args.only.split(","))
  signal.signal(signal.SIGTERM, _stop_live)
  signal.signal(signal.SIGINT, _stop_live)
  rng = random.Random(args.seed)
  results: list[Outcome] = []
  kills_total = [0]

  def report(category, case, outcome, detail="", kills=0):
    results.append(Outcome(category, case, outcome, detail))
    kills_total[0] += kills
    print(f"{category:<10} {outcome:<13} {case}  [{detail}]", flush=True)

  t0 = time.time()
  if "flags" in only:
    sweep_flags(tmp, report, args.jobs)
  if "idx" in only:
    sweep_idx(tmp, pathlib.Path(args.mnist), report)
  if only & {"tamper", "concurrent", "kills", "signals"}:
    base_dir, base = baseline(tmp)
    if "tamper" in only:
      sweep_tamper(tmp, base_dir, base, report)
    if "concurrent" in only:
      sweep_concurrent(tmp, base, report)
    if "kills" in only:
      sweep_kills(tmp, base, args.kills, report, rng)
    if "signals" in only:
      sweep_signals(tmp, base, report, rng)

  outcomes = ("clean", "traceback", "silent_damage", "not_one_line", "crash",
              "timeout")
  print(f"\n{'category':<12}" + "".join(f"{o:>14}" for o in outcomes)
        + f"{'total':>8}")
  by_cat = collections.defaultdict(collections.Counter)
  for r in results:
    by_cat[r.category][r.outcome] += 1
  for cat, counts in list(by_cat.items()) + [
      ("all", collections.Counter(r.outcome for r in results))]:
    print(f"{cat:<12}" + "".join(f"{counts[o]:>14}" for o in outcomes)
          + f"{sum(counts.values()):>8}")
  print(f"SIGKILLs: {kills_total[0]}; {time.time() - t0:.0f} s")
  bad = [r for r in results if r.outcome != "clean"]
  sys.exit(1 if bad else 0)


if __name__ == "__main__":
  main()
