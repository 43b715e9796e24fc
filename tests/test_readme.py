"""The README is the user interface: every file it names exists, every command it shows is one the
repository has, every setting it passes is a constant of that script, and every constant it names
exists where it says. The experiment log, docs/experiments.md, is held to the same rules for its
commands and constants."""
import ast
import os
import re

import pytest

from conftest import ROOT
from runtime import _constant_comments

README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
EXPERIMENTS = open(os.path.join(ROOT, "docs", "experiments.md"), encoding="utf-8").read()
SCRIPTS = [f for f in os.listdir(ROOT) if f.endswith(".py")] + \
          [os.path.join("scripts", f) for f in os.listdir(os.path.join(ROOT, "scripts"))
           if f.endswith(".py")]
CONSTANTS = {script: set(_constant_comments(os.path.join(ROOT, script))) for script in SCRIPTS}
SHELL_SCRIPTS = [os.path.join("scripts", f) for f in os.listdir(os.path.join(ROOT, "scripts"))
                 if f.endswith(".sh")]
# environment variables the shell scripts read, e.g. N_FILES="${N_FILES:-8}"
for _script in SHELL_SCRIPTS:
    CONSTANTS[_script] = set(re.findall(r"\$\{(\w+):-", open(os.path.join(ROOT, _script)).read()))
# a Hugging Face dataset, a folder inside EuroSAT.zip
NOT_FILES = {"embed2scale/SSL4EO-S12-v1.1-Zarr", "2750/"}
# names that the scripts create (outputs, data, environments), not files of the repository
GENERATED = re.compile(r"^(outputs|figures|data|datae|barlow_data|cache|"
                       r"demo_data|demo_outputs|bench_results|"
                       r"\.venv|my_images)(/|$)|\.(pth|png|jpg|csv|json|zip|zarr)$|^ROOT|^FOLDER")


def test_every_repository_path_it_names_exists():
    named = set(re.findall(r"`([\w./-]+\.(?:py|sh|md|txt))`", README))
    named |= {p for p in re.findall(r"`([\w.-]+/[\w./-]*)`", README) if not GENERATED.search(p)}
    missing = [p for p in named - NOT_FILES if not GENERATED.search(p)
               and not os.path.exists(os.path.join(ROOT, p))
               and not os.path.exists(os.path.join(ROOT, "scripts", p))]
    assert not missing, f"README names files that do not exist: {missing}"
    assert len(named) > 20


def test_project_structure_table_lists_every_tracked_file_and_folder():
    table = re.findall(r"^\| `([^`]+)` \|", README, flags=re.M)
    top = {e for e in os.listdir(ROOT) if not e.startswith(".") or e == ".ci"} - {
        "__pycache__", "cache", "outputs", "figures", "demo_data", "demo_outputs", "bench_results",
        "data", "datae", "barlow_data", ".pytest_cache", "scripts"}
    scripts = {f"scripts/{f}" for f in os.listdir(os.path.join(ROOT, "scripts"))
               if not f.startswith("__")}
    folders = {"tests": "tests/", ".ci": ".ci/run", "docs": "docs/experiments.md"}
    expected = {folders.get(e, e) for e in top} | scripts
    assert not expected - set(table), (
        f"files missing from the structure table: {expected - set(table)}")
    assert not set(table) - expected, (
        f"the structure table names what does not exist: {set(table) - expected}")
    assert (os.path.isfile(os.path.join(ROOT, ".ci", "run"))
            and os.path.isdir(os.path.join(ROOT, "tests")))


@pytest.mark.parametrize("text, least", [(README, 15), (EXPERIMENTS, 8)],
                         ids=["README", "experiments"])
def test_every_command_is_real_and_its_settings_exist(text, least):
    commands = re.findall(r"(?:python|torchrun[^\n`]*?)\s+((?:scripts/)?[\w]+\.py)([^\n`|]*)",
                          text)
    commands += [(s, rest)
                 for s, rest in re.findall(r"bash\s+(scripts/[\w]+\.sh)([^\n`|]*)", text)]
    assert len(commands) > least
    for script, rest in commands:
        assert os.path.isfile(os.path.join(ROOT, script)), (
            f"README runs {script}, which does not exist")
        if script.endswith(".py"):
            # what --pretrain_args= (and the like) carries is the inner script's settings
            outer = re.sub(r"(--\w+_args=)(\"[^\"]*\"|'[^']*'|\S+)", r"\1", rest)
            for name in re.findall(r"--(\w+)=", outer):
                assert name.upper() in CONSTANTS[script], (
                    f"README passes --{name} to {script}, which has no {name.upper()}")


@pytest.mark.parametrize("text, least", [(README, 20), (EXPERIMENTS, 0)],
                         ids=["README", "experiments"])
def test_every_constant_it_names_exists_in_the_script_it_is_attributed_to(text, least):
    """A constant under a `#### \\`script.py\\`` heading must be that script's;
    any other must be some script's."""
    current = None
    checked = 0
    for line in text.splitlines():
        heading = re.match(r"#+ .*`([\w/]+\.py)`", line)
        if heading:
            current = heading.group(1)
        elif line.startswith("#"):
            current = None
        for name in re.findall(r"`([A-Z][A-Z0-9_]{2,})(?: = [^`]*)?`", line):
            if re.fullmatch(r"B\d\w*", name):  # Sentinel-2 band names, not settings
                continue
            owners = [s for s, names in CONSTANTS.items() if name in names]
            if current:
                assert name in CONSTANTS[current], (
                    f"README attributes {name} to {current}, which lacks it")
            else:
                assert owners, f"README names the constant {name}, which no script has"
            checked += 1
    assert checked > least


def test_no_placeholder_left():
    for text in (README, EXPERIMENTS):
        assert "PLACEHOLDER" not in text and "TBD" not in text and "TODO" not in text


def test_no_command_depends_on_our_machines():
    """The README is for users: no path into ../shared (our machines' copy of the data) and no
    timing in the docstrings that it would contradict (timings live in the README and
    docs/experiments.md only)."""
    assert "../shared" not in README
    for script in SCRIPTS:
        doc = ast.get_docstring(
            ast.parse(open(os.path.join(ROOT, script), encoding="utf-8").read())) or ""
        claims = [line for line in doc.splitlines()
                  if not line.strip().startswith(("epoch ", "done: "))]
        assert not re.search(r"\d+(\.\d+)? ?(pairs/s|img/s|patches/s|images/s|ms/step|min\b)|"
                             r"[Mm]easured on",
                             "\n".join(claims)), script
