"""Every reference in code, tests, help and README resolves in the repository."""

import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
ALGORITHMS = REPO / "docs" / "algorithms.md"
_TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".toml", ".txt", ""}


def _repo_files():
  """The repository's text files: what a clone holds (tracked files and new
  ones git does not ignore; not build outputs such as *.egg-info)."""
  try:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
  except (OSError, subprocess.CalledProcessError):
    listed = None
  if listed is not None:
    paths = [REPO / p for p in listed]
  else:
    skip = {".git", "__pycache__", "build", "dist", "results", "runs",
            ".pytest_cache"}
    paths = [p for p in REPO.rglob("*")
             if not skip & set(p.relative_to(REPO).parts)
             and ".egg-info" not in str(p)]
  for path in paths:
    if path.is_file() and path.suffix in _TEXT_SUFFIXES:
      yield path


def test_nothing_cites_a_folder_outside_the_repository():
  outside = "../" + "shared"  # Spelled so that this file does not cite it.
  offenders = [str(p.relative_to(REPO)) for p in _repo_files()
               if outside in p.read_text(errors="ignore")]
  assert not offenders


def test_every_cited_section_of_the_algorithm_notes_exists():
  numbers = [int(n) for n in re.findall(r"^## (\d+)\. ",
                                        ALGORITHMS.read_text(), re.M)]
  assert numbers == list(range(1, len(numbers) + 1))  # §1, §2, ... in order
  sections = {str(n) for n in numbers}
  cited = {}
  for path in _repo_files():
    for m in re.finditer(r"algorithms(?:\.md)?,? (?:§|section )(\d+)",
                         path.read_text(errors="ignore")):
      cited.setdefault(m.group(1), []).append(path.name)
  assert cited  # The docstrings do cite it.
  missing = {n: files for n, files in cited.items() if n not in sections}
  assert not missing


def test_readme_links_and_images_exist():
  readme = (REPO / "README.md").read_text()
  targets = re.findall(r"\]\(([^)#:]+)\)", readme)
  assert "docs/algorithms.md" in targets
  for target in targets:
    assert (REPO / target).exists(), target


def test_help_cites_only_files_in_the_repository():
  for module in ("train", "reproduce_paper"):
    out = subprocess.run(
        [sys.executable, "-m", f"experiments.{module}", "--helpshort"], cwd=REPO,
        capture_output=True, text=True, timeout=120).stdout
    assert "shared/" not in out
    for path in re.findall(r"\b((?:docs|experiments)/[\w./-]+\.\w+)", out):
      assert (REPO / path).exists(), path


def _library_modules():
  return sorted(p.stem for p in (REPO / "eahes_jax").glob("*.py")
                if p.stem != "__init__")


def test_readme_module_table_names_every_module():
  readme = (REPO / "README.md").read_text()
  table = readme[readme.index("| module | what it holds |"):]
  table = table[:table.index("\n\n")]
  named = set(re.findall(r"`(\w+)\.py`", table))
  assert named == set(_library_modules())


def test_architecture_floors_hold_every_module_and_point_down():
  """docs/architecture.md's floors name every module once, and no module
  imports one from a higher floor or another module's private names."""
  text = (REPO / "docs" / "architecture.md").read_text()
  floors = {}
  for line in text.splitlines():
    m = re.match(r"\| (\d)\. [^|]+ \| ([^|]+) \|", line)
    if m:
      for name in re.findall(r"`(\w+)`", m.group(2)):
        assert name not in floors, f"{name} is on two floors"
        floors[name] = int(m.group(1))
  assert set(floors) == set(_library_modules())
  for name in floors:
    source = (REPO / "eahes_jax" / f"{name}.py").read_text()
    imported = set(re.findall(
        r"^from eahes_jax(?:\.(\w+))? import (\w+)", source, re.M))
    for module, what in imported:
      target = module or what
      assert floors.get(target, -1) <= floors[name], (
          f"{name} (floor {floors[name]}) imports {target}")
      assert not what.startswith("_"), f"{name} imports {target}.{what}"
    # (NamedTuple's _asdict/_replace/_make are public API despite the _.)
    private_use = re.findall(
        r"\b(\w+_lib|\w+)\._(?!asdict|replace|make|fields)[a-z]\w*\(", source)
    modules_used = {m for m in private_use if m in floors or
                    m.removesuffix("_lib") in floors}
    assert not modules_used, f"{name} calls private names of {modules_used}"
