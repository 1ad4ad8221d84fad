"""`make demo`: the whole loop on the embedded base, step by step, resumable.

Every step runs the same `lorafleet` commands a user would. Finished steps are recorded in
.lorafleet/demo/state.json and skipped on a rerun; the background services (gateway + vLLM,
review app) are restarted when they are not running. `make stop` (this script with --stop)
stops them by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from rich.console import Console
from rich.rule import Rule
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEMO = REPO / ".lorafleet" / "demo"
STATE = DEMO / "state.json"
SECRETS = DEMO / "secrets.json"
GATEWAY_PORT = 8000
REVIEW_PORT = 8001
# One vLLM on the base and one on its nf4 twin (the QLoRA adapters' base), started in the background as soon as
# the bases exist (they load while the datasets are made): train's fidelity and forgetting checks and then the
# gateway use them, so no step waits for a vLLM start of its own.
ENGINES = {"full": 8100, "nf4": 8101}
GATEWAY = f"http://127.0.0.1:{GATEWAY_PORT}"
REVIEW = f"http://127.0.0.1:{REVIEW_PORT}"
TASKS = ("support-intents", "contract-clauses", "ticket-summaries")
REGISTRY = REPO / ".lorafleet" / "registry"
WRECKED = "support-intents@v2"  # scripts/wreck_adapter.py's copy of v1: loads and serves, answers off-label
REVIEWER = ("demo", "demo-review-pass")
EVAL_CONCURRENCY = 32
# train's forgetting check per adapter: the first 30 of the suite's general prompts (every kind interleaved).
# Each demo adapter's drop is far outside the gate either way; 60 doubled its cost for a narrower CI.
FORGETTING_PROMPTS = 30
# Asked of the first trained adapter, through the gateway, as soon as it is registered.
FIRST_PROMPT = "Hi, I was charged twice for my last order. Can you sort this out?"
console = Console()
RUN_STARTED = time.monotonic()


# ---- plumbing -------------------------------------------------------------------------------

def lorafleet(*args: str, capture: bool = False, ok: tuple[int, ...] = (0,), stdin: str | None = None,
              env: dict[str, str] | None = None, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `lorafleet ARGS` as a user would; stop the demo on an unexpected exit code."""
    if not quiet:
        console.print(f"[dim]$ lorafleet {' '.join(args)}[/]", highlight=False)
    result = subprocess.run([str(BIN / "lorafleet"), *args], cwd=REPO, text=True, input=stdin,
                            capture_output=capture, env={**os.environ, **(env or {})})
    if result.returncode not in ok:
        if capture:
            sys.stderr.write(result.stdout[-3000:] + result.stderr[-3000:])
        raise SystemExit(f"demo: `lorafleet {' '.join(args)}` exited {result.returncode}")
    return result


def load_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def save_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def secret(name: str, make: Callable[[], str]) -> str:
    """A demo secret, created once and kept (0600) so reruns reuse it."""
    data = load_json(SECRETS)
    if name not in data:
        data[name] = make()
        save_json(SECRETS, data)
    return data[name]


def wait_http(url: str, what: str, timeout: float, pid: int | None = None, *, ready: int | None = None,
              headers: dict[str, str] | None = None) -> None:
    """Poll `url` until it answers (any status below 500, or exactly `ready`), while `pid` lives."""
    deadline = time.monotonic() + timeout
    with console.status(f"waiting for {what} ({url}) …"):
        while time.monotonic() < deadline:
            if pid is not None and not pid_alive(pid):
                raise SystemExit(f"demo: {what} exited; see its log in {DEMO / 'logs'}")
            try:
                status = httpx.get(url, timeout=2, headers=headers).status_code
                if (status == ready) if ready is not None else (status < 500):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
    raise SystemExit(f"demo: {what} not ready after {timeout:.0f} s; see {DEMO / 'logs'}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def start_background(name: str, args: list[str], env: dict[str, str]) -> int:
    """Start `lorafleet ARGS` detached, log to .lorafleet/demo/logs/NAME.log, remember its pid."""
    return start_process(name, [str(BIN / "lorafleet"), *args], {**os.environ, **env})


def start_process(name: str, cmd: list[str], env: dict[str, str]) -> int:
    """Start CMD detached (its own session), log to .lorafleet/demo/logs/NAME.log, remember its pid."""
    pids = load_json(DEMO / "pids.json")
    if name in pids and pid_alive(pids[name]):
        console.print(f"{name} already running (pid {pids[name]})")
        return pids[name]
    (DEMO / "logs").mkdir(parents=True, exist_ok=True)
    shown_cmd = " ".join(cmd[1:] if cmd[0] == str(BIN / "lorafleet") else cmd)
    console.print(f"[dim]$ {'lorafleet ' if cmd[0] == str(BIN / 'lorafleet') else ''}{shown_cmd} &[/]",
                  highlight=False)
    with open(DEMO / "logs" / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    pids[name] = proc.pid
    save_json(DEMO / "pids.json", pids)
    return proc.pid


def stop_services() -> None:
    pids = load_json(DEMO / "pids.json")
    for name, pid in pids.items():
        if pid_alive(pid):
            os.killpg(pid, signal.SIGTERM)
            for _ in range(30):
                if not pid_alive(pid):
                    break
                time.sleep(0.5)
            else:
                os.killpg(pid, signal.SIGKILL)
            console.print(f"stopped {name} (pid {pid})")
    (DEMO / "pids.json").unlink(missing_ok=True)


# ---- the steps ------------------------------------------------------------------------------

def step_base() -> None:
    lorafleet("base", "prepare")
    start_engine("full")  # it loads while the twin and the datasets are made
    # The QLoRA adapters' base as they were trained on it: the dequantised-nf4 twin (served by the second vLLM).
    lorafleet("base", "prepare", "--variant", "nf4")
    start_engine("nf4")
    lorafleet("base", "info")


def step_data() -> None:
    console.print("[dim]$ python examples/generate_datasets.py --out examples/data[/]")
    subprocess.run([sys.executable, "examples/generate_datasets.py", "--out", "examples/data"],
                   cwd=REPO, check=True)
    guard: dict[str, object] = {}
    for task in TASKS:
        d = f"examples/data/{task}"
        # --val/--test: the held-out guard records them; later `train` runs are checked against them.
        out = shown(lorafleet("data", "check", "--train", f"{d}/train.jsonl", "--val", f"{d}/val.jsonl",
                              "--test", f"{d}/test.jsonl", capture=True))
        guard[task] = out.count("error held_out ") + out.count("error leakage ")
    console.print("[bold]the intentionally dirty copy — data check must find its problems:[/]")
    out = shown(lorafleet("data", "check", "--train", "examples/data/support-intents-dirty/train.jsonl",
                          "--val", "examples/data/support-intents/val.jsonl", ok=(1,), capture=True))
    guard["dirty: check"] = out.count("error held_out ") + out.count("error leakage ")
    # Splitting the dirty copy puts some of its (planted) val records in train: the guard refuses (exit 1).
    out = shown(lorafleet("data", "split", "examples/data/support-intents-dirty/train.jsonl",
                          "--out", str(DEMO / "split-dirty"), ok=(1,), capture=True))
    guard["dirty: split refused"] = out.count(": matches held-out ")
    save_json(DEMO / "guard.json", guard)


def shown(result: subprocess.CompletedProcess[str]) -> str:
    """Print a captured command's output as it was and return it (stdout + stderr)."""
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.stdout + result.stderr


def train_step(task: str) -> Callable[[], None]:
    def step() -> None:
        # The fidelity and forgetting checks run in the running engine of the adapter's base variant.
        lorafleet("train", "--config", f"examples/train/{task}.yaml", *precision_args(),
                  env=engine_env(variant_of_task(task)))
    return step


def precision_args() -> list[str]:
    """bf16 where the CPU multiplies it natively (AVX512-BF16/AMX), as vLLM serves there: about half the CPU
    time of fp32 per step (docs/benchmarks.md); fp32 (train's CPU default) elsewhere."""
    from lorafleet.serve.vllm_child import cpu_flags

    # The x86 flags train's own check accepts (lorafleet.train.precision.cpu_bf16_native), read without torch.
    return ["--precision", "bf16"] if cpu_flags() & {"avx512_bf16", "amx_bf16"} else []


def variant_of_task(task: str) -> str:
    import yaml

    return "nf4" if yaml.safe_load((REPO / "examples" / "train" / f"{task}.yaml").read_text()).get("qlora") else "full"


def engine_url(variant: str) -> str:
    return f"http://127.0.0.1:{ENGINES[variant]}"


def engine_env(variant: str) -> dict[str, str]:
    """The registration-time checks reuse a running engine: its URL and key (environment only)."""
    from lorafleet.serve.vllm_child import resolve_dtype

    return {"LORAFLEET_ENGINE_URL": engine_url(variant), "LORAFLEET_ENGINE_API_KEY": secret("engine_key", token),
            # vLLM does not report its dtype; the check's tolerance depends on it (bf16 on CPUs that have it).
            "LORAFLEET_VLLM_DTYPE": resolve_dtype("auto") or "bfloat16",
            "LORAFLEET_FORGETTING_PROMPTS": str(FORGETTING_PROMPTS)}


def token() -> str:
    return secrets.token_urlsafe(24)


def step_engines() -> None:
    """vLLM on the base and on its nf4 twin, unless running (step_base starts each as soon as its folder exists):
    not waited for here, they load while the datasets are made (step_wait_engines)."""
    for variant in ENGINES:
        start_engine(variant)


def start_engine(variant: str) -> None:
    """vLLM on the base or on its nf4 twin, as the gateway would start it, detached (make stop ends it)."""
    from lorafleet.serve.config import ServeSettings

    from lorafleet.base_variants import twin_dir
    from lorafleet.config import DEFAULT_BASE_NAME

    base = (REPO / ".lorafleet" / "base" / DEFAULT_BASE_NAME).resolve()
    folder = base if variant == "full" else twin_dir(REPO / ".lorafleet", base)
    launch = ServeSettings().child_launch(folder, DEFAULT_BASE_NAME, f"vllm-{variant}.log", port=ENGINES[variant])
    launch.api_key = secret("engine_key", token)
    start_process(f"engine-{variant}", launch.command(), launch.env())


def step_wait_engines() -> None:
    pids = load_json(DEMO / "pids.json")
    headers = {"Authorization": f"Bearer {secret('engine_key', token)}"}
    for variant in ENGINES:
        wait_http(f"{engine_url(variant)}/v1/models", f"vLLM on the {variant} base", 600,
                  pids.get(f"engine-{variant}"), ready=200, headers=headers)


def step_first_answer() -> None:
    """The first adapter as users get it, right after its training: one chat through the gateway, the base beside
    it (the newcomer sees the point minutes in, before the other two train)."""
    from openai import OpenAI

    from lorafleet.config import DEFAULT_BASE_NAME

    client = OpenAI(base_url=f"{GATEWAY}/v1", api_key=load_json(SECRETS)["api_key"])
    for model in ("support-intents", DEFAULT_BASE_NAME):
        reply = client.chat.completions.create(model=model, max_tokens=32, temperature=0,
                                               messages=[{"role": "user", "content": FIRST_PROMPT}])
        console.print(f"[bold]{reply.model}[/] ← {FIRST_PROMPT}\n   → {reply.choices[0].message.content}",
                      highlight=False)
    console.print(f"({(time.monotonic() - RUN_STARTED) / 60:.1f} min into this run)")


def step_services() -> None:
    review_env = {"LORAFLEET_REVIEW_ADMIN_TOKEN": secret("review_admin_token", lambda: secrets.token_urlsafe(24))}
    # --registry: the grades reach each adapter version's card.review (the promotion policy reads it).
    review_pid = start_background("review", ["review", "serve", "--port", str(REVIEW_PORT),
                                             "--registry", str(REGISTRY)], review_env)
    wait_http(f"{REVIEW}/login", "review app", 120, review_pid)
    user, password = REVIEWER
    lorafleet("review", "users", "add", user, "--role", "reviewer", "--password-stdin", stdin=password + "\n",
              ok=(0, 2), capture=True)
    for task in TASKS:
        lorafleet("review", "queues", "create", f"eval-{task}", "--rubric", rubric_for(task), "--member", user,
                  ok=(0, 2), capture=True)
    lorafleet("review", "queues", "create", "eval-support-intents-pairwise", "--pairwise", "--member", user,
              ok=(0, 2), capture=True)
    lorafleet("review", "queues", "create", "live-capture", "--rubric", "examples/rubrics/general.yaml",
              "--member", user, ok=(0, 2), capture=True)
    gateway_env = {"LORAFLEET_REVIEW_URL": REVIEW, "LORAFLEET_REVIEW_TOKEN": review_env["LORAFLEET_REVIEW_ADMIN_TOKEN"],
                   "LORAFLEET_UPSTREAM_API_KEY": secret("engine_key", token),
                   # Rounds of the canary watch: a degraded canary is rolled back within seconds of its evidence.
                   "LORAFLEET_CANARY_INTERVAL": "2"}
    gateway_pid = start_background("gateway", [
        # In front of the two running engines: QLoRA adapters go to the nf4 one, the rest to the base.
        "serve", "--port", str(GATEWAY_PORT), "--upstream", engine_url("full"),
        "--variant-upstream", f"nf4={engine_url('nf4')}", "--review-url", REVIEW,
        "--review-token", review_env["LORAFLEET_REVIEW_ADMIN_TOKEN"], "--capture", "support-intents=1.0",
        "--review-queue", "live-capture",  # the queue created above (the default, capture, does not exist here)
    ], gateway_env)
    wait_http(f"{GATEWAY}/health", "gateway", 600, gateway_pid)
    wait_http(f"{GATEWAY}/ready", "the gateway's upstreams", 600, gateway_pid, ready=200)
    key = secret("api_key", lambda: create_key())
    console.print(f"demo API key stored in {SECRETS} (key {key[:10]}…)")


def create_key() -> str:
    out = lorafleet("keys", "create", "--name", "demo", "--adapters", "*", "--json", capture=True).stdout
    return json.loads(out)["key"]


def rubric_for(task: str) -> str:
    own = REPO / "examples" / "rubrics" / f"{task}.yaml"
    return str(own.relative_to(REPO)) if own.exists() else "examples/rubrics/general.yaml"


def eval_env() -> dict[str, str]:
    """Secrets go to `lorafleet eval` through the environment, never on its command line."""
    secrets_ = load_json(SECRETS)
    return {"LORAFLEET_REVIEW_URL": REVIEW, "LORAFLEET_REVIEW_TOKEN": secrets_["review_admin_token"],
            "LORAFLEET_EVAL_API_KEY": secrets_["api_key"]}


def eval_step(task: str) -> Callable[[], None]:
    def step() -> None:
        out = DEMO / "eval" / task
        lorafleet("eval", "run", f"examples/suites/{task}.yaml", "--endpoint", GATEWAY,
                  "--out", str(out), "--push-review",
                  # vLLM batches base and adapter requests together: more in flight, more tokens/s on 2 cores.
                  "--concurrency", str(EVAL_CONCURRENCY),
                  ok=(0, 1), env=eval_env())
        lorafleet("eval", "report", str(out), "--format", "md")  # report.html is written beside it
    return step


def step_grade() -> None:
    """A scripted reviewer grades the summaries' eval samples through the review app's real pages, by a known
    rule (accuracy = 1 + 4·ROUGE-L, plus noise; the other criteria at random): the metric ↔ grade table must
    find that rule, and the judge's κ against the reviewer says whether its scores can be trusted."""
    task = "ticket-summaries"
    run = DEMO / "eval" / task
    grades = run / "grades.jsonl"
    user, password = REVIEWER
    cmd = [sys.executable, "scripts/scripted_reviewer.py", "--url", REVIEW, "--user", user, "--queue", f"eval-{task}",
           "-n", "200", "--rule", "rougeL", "--criterion", "accuracy", "--noise", "0.5", "--seed", "0"]
    console.print(f"[dim]$ python {' '.join(cmd[1:])}[/]", highlight=False)
    subprocess.run(cmd, cwd=REPO, check=True, text=True, env={**os.environ, "LORAFLEET_REVIEWER_PASSWORD": password})
    lorafleet("review", "export", f"eval-{task}", "--format", "grades", "-o", str(grades))
    lorafleet("eval", "correlate", str(run), "--grades", str(grades))
    # The judge's verdicts are reused from the run; only its agreement with the reviewer is new.
    lorafleet("eval", "rescore", str(run), "--grades", str(grades), "--endpoint", GATEWAY, ok=(0, 1), env=eval_env())


def step_promote() -> None:
    """`adapters promote` reads each version's evidence (eval gates, paired gain, fidelity, forgetting, review)
    against its name's policy; a wrecked support-intents@v2 is evaluated and refused on its own evidence."""
    lorafleet("review", "sync-cards")  # the reviewer's grades on the cards now, not a writer round later
    for task in TASKS:
        policy = REPO / "examples" / "policies" / f"{task}.yaml"
        if policy.exists():
            lorafleet("adapters", "policy", task, "--set", str(policy.relative_to(REPO)))
        # ok=1: a rerun on a registry whose prod already names an equal earlier version is (rightly) refused.
        lorafleet("adapters", "promote", f"{task}@v1", "--to", "prod", ok=(0, 1))
    wrecked = DEMO / "wrecked-support-intents"
    cmd = ["scripts/wreck_adapter.py", str(REGISTRY / "support-intents" / "v1"), str(wrecked)]
    console.print(f"[dim]$ python {' '.join(cmd)}[/]", highlight=False)
    subprocess.run([sys.executable, *cmd], cwd=REPO, check=True)
    # --force: whether random lora_B noise still serves as trained sits at the fidelity tolerance (0.944 in one run,
    # 0.875 in the next, on a bf16-trained v1); the card records the override, and the policy reads it.
    lorafleet("adapters", "import", str(wrecked), "--name", "support-intents", "--force", env=engine_env("full"))
    lorafleet("eval", "run", "examples/suites/support-intents-quick.yaml", "--endpoint", GATEWAY,
              "--out", str(DEMO / "eval" / "support-intents-v2"), "--concurrency", str(EVAL_CONCURRENCY),
              ok=(0, 1), env=eval_env())
    lorafleet("adapters", "promote", WRECKED, "--to", "prod", ok=(1,))


OFF_DISTRIBUTION = ["Write a haiku about autumn rain on a tin roof.", "What is 17 multiplied by 23?",
                    "Translate 'good morning' into French and Spanish.", "Explain photosynthesis to a child.",
                    "List three prime numbers larger than fifty.", "Who painted the Mona Lisa?",
                    "Give me a recipe for a quick tomato soup.", "What causes the seasons on Earth?",
                    "Suggest a name for a black and white kitten.", "Summarise the plot of Hamlet in one line."]


def step_capture() -> None:
    """Live traffic: captured into review, and watched for drift (off-distribution prompts must show)."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{GATEWAY}/v1", api_key=load_json(SECRETS)["api_key"])
    prompts = ["My card was charged twice for one order, please help.",
               "Where is my parcel? It has been ten days.",
               "I want to cancel my subscription today."]
    ask(client, prompts)
    monitor("drift after in-distribution traffic")
    # Enough of them to fill the monitor's minimum window (50 requests), so it may call it drift.
    off = [f"{p} ({n})" for n in range(5) for p in OFF_DISTRIBUTION]
    console.print(f"[bold]now {len(off)} prompts unlike anything support-intents was trained on:[/]")
    ask(client, off, show=False, max_tokens=8)
    monitor("drift after off-distribution traffic")
    canary(client, prompts)


def canary(client: object, prompts: list[str]) -> None:
    """Force the refused support-intents@v2 out as a 50% canary of prod: the gateway sees it answer off-label
    (its INVALID rate against v1's) and moves prod back to v1 by itself, recording why on the card."""
    lorafleet("adapters", "promote", WRECKED, "--to", "prod", "--canary", "50", "--force",
              "--reason", "demo: a degraded canary, to watch the gateway roll it back")
    time.sleep(1.5)  # the watcher reads running canaries every second
    users = [f"canary-user-{i}" for i in range(60)]
    deadline = time.monotonic() + 120
    with console.status("traffic on support-intents@prod until the gateway decides …"):
        while time.monotonic() < deadline and prod_versions() != {"v1"}:
            ask(client, [prompts[i % len(prompts)] for i in range(len(users))], show=False, max_tokens=16,
                users=users)
            time.sleep(2)
    rolled = prod_versions() == {"v1"}
    console.print(f"support-intents@prod → {', '.join(sorted(prod_versions()))}"
                  f"{' (rolled back by the gateway)' if rolled else ' (NOT rolled back within 120 s)'}")
    lorafleet("adapters", "show", WRECKED)


def prod_versions() -> set[str]:
    """The versions behind support-intents@prod now. From the alias file itself: `adapters show …@prod` resolves
    a weighted alias to one of its versions at random, and a card's `aliases` holds only its own share."""
    shares = load_json(REGISTRY / "support-intents" / "aliases.json").get("prod")
    return set(shares) if isinstance(shares, dict) else {str(shares)}


def ask(client: object, prompts: list[str], *, show: bool = True, max_tokens: int = 32,
        users: list[str] | None = None) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> object:
        user = users[i] if users else f"demo-user-{i}"
        # @prod: what production traffic asks for (the bare name would follow latest, the wrecked v2).
        return client.chat.completions.create(model="support-intents@prod", user=user, max_tokens=max_tokens,
                                              temperature=0, messages=[{"role": "user", "content": prompts[i]}])

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(one, range(len(prompts))))
    if show:
        for prompt, reply in zip(prompts, replies, strict=True):
            console.print(f"[bold]{reply.model}[/] ← {prompt}\n   → {reply.choices[0].message.content}",
                          highlight=False)


def monitor(title: str) -> None:
    time.sleep(2)  # the gateway folds observations into its drift windows off the request path
    console.print(f"[bold]{title}:[/]")
    out = lorafleet("adapters", "monitor", "support-intents", "--gateway", GATEWAY, "--json", capture=True).stdout
    rows = json.loads(out)
    lorafleet("adapters", "monitor", "support-intents", "--gateway", GATEWAY)
    drift = load_json(DEMO / "drift.json")
    drift[title] = rows
    save_json(DEMO / "drift.json", drift)


def summary() -> None:
    table = Table("suite", "target", "metric", "value [95% CI]  Δ vs base (* significant)", "gates",
                  title="base vs adapters on the held-out test splits")
    for task in TASKS:
        results = DEMO / "eval" / task / "results.json"
        if not results.exists():
            continue
        data = json.loads(results.read_text())
        for row in summary_rows(data):
            table.add_row(task, *row)
    console.print(table)
    for task in TASKS:
        results = DEMO / "eval" / task / "results.json"
        if results.exists():
            for line in baseline_verdicts(json.loads(results.read_text())):
                console.print(f"{task}: {line}", highlight=False)
    for line in human_lines(DEMO / "eval" / "ticket-summaries"):
        console.print(f"ticket-summaries: {line}", highlight=False)
    for line in evidence_lines():
        console.print(line, highlight=False)
    for title, rows in load_json(DEMO / "drift.json").items():
        for r in rows:
            far = "-" if r.get("input_far_share") is None else f"{r['input_far_share']:.2f}"
            flagged = ", ".join(r.get("drift", [])) or "none flagged"
            console.print(f"{title}: {r['adapter']}@{r['version']} far-from-training share {far} over "
                          f"{r.get('requests', 0)} request(s); drift: {flagged}", highlight=False)
    guard = load_json(DEMO / "guard.json")
    if guard:
        found = ", ".join(f"{k}: {v}" for k, v in guard.items())
        console.print(f"[bold]held-out guard[/] (held-out prompts reaching train, per dataset): {found}",
                      highlight=False)
    key = load_json(SECRETS).get("api_key", "<key>")
    console.print(f"""
[bold]gateway[/]      {GATEWAY}/v1   (OpenAI-compatible; metrics at {GATEWAY}/metrics)
[bold]review app[/]   {REVIEW}   (log in as {REVIEWER[0]} / {REVIEWER[1]})
[bold]reports[/]      {DEMO / 'eval'}/<suite>/report.html
[bold]registry[/]     lorafleet adapters list

curl {GATEWAY}/v1/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
  -d '{{"model": "support-intents", "messages": [{{"role": "user", "content": "I was charged twice"}}]}}'

python -c "from openai import OpenAI; c = OpenAI(base_url='{GATEWAY}/v1', api_key='{key}'); \\
print(c.chat.completions.create(model='support-intents@latest', \\
messages=[{{'role': 'user', 'content': 'Where is my parcel?'}}]).choices[0].message.content)"

stop everything with: [bold]make stop[/]""", highlight=False)


def summary_rows(data: dict) -> list[tuple[str, str, str, str]]:
    """(target, metric, value [CI] and delta vs base, gate verdicts) rows from an eval run's results.json."""
    rows = []
    # Δ is against the suite's baseline (the zero-shot base); other comparisons (prompted baselines) are apart.
    baseline = data.get("baseline", "base")
    deltas = {(c["target"], c["metric"]): c for c in data.get("comparisons", []) if c.get("vs", baseline) == baseline}
    gates: dict[str, list[str]] = {}
    for g in data.get("gates", []):
        gates.setdefault(g["target"], []).append(f"{'PASS' if g['passed'] else 'FAIL'} {g['gate']}")
    for target, result in data.get("targets", {}).items():
        verdict = "; ".join(gates.get(target, [])) or "-"
        for name, m in result.get("metrics", {}).items():
            lo, hi = m["ci"]
            text = f"{m['value']:.3f} [{lo:.3f}, {hi:.3f}]"
            c = deltas.get((target, name))
            if c is not None:
                text += f"  Δ {c['delta']:+.3f}{' *' if c['significant'] else ''}"
            rows.append((target, name, text, verdict))
            verdict = ""
            none = (m.get("details") or {}).get("per_class", {}).get("none")
            if none and none.get("support"):
                # The seeds' bar for clause detection: <2% of clause-free sentences flagged as a clause.
                missed = round((1 - none["recall"]) * none["support"])
                rows.append((target, "FP rate on none", f"{1 - none['recall']:.3f} ({missed}/{none['support']})", ""))
    return rows


def baseline_verdicts(data: dict) -> list[str]:
    """Each adapter against the best *prompted* base (k-shot, constrained), said plainly: beats it or not."""
    lines = []
    for metric, best in data.get("best_baseline", {}).items():
        for v in best.get("adapters", []):
            lo, hi = v["ci"]
            verdict = "beats" if v["beats"] else "does NOT beat"
            lines.append(f"{v['target']} {verdict} the best baseline {best['baseline']} ({best['value']:.3f}) on "
                         f"{metric}: {v['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}], p={v['p_value']:.3g}")
    return lines


def evidence_lines() -> list[str]:
    """Per version, from its card: the base it is served on, fidelity, forgetting, and every promotion decision."""
    lines = []
    for ref in [*(f"{t}@v1" for t in TASKS), WRECKED]:
        result = lorafleet("adapters", "show", ref, "--json", capture=True, ok=(0, 1, 2), quiet=True)
        if result.returncode != 0:
            continue
        card = json.loads(result.stdout)
        lines.append(f"[bold]{ref}[/] served on the {(card.get('trained_on') or {}).get('variant', 'full')} base; "
                     f"{fidelity_text(card.get('fidelity') or {})}; {forgetting_text(card.get('forgetting') or {})}")
        for d in card.get("decisions") or []:
            failed = [c["item"] for c in d.get("checks", []) if not c.get("ok")]
            why = f": {d['reason']}" if d.get("reason") else ""
            why += f" (failed: {', '.join(failed)})" if failed else ""
            share = f" at {d['percent']:g}%" if d.get("percent") not in (None, 100) else ""
            forced = " (forced)" if d.get("forced") else ""
            lines.append(f"  {d['kind']}{forced} → {d.get('alias')}{share} by {d.get('who')}{why}")
    return lines


def fidelity_text(f: dict) -> str:
    if f.get("token_agreement") is None:
        return f"fidelity {f.get('skipped', 'not checked')}"
    return (f"fidelity {'pass' if f.get('passed') else 'FAIL'} (token agreement {f['token_agreement']:.3f}, mean "
            f"|Δ logprob| {f['mean_abs_logprob_diff']:.4f} vs HF+PEFT, {f.get('tokens')} tokens, "
            f"{f.get('engine_dtype')})")


def forgetting_text(f: dict) -> str:
    drop = (f.get("drop") or {}).get(f.get("metric", "rougeL"))
    if not drop:
        return f"forgetting {f.get('skipped', 'not measured')}"
    lo, hi = drop["ci"]
    verdict = {True: "pass", False: "FAIL"}.get(f.get("passed"), "no gate")
    return (f"forgetting {verdict}: {f.get('metric', 'rougeL')} drop vs the base's own answers {drop['value']:+.3f} "
            f"[{lo:+.3f}, {hi:+.3f}] (n={f.get('samples')}, max_drop {f.get('max_drop')})")


def human_lines(run: Path) -> list[str]:
    """The scripted reviewer's grades against ROUGE-L (the rule it follows) and against the judge (κ)."""
    lines = []
    corr = load_json(run / "correlation.json")
    row = next((r for r in corr.get("table", {}).get("rows", [])
                if r["metric"] == "rougeL" and r["criterion"] == "accuracy"), None)
    if row is not None:
        if row.get("spearman") is None:
            lines.append(f"ROUGE-L ↔ accuracy grades: {row.get('note') or 'undefined'}")
        else:
            lo, hi = row["spearman_ci"]
            lines.append(f"ROUGE-L ↔ accuracy grades (scripted reviewer, n={row['n']}): Spearman "
                         f"{row['spearman']:.2f} [{lo:.2f}, {hi:.2f}]")
    judge = (load_json(run / "results.json").get("judge") or {}).get("agreement") or {}
    for c in judge.get("criteria", []):
        kappa = c.get("kappa") or {}
        if kappa.get("value") is None:
            text = kappa.get("note") or judge.get("status", "not measured")
        else:
            ci = kappa.get("ci")
            text = f"κ {kappa['value']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        trust = "" if c.get("trusted") is None else (" trusted" if c["trusted"] else " UNTRUSTED")
        lines.append(f"judge vs reviewer on {c['criterion']} (n={c.get('n', 0)}): {text}{trust}")
    return lines


STEPS: list[tuple[str, Callable[[], None], bool]] = [
    # (title, function, resumable: skipped when done before)
    ("prepare the embedded base model and its nf4 twin (each vLLM starts once its folder is ready)", step_base, True),
    ("start vLLM on the base and on its nf4 twin (in the background)", step_engines, False),
    ("generate, check and split the example datasets", step_data, True),
    ("wait for the two vLLM engines", step_wait_engines, False),
    (f"train the {TASKS[0]} adapter (fidelity + forgetting checked)", train_step(TASKS[0]), True),
    ("start the gateway (in front of the two engines) and the review app", step_services, False),
    (f"the first answer: {TASKS[0]} through the gateway", step_first_answer, False),
    *[(f"train the {t} adapter (fidelity + forgetting checked)", train_step(t), True) for t in TASKS[1:]],
    *[(f"evaluate base vs {t} through the gateway", eval_step(t), True) for t in TASKS],
    ("grade the summaries with a scripted reviewer: metric ↔ grade, judge κ", step_grade, True),
    ("promote each adapter to prod on its evidence; refuse a wrecked one", step_promote, True),
    ("capture live requests into review; a degraded canary rolls itself back", step_capture, True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fresh", action="store_true", help="Forget finished steps.")
    parser.add_argument("--stop", action="store_true", help="Stop the background services.")
    args = parser.parse_args()
    if args.stop:
        stop_services()
        return
    state = {} if args.fresh else load_json(STATE)
    started = time.monotonic()
    for i, (title, fn, resumable) in enumerate(STEPS, start=1):
        console.print(Rule(f"[bold]{i}/{len(STEPS)} {title}"))
        if resumable and title in state:
            console.print(f"[green]✓ done before[/] ({state[title]:.0f} s) — skipped")
            continue
        t0 = time.monotonic()
        fn()
        state[title] = time.monotonic() - t0
        save_json(STATE, state)
        console.print(f"[green]✓[/] {state[title]:.0f} s")
    console.print(Rule("[bold]summary"))
    summary()
    console.print(timing_table(state, time.monotonic() - started, install_seconds()))


def install_seconds() -> float | None:
    """How long `make install` took when it last ran (the Makefile records it), if known."""
    try:
        return float((BIN.parent / ".install-seconds").read_text())
    except (OSError, ValueError):
        return None


def timing_table(state: dict[str, float], this_run: float, install: float | None) -> Table:
    """Wall seconds per step (install included where known) and their total: the ≤30 min budget."""
    rows = ([("install (make install)", install)] if install is not None else []) + list(state.items())
    total = sum(seconds for _, seconds in rows)
    table = Table("step", "seconds", title=f"wall time per step (this run: {this_run:.0f} s)")
    for title, seconds in rows:
        table.add_row(title, f"{seconds:.0f}")
    table.add_row("[bold]total[/]", f"[bold]{total:.0f}[/] ({total / 60:.1f} min)")
    return table


if __name__ == "__main__":
    main()
