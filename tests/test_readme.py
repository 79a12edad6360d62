"""The README stays true: its example runs and CI runs its test command."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def _example() -> str:
  m = re.search(r"<!-- example:start -->\s*```python\n(.*?)```", README,
                re.S)
  assert m, "README lost its composing example"
  return m.group(1)


def test_composing_example_runs(capsys):
  # The example as printed, shrunk to a tiny model and few rounds so it runs
  # in seconds; everything else is executed verbatim.
  code = _example()
  assert '"small_cnn"' in code and "range(50)" in code
  code = code.replace('"small_cnn"', '"mlp"').replace("range(50)",
                                                      "range(3)")
  exec(compile(code, "README-example", "exec"), {})  # pylint: disable=exec-used
  out = capsys.readouterr().out
  acc = float(re.search(r"master test accuracy: ([0-9.]+)", out).group(1))
  assert 0.0 <= acc <= 1.0


def test_ci_runs_the_readme_test_command():
  m = re.search(r"^    (pip install .*pytest.*)$", README, re.M)
  assert m, "README lost its test command"
  ci = (REPO / ".ci" / "run").read_text()
  assert m.group(1) in ci
