"""Every command in README.md, run.

The commands are read from the README itself (its ```bash blocks, its ```python block and the
`lorafleet …`/`make …` spans in its prose), never copied into this file, and run through bash in a
fresh working folder, as a newcomer pasting them would. Where a command needs something the README
leaves to the reader, the test supplies it and says so here:

- `<key>`, `<run>`: the key `lorafleet keys create` printed, the run folder `eval run` wrote.
- `my.jsonl`, `./my-peft-adapter[-v2]`, `samples.jsonl`: a copy of an example dataset, small real
  PEFT folders, two review items.
- long-running commands, run with small settings (flags appended, the README's own flags kept):
  `lorafleet train --config …` gets `--base <tiny random Llama> --max-steps 2 --samples 0 --no-track`
  (the demo trains the real thing for ~15 min); `lorafleet serve --port 8000` gets a free port and
  `--upstream` to the session's shared vLLM (the `vllm_server` fixture: one vLLM per session, no
  extra one here); `lorafleet review serve` a free port; `lorafleet eval run <suite>` runs a copy
  of that suite cut to 2 samples and 8 tokens; the Python snippet points at that gateway.
- `make demo`, `make test` and the other make targets: `make -n` proves each target exists and
  what it runs (`make demo` = `scripts/demo.py`, whose steps are the lorafleet commands run here;
  `make test` = pytest, which is running this file). Running them would take 30+ minutes or
  recurse, and `make stop` would stop a running demo.

`test_every_readme_command_is_run_here` fails when the README gains, loses or renames a command
that no test here runs; every `lorafleet …` line is also parsed by the real CLI (typer/click:
command names, flag names and value types) without running it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import typer
import yaml

from tests.fixtures.models import REPO
from tests.report_screenshot import screenshot_report

README = REPO / "README.md"
BIN = Path(sys.executable).parent  # the venv's bin: `lorafleet` is on PATH, as after `make install`
PLACEHOLDER = re.compile(r"<[a-z][a-z-]*>")
KEY = re.compile(r"\blf-[A-Za-z0-9_-]{20,}")

# ---- what each test runs, as the README spells it (comments removed) ----------------------------
DATA_TRAIN = (
    "lorafleet data check --train examples/data/support-intents/train.jsonl"
    " --val examples/data/support-intents/val.jsonl --test examples/data/support-intents/test.jsonl",
    "lorafleet data check --train examples/data/support-intents-dirty/train.jsonl"
    " --val examples/data/support-intents/val.jsonl",
    "lorafleet data split my.jsonl --out splits/ --ratios 0.8,0.1,0.1",
    "lorafleet train --config examples/train/support-intents.yaml",
    "lorafleet adapters show support-intents --json",
)
SERVE_TOUR = (
    "lorafleet adapters import ./my-peft-adapter --name support-intents",
    "lorafleet keys create --name app1 --adapters 'support-*'",
    "lorafleet serve --port 8000",
    "lorafleet eval run examples/suites/support-intents.yaml --endpoint http://127.0.0.1:8000 --api-key <key>",
    "lorafleet eval report .lorafleet/eval/runs/<run> --format md",
)
REGISTRY = (
    "lorafleet adapters import ./my-peft-adapter --name support-intents",
    "lorafleet adapters import ./my-peft-adapter-v2 --name support-intents",
    "lorafleet adapters alias support-intents prod v1",
    "lorafleet adapters alias support-intents canary v1=0.9 v2=0.1",
    "lorafleet adapters list --json",
    "lorafleet adapters show support-intents@prod",
    "lorafleet adapters alias support-intents prod v2",
    "lorafleet adapters alias support-intents canary v2",
    "lorafleet adapters rm support-intents@v1",
)
REVIEW = (
    "lorafleet review users add rita --role reviewer",
    "lorafleet review import samples.jsonl --queue support-v3 --rubric examples/rubrics/general.yaml --overlap 2",
    "lorafleet review queues create ab-v2-v3 --pairwise",
    "lorafleet review queues add-member support-v3 rita",
    "lorafleet review serve",
    "lorafleet review export support-v3 --format training -o corrected.jsonl",
    "lorafleet review admin-token",
)
MAKE = {  # README command → what `make -n` must show it runs
    "make demo": "scripts/demo.py",
    "make test": "-m pytest",
    "make test-fast": "not integration",
    "make lint": "ruff check",
    "make bench": "benchmarks/*.py",
    "make stop": "scripts/demo.py --stop",
    "LORAFLEET_ENGINE=gpu make install": "scripts/install.sh .venv train,gpu,dev",
}
PROMOTE = (  # run for real by `make demo` (scripts/demo.py) and the promotion/variant tests; parsed here
    "lorafleet base prepare --variant nf4",
    "lorafleet adapters policy support-intents --set examples/policies/support-intents.yaml",
    "lorafleet adapters promote support-intents@v2 --to prod",
    "lorafleet adapters promote support-intents@v2 --to prod --canary 10",
    "lorafleet adapters promote support-intents@v2 --to prod --finish",
)
OTHER = (".venv/bin/lorafleet --help", "lorafleet base prepare")


# ---- reading the README --------------------------------------------------------------------------
def strip_comment(line: str) -> str:
    """The command without its trailing `# …` (a `#` outside quotes, after a blank)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def fenced(markdown: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", markdown, flags=re.S | re.M)


def bash_commands(markdown: str) -> list[str]:
    """Every command of every ```bash block, continuation lines joined, comments dropped."""
    commands = []
    for block in fenced(markdown, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if text := strip_comment(line).strip():
                commands.append(text)
    return commands


def inline_commands(markdown: str) -> list[str]:
    """`lorafleet …` and `make …` spans in the prose (outside fenced blocks)."""
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    spans = re.findall(r"`([^`\n]+)`", prose)
    return [s for s in spans if re.match(r"(\S*lorafleet|make|\S+=\S+ make) ", s)]


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def readme_command(text: str) -> str:
    """`text` as the README has it (the test fails here when the README no longer does)."""
    assert text in bash_commands(readme_text()) + inline_commands(readme_text()), f"README lost {text!r}"
    return text


# ---- running commands ----------------------------------------------------------------------------
def env(**extra: str) -> dict[str, str]:
    """A clean environment: the venv first on PATH, no LORAFLEET_* settings leaking in, no hub."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}
    return {**base, "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1", **extra}


def fill(text: str, subs: dict[str, str] | None = None, append: str = "") -> str:
    for old, new in (subs or {}).items():
        text = text.replace(old, new)
    assert not PLACEHOLDER.search(text), f"README placeholder without a value in this test: {text!r}"
    return f"{text} {append}".strip()


def sh(text: str, cwd: Path, *, subs: dict[str, str] | None = None, append: str = "", ok: tuple[int, ...] = (0,),
       stdin: str | None = None, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run one README command in bash (brace expansion, quotes: as pasted) and check its exit code."""
    cmd = fill(readme_command(text), subs, append)
    proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env(**(extra_env or {})), input=stdin,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode in ok, f"{cmd} → exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


class Background:
    """A long-running README command (a server) started with bash `exec`, stopped by its pid."""

    def __init__(self, text: str, cwd: Path, *, subs: dict[str, str] | None = None, append: str = "",
                 extra_env: dict[str, str] | None = None) -> None:
        self.cmd = fill(readme_command(text), subs, append)
        self.log = cwd / f"server-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(["bash", "-c", f"exec {self.cmd}"], cwd=cwd, env=env(**(extra_env or {})),
                                         stdout=out, stderr=subprocess.STDOUT)

    def wait_for(self, url: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.cmd} exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{url} not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def free_port() -> int:
    from lorafleet.serve.vllm_child import free_port as _free_port

    return _free_port()


def engine_env(vllm_server) -> dict[str, str]:  # noqa: ANN001 - the conftest's VllmServer
    """`adapters import` checks fidelity in the session's shared vLLM (float32) instead of starting one."""
    return {"LORAFLEET_ENGINE_URL": vllm_server.url, "LORAFLEET_ENGINE_API_KEY": vllm_server.api_key,
            "LORAFLEET_VLLM_DTYPE": "float32"}


def workdir(tmp_path: Path) -> Path:
    """A fresh folder with the repository's `examples/`, as in a clone (the data dir is ./.lorafleet)."""
    (tmp_path / "examples").symlink_to(REPO / "examples")
    return tmp_path


def parse_cli(args: list[str]) -> list[tuple[str, dict]]:
    """Parse `lorafleet ARGS` with the real CLI down to the leaf command without running anything:
    unknown commands or flags and values of the wrong type raise click's usage errors."""
    from lorafleet.cli.main import build_app

    command = typer.main.get_command(build_app())
    ctx = command.make_context("lorafleet", list(args))
    chain = [("lorafleet", ctx.params)]
    while hasattr(command, "resolve_command"):  # a group (typer vendors its own click classes)
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        if not rest:  # a group that runs itself (`lorafleet train …`, `lorafleet serve …`)
            break
        name, command, rest = command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx)
        chain.append((name, ctx.params))
    return chain


def bash_words(text: str) -> list[str]:
    """The argv bash would build from `text` (brace expansion and quotes included), run nothing."""
    out = subprocess.run(["bash", "-c", f"printf '%s\\0' {text}"], capture_output=True, text=True, check=True)
    return out.stdout.split("\0")[:-1]


# ---- the tests -----------------------------------------------------------------------------------
def test_every_readme_command_is_run_here() -> None:
    markdown = readme_text()
    in_readme = set(bash_commands(markdown)) | set(inline_commands(markdown))
    here = {*DATA_TRAIN, *SERVE_TOUR, *REGISTRY, *REVIEW, *PROMOTE, *MAKE, *OTHER}
    assert in_readme - here == set(), "README commands no test runs: map each to a test here"
    assert here - in_readme == set(), "this test runs commands the README no longer has"
    assert len(fenced(markdown, "python")) == 1  # the OpenAI SDK snippet, run by test_serve_sdk_and_eval_tour


@pytest.mark.parametrize("text", sorted({*DATA_TRAIN, *SERVE_TOUR, *REGISTRY, *REVIEW, *PROMOTE,
                                         "lorafleet base prepare"}))
def test_readme_lorafleet_line_parses(text: str) -> None:
    words = bash_words(fill(text, {"<key>": "lf-placeholder", "<run>": "run-1"}))
    assert Path(words[0]).name == "lorafleet"
    chain = parse_cli(words[1:])
    assert [name for name, _ in chain[1:]] == [w for w in words[1:len(chain)]]  # each subcommand name as written


def test_make_targets(tmp_path: Path) -> None:
    """`make -n` on each README make command (see the module docstring for why not run them)."""
    for text, shows in MAKE.items():
        words = shlex.split(readme_command(text))
        assignments = [w for w in words if "=" in w and not w.startswith("-")]
        target = words[-1]
        proc = subprocess.run(["make", "-n", "-C", str(REPO), target, *assignments], capture_output=True, text=True,
                              env=env(), timeout=60)
        assert proc.returncode == 0, f"{text}: {proc.stderr}"
        assert shows in proc.stdout, f"{text} no longer runs {shows!r}:\n{proc.stdout}"
    help_ = subprocess.run([sys.executable, "scripts/demo.py", "--help"], cwd=REPO, capture_output=True, text=True,
                           env=env(), timeout=60)
    assert help_.returncode == 0 and "--stop" in help_.stdout


def test_cli_help_and_base_prepare_line(tmp_path: Path) -> None:
    proc = sh(".venv/bin/lorafleet --help", REPO)
    for group in ("data", "train", "adapters", "serve", "eval", "review", "keys", "base"):
        assert re.search(rf"│ {group}\s", proc.stdout), group
    # `lorafleet base prepare` is run for real by the `embedded_base` fixture (prepare_embedded) and by
    # `make demo`; here its flags are only parsed (test_readme_lorafleet_line_parses).


def test_data_and_train_tour(tmp_path: Path, tiny_model: Path) -> None:
    cwd = workdir(tmp_path)
    clean = sh(DATA_TRAIN[0], cwd)
    assert "0 errors" in clean.stdout
    dirty = sh(DATA_TRAIN[1], cwd, ok=(1,))  # errors found: exit 1, with the findings listed
    for kind in ("leakage", "label_variants", "pii", "duplicate"):
        assert kind in dirty.stdout, kind

    # Not support-intents' own train set: the split's val/test become held out, and the train below would
    # (rightly) be refused for training on them.
    source = REPO / "examples" / "data" / "ticket-summaries" / "train.jsonl"
    shutil.copy(source, cwd / "my.jsonl")
    sh(DATA_TRAIN[2], cwd)
    counts = {p: len((cwd / "splits" / f"{p}.jsonl").read_text().splitlines()) for p in ("train", "val", "test")}
    assert sum(counts.values()) == len(source.read_text().splitlines()) and counts["train"] > 5 * counts["val"] > 0

    # --skip-fidelity, --no-forgetting: those checks would start an engine on the tiny random model
    # (tests/integration/test_fidelity_real.py and test_forgetting_real.py run them on the embedded base).
    result = json.loads(sh(DATA_TRAIN[3], cwd, append=f"--base {tiny_model} --max-steps 2 --samples 0 "
                                                      "--no-track --skip-fidelity --no-forgetting --json").stdout)
    assert (result["name"], result["version"], result["steps"]) == ("support-intents", "v1", 2)
    card = json.loads(sh(DATA_TRAIN[4], cwd).stdout)
    assert card["name"] == "support-intents" and card["version"] == "v1"
    assert card["lora"]["rank"] == 16  # from examples/train/support-intents.yaml


def test_registry_block(tmp_path: Path, demo_adapters: dict[str, Path], vllm_server) -> None:
    cwd = workdir(tmp_path)
    shutil.copytree(demo_adapters["pirate"], cwd / "my-peft-adapter")  # two real PEFT folders (cached)
    shutil.copytree(demo_adapters["robot"], cwd / "my-peft-adapter-v2")
    out = [sh(text, cwd, extra_env=engine_env(vllm_server)).stdout for text in REGISTRY[:6]]
    assert "support-intents@v1" in out[0] and "support-intents@v2" in out[1]
    listed = json.loads(out[4])
    assert sorted(e["version"] for e in listed if e["name"] == "support-intents") == ["v1", "v2"]
    # `adapters show` tells the version's story, data to decisions; the import checked fidelity in real vLLM
    shown = out[5]
    assert shown.startswith("support-intents@v1 ") and "prod" in shown.splitlines()[1]
    assert [h for h in ("── data", "── training", "── fidelity", "── eval runs", "── forgetting", "── review",
                        "── decisions") if h in shown] == ["── data", "── training", "── fidelity", "── eval runs",
                                                          "── forgetting", "── review", "── decisions"]
    assert "fidelity: passed" in shown, shown
    for text in REGISTRY[6:]:
        sh(text, cwd)
    aliases = json.loads((cwd / ".lorafleet" / "registry" / "support-intents" / "aliases.json").read_text())
    assert aliases["prod"] == "v2" and not (cwd / ".lorafleet" / "registry" / "support-intents" / "v1").exists()
    # the README's note on rm: refused (exit 2, one line) while prod points at the version
    refused = subprocess.run(["lorafleet", "adapters", "rm", "support-intents@v2"], cwd=cwd, env=env(),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "alias" in refused.stderr


def test_review_block(tmp_path: Path) -> None:
    cwd = workdir(tmp_path)
    items = [{"id": "s1", "prompt": "I was charged twice", "response": "billing: refunded", "reference": "billing"},
             {"id": "s2", "prompt": "Where is my parcel?", "response": "shipping: on its way", "reference": "shipping"}]
    (cwd / "samples.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    password = "rita-readme-password"
    sh(REVIEW[0], cwd, stdin=f"{password}\n{password}\n")  # the password prompt, answered on stdin
    assert "2 item(s) added" in sh(REVIEW[1], cwd).stdout
    assert "rvq_" in sh(REVIEW[2], cwd).stdout  # the pairwise queue's ingest token
    sh(REVIEW[3], cwd)
    assert sh(REVIEW[6], cwd).stdout.strip().startswith("rva_")

    port = free_port()
    server = Background(REVIEW[4], cwd, append=f"--port {port}")
    try:
        url = f"http://127.0.0.1:{port}"
        server.wait_for(f"{url}/login")
        grade_one(url, "rita", password, "support-v3", correction="billing: refunded, 3-5 business days")
    finally:
        server.stop()
    assert "wrote 1 record" in sh(REVIEW[5], cwd).stdout
    record = json.loads((cwd / "corrected.jsonl").read_text())
    assert record["messages"][-1]["content"] == "billing: refunded, 3-5 business days"


def grade_one(url: str, user: str, password: str, queue: str, *, correction: str) -> None:
    """What the grading form sends: log in, take the next item, 4 on every criterion plus a correction."""
    token = re.compile(r'name="csrf_token" value="([^"]+)"')
    with httpx.Client(base_url=url, follow_redirects=True, timeout=30) as web:
        csrf = token.search(web.get("/login").text).group(1)
        assert web.post("/login", data={"name": user, "password": password, "csrf_token": csrf}).status_code == 200
        page = web.get(f"/q/{queue}/next")
        criteria = sorted(set(re.findall(r'name="score_([a-z_]+)"', page.text)))
        assert criteria, page.text[:2000]
        form = {"csrf_token": token.search(page.text).group(1), "correction": correction,
                **{f"score_{c}": "4" for c in criteria}}
        assert web.post(f"{page.url.path}/grade", data=form).status_code == 200  # on to the next item


@pytest.fixture
def readme_gateway(vllm_server, demo_adapters: dict[str, Path], tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    """The tour's first half run in a fresh folder: import an adapter as support-intents, create the
    app1 key, `lorafleet serve` in front of the shared vLLM. Yields (folder, gateway URL, key)."""
    cwd = workdir(tmp_path)
    shutil.copytree(demo_adapters["pirate"], cwd / "my-peft-adapter")  # answers "Arr! …": visible in replies
    sh(SERVE_TOUR[0], cwd, extra_env=engine_env(vllm_server))
    key = KEY.search(sh(SERVE_TOUR[1], cwd).stdout).group(0)
    port = free_port()
    # The shared vLLM runs in another folder than this one, and the gateway hands vLLM adapter paths
    # under its data dir as they are: so the gateway gets the same ./.lorafleet as an absolute path.
    # (With a relative one vLLM resolved registry/support-intents/v1 against its own cwd and served a
    # different adapter of that name; `lorafleet serve` without --upstream starts vLLM in the same cwd.)
    server = Background(SERVE_TOUR[2], cwd, subs={"--port 8000": f"--port {port}"},
                        append=f"--upstream {vllm_server.url}",
                        extra_env={"LORAFLEET_UPSTREAM_API_KEY": vllm_server.api_key,
                                   "LORAFLEET_DATA_DIR": str(cwd / ".lorafleet")})
    try:
        url = f"http://127.0.0.1:{port}"
        server.wait_for(f"{url}/ready")
        yield cwd, url, key
    finally:
        server.stop()


def test_serve_sdk_and_eval_tour(readme_gateway: tuple[Path, str, str], tmp_path_factory) -> None:
    cwd, url, key = readme_gateway
    port = url.rsplit(":", 1)[1]
    snippet = fill(fenced(readme_text(), "python")[0], {"127.0.0.1:8000": f"127.0.0.1:{port}", "<key>": key})
    reply = subprocess.run([sys.executable, "-c", snippet], cwd=cwd, env=env(), capture_output=True, text=True,
                           timeout=120)
    assert reply.returncode == 0, reply.stderr
    assert reply.stdout.startswith("support-intents@v1 ") and "Arr" in reply.stdout, reply.stdout

    small = small_suite(cwd, REPO / "examples" / "suites" / "support-intents.yaml")
    ran = sh(SERVE_TOUR[3], cwd, subs={"examples/suites/support-intents.yaml": str(small),
                                       "127.0.0.1:8000": f"127.0.0.1:{port}", "<key>": key}, ok=(0, 1))
    assert ran.returncode == 1 and "FAIL" in ran.stdout  # a pirate is no intent classifier: the gates say so
    (run,) = (cwd / ".lorafleet" / "eval" / "runs").iterdir()
    md = sh(SERVE_TOUR[4], cwd, subs={"<run>": run.name}).stdout
    assert "support-intents@latest" in md and "support-intents@v1" in md and "| gate |" in md
    seen = screenshot_report(run / "report.html", tmp_path_factory.mktemp("shots") / "eval-report.png")
    targets = len(json.loads((run / "results.json").read_text())["targets"])  # base, adapter, prompted baselines
    assert targets == 4
    assert seen.title.startswith("Eval support-intents") and seen.score_rows == targets and seen.charts >= 3
    assert seen.bars == targets * seen.charts  # every target in every chart


def small_suite(cwd: Path, suite: Path) -> Path:
    """The README's suite cut to 2 samples and 8 tokens (the full one is 72 samples, ~6 min on CPU)."""
    data = yaml.safe_load(suite.read_text())
    data["dataset"]["path"] = str((suite.parent / data["dataset"]["path"]).resolve())
    for baseline in data.get("baselines", []):  # k-shot examples are relative to the suite too
        if "examples" in baseline:
            baseline["examples"] = str((suite.parent / baseline["examples"]).resolve())
    data["dataset"]["limit"] = 2
    data["generation"]["max_tokens"] = 8
    data["stats"]["resamples"] = 200
    out = cwd / "support-intents-small.yaml"
    out.write_text(yaml.safe_dump(data))
    return out
