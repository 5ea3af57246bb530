"""Lints and dry-runs the multi-host launchers in experiments/launch/ and experiments/README.md.

The launchers cannot run here (no SLURM, Kubernetes or TPU), so the tests check what can go
wrong on a cluster without one: every `llmjax train` line uses only flags `llmjax train`
accepts and gin bindings that exist, referenced gin files exist, the YAML has the structure
JobSet and the Job controller need, and the shell scripts, run with `srun` / `gcloud` / `llmjax`
replaced by recorders, hand `llmjax train` the arguments the header comments promise.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "experiments" / "launch"
README = REPO / "experiments" / "README.md"
SHELL_SCRIPTS = [LAUNCH / "slurm.sbatch", LAUNCH / "tpu_vm.sh"]
K8S = LAUNCH / "k8s_jobset.yaml"
# The flags `llmjax train` accepts besides --gin.NAME=VALUE (llmjax/cli/train.py).
TRAIN_FLAGS = {"--gin_file", "--workdir", "--coordinator_address", "--num_processes",
               "--process_id", "--local_device_ids", "--distributed", "--distributed_timeout"}
REQUIRED_FLAGS = {"--gin_file", "--workdir"}
# "$@" or "${ARGS[@]}": the user's extra flags, passed through unchanged.
PASSTHROUGH = re.compile(r"^\$(@|\{@\}|\{\w+\[@\]\})$")
GIN_PATH = re.compile(r"gin_configs/[\w./-]+?\.gin\b")
MACRO_LINE = re.compile(r"^([A-Za-z_]\w*)\s*=", re.MULTILINE)


# --- The checker -------------------------------------------------------------------------------

def _tokens(rest: str) -> list[str]:
  """Shell words of one command, up to the first `;`, `&`, `|` (an unbalanced closing quote,
  as in `--command="... llmjax train ..."`, ends the command too)."""
  for _ in range(3):
    lexer = shlex.shlex(rest, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    try:
      words = list(lexer)
      break
    except ValueError:  # No closing quotation: drop the outer command's closing quote.
      cut = max(rest.rfind('"'), rest.rfind("'"))
      rest = rest[:cut] + rest[cut + 1:]
  else:
    raise ValueError(f"cannot split {rest!r}")
  command = []
  for word in words:
    if set(word) <= set(";&|"):
      break
    command.append(word)
  return command


def train_invocations(text: str) -> list[list[str]]:
  """The argument words after each `llmjax train` in shell text (comment lines dropped,
  backslash-continued lines joined)."""
  lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
  joined = "\n".join(lines).replace("\\\n", " ")
  return [_tokens(line[m.end():]) for line in joined.splitlines()
          for m in re.finditer(r"\bllmjax train\b", line)]


def markdown_code(text: str) -> str:
  """The contents of the fenced code blocks of a markdown file."""
  return "\n".join(re.findall(r"^```[\w-]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL))


def check_train_args(words: list[str], fields: set[str], macros: set[str]) -> list[str]:
  """Problems with one `llmjax train` argument list (empty when it would be accepted)."""
  problems, seen, i = [], set(), 0
  while i < len(words):
    word = words[i]
    i += 1
    if PASSTHROUGH.match(word):
      continue
    if not word.startswith("--"):
      problems.append(f"stray argument {word!r}")
      continue
    name, eq, _ = word.partition("=")
    if name.startswith("--gin."):
      bare = name[len("--gin."):].rsplit("/", 1)[-1]
      known = fields if "." in bare else macros
      if not eq or bare not in known:
        problems.append(f"unknown gin binding {word!r}")
    elif name not in TRAIN_FLAGS:
      problems.append(f"unknown flag {name!r}")
    else:
      seen.add(name)
      if not eq:  # `--flag value`: every llmjax train flag takes a value.
        if i == len(words) or words[i].startswith("--"):
          problems.append(f"{name} has no value")
        i += 1
  problems += [f"missing {flag}" for flag in sorted(REQUIRED_FLAGS - seen)]
  return problems


def missing_gin_paths(text: str) -> list[str]:
  return [p for p in GIN_PATH.findall(text) if not (REPO / p).is_file()]


@pytest.fixture(scope="module")
def gin_names() -> tuple[set[str], set[str]]:
  from llmjax.cli import gin_config

  macros = {m for path in (REPO / "gin_configs").rglob("*.gin")
            for m in MACRO_LINE.findall(path.read_text())}
  return set(gin_config.known_fields()), macros


def k8s_docs() -> list[dict]:
  return [doc for doc in yaml.safe_load_all(K8S.read_text()) if doc]


def jobset_scripts() -> list[str]:
  jobset = next(d for d in k8s_docs() if d["kind"] == "JobSet")
  return [" ".join(c.get("command", []) + c.get("args", []))
          for rjob in jobset["spec"]["replicatedJobs"]
          for c in rjob["template"]["spec"]["template"]["spec"]["containers"]]


def all_invocations() -> dict[str, list[list[str]]]:
  return {
      "slurm.sbatch": train_invocations((LAUNCH / "slurm.sbatch").read_text()),
      "tpu_vm.sh": train_invocations((LAUNCH / "tpu_vm.sh").read_text()),
      "k8s_jobset.yaml": [w for s in jobset_scripts() for w in train_invocations(s)],
      "README.md": train_invocations(markdown_code(README.read_text())),
  }


# --- The checker catches what it should ------------------------------------------------------

@pytest.mark.parametrize("snippet, problem", [
    ("llmjax train --gin_file=a.gin --workdir=w --steps=5", "unknown flag '--steps'"),
    ("llmjax train --gin_file=a.gin --workdir=w --gin.TrainConfig.train_stepz=5",
     "unknown gin binding"),
    ("llmjax train --gin_file=a.gin --workdir=w --gin.TRAIN_STEP=5", "unknown gin binding"),
    ("llmjax train --gin_file=a.gin --process_id=0", "missing --workdir"),
    ("llmjax train --gin_file=a.gin --workdir w extra", "stray argument 'extra'"),
    ("llmjax train --gin_file=a.gin --workdir=w \\\n  --num_processes", "has no value"),
])
def test_checker_reports_bad_invocations(snippet, problem, gin_names):
  [words] = train_invocations(snippet)
  assert any(problem in p for p in check_train_args(words, *gin_names))


def test_checker_accepts_good_invocation_and_stops_at_command_end(gin_names):
  text = ('# llmjax train --bogus\nx && llmjax train --gin_file=a.gin \\\n  --workdir "/w d" '
          '--gin.TRAIN_STEPS=5 --gin.TrainConfig.seed=1 "$@" & llmjax train --nope; echo\n'
          'ssh h --command="llmjax train --gin_file=a.gin --workdir=w"')
  first, second, third = train_invocations(text)
  assert first == ["--gin_file=a.gin", "--workdir", "/w d", "--gin.TRAIN_STEPS=5",
                   "--gin.TrainConfig.seed=1", "$@"]
  assert check_train_args(first, *gin_names) == []
  assert second == ["--nope"]
  assert third == ["--gin_file=a.gin", "--workdir=w"]
  assert missing_gin_paths("x gin_configs/runs/nope.gin gin_configs/runs/quickstart.gin") == [
      "gin_configs/runs/nope.gin"]


# --- The launchers -----------------------------------------------------------------------------

def test_every_train_invocation_uses_known_flags_and_bindings(gin_names):
  found = all_invocations()
  assert {name: len(words) >= 1 for name, words in found.items()} == dict.fromkeys(found, True)
  assert len(found["README.md"]) >= 3
  for name, invocations in found.items():
    for words in invocations:
      assert check_train_args(words, *gin_names) == [], (name, words)


def test_literal_gin_files_and_bindings_parse():
  from llmjax.cli import gin_config

  checked = 0
  for invocations in all_invocations().values():
    for words in invocations:
      files = [w.split("=", 1)[1] for w in words if w.startswith("--gin_file=")]
      if files and not any("$" in f for f in files):
        _, bindings = gin_config.split_gin_flags([w for w in words if w.startswith("--gin.")])
        gin_config.parse(files, bindings)
        checked += 1
  gin_config.gin.clear_config()
  assert checked >= 3


def test_referenced_gin_files_exist():
  texts = [p.read_text() for p in [*SHELL_SCRIPTS, K8S, README]]
  assert sum(len(GIN_PATH.findall(t)) for t in texts) >= 4
  assert [p for t in texts for p in missing_gin_paths(t)] == []


@pytest.mark.parametrize("path", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_script_lint(path):
  text = path.read_text()
  assert text.startswith("#!/bin/bash\n")
  assert re.search(r"^set -euo pipefail$", text, re.MULTILINE)
  result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr


def test_k8s_structure():
  docs = k8s_docs()
  assert [d["kind"] for d in docs] == ["PersistentVolumeClaim", "JobSet"]
  pvc, jobset = docs
  assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
  assert "ReadWriteMany" in pvc["spec"]["accessModes"]
  [rjob] = jobset["spec"]["replicatedJobs"]
  assert rjob["replicas"] == 1  # JOB_COMPLETION_INDEX is the global index only with one job.
  job = rjob["template"]["spec"]
  [script] = jobset_scripts()
  [words] = train_invocations(script)
  num = int(next(w for w in words if w.startswith("--num_processes=")).split("=")[1])
  assert job["completionMode"] == "Indexed"
  assert job["parallelism"] == job["completions"] == num >= 2
  pod = job["template"]["spec"]
  [container] = pod["containers"]
  assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
  workdir = next(w for w in words if w.startswith("--workdir=")).split("=")[1]
  volumes = {v["name"]: v for v in pod["volumes"]}
  mount = next(m for m in container["volumeMounts"] if workdir.startswith(m["mountPath"] + "/"))
  assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]


# --- Dry runs with recorders in place of srun / gcloud / llmjax -------------------------------

def _recorder(bin_dir: Path, name: str) -> Path:
  """An executable `name` that writes its arguments (NUL-separated) and JAX_LOCAL_DEVICE_IDS."""
  log = bin_dir / f"{name}.log"
  path = bin_dir / name
  path.write_text(f'#!/bin/bash\nprintf "%s\\0" "$@" > {shlex.quote(str(log))}\n'
                  f'printf "%s" "${{JAX_LOCAL_DEVICE_IDS-unset}}" > {shlex.quote(str(log))}.ids\n')
  path.chmod(0o755)
  return log


def _run(args: list[str], env: dict[str, str], bin_dir: Path, cwd: Path):
  full = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(cwd), **env}
  return subprocess.run(args, env=full, cwd=cwd, capture_output=True, text=True, timeout=30)


def _args(log: Path) -> list[str]:
  return log.read_text().split("\0")[:-1]


@pytest.mark.parametrize("gpus_on_node", [None, "4"])
def test_slurm_dry_run_one_process_per_node_uses_all_gpus(tmp_path, gpus_on_node):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  srun_log = _recorder(bin_dir, "srun")
  (tmp_path / "venv" / "bin").mkdir(parents=True)
  (tmp_path / "venv" / "bin" / "activate").write_text("")
  env = {"SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_NAME": "job", "LLMJAX_VENV": "venv"}
  if gpus_on_node:
    env["SLURM_GPUS_ON_NODE"] = gpus_on_node
  sbatch = LAUNCH / "slurm.sbatch"
  result = _run(["bash", str(sbatch), "--gin.TRAIN_STEPS=5"], env, bin_dir, tmp_path)
  assert result.returncode == 0, result.stderr
  assert _args(srun_log) == ["--kill-on-bad-exit=1", "llmjax", "train",
                             "--gin_file=gin_configs/runs/quickstart.gin",
                             f"--workdir={tmp_path}/workdirs/job", "--gin.TRAIN_STEPS=5"]
  directives = dict(re.findall(r"^#SBATCH --([\w-]+)=?(\S*)", sbatch.read_text(), re.MULTILINE))
  assert directives["ntasks-per-node"] == "1"
  gpus = int(gpus_on_node or directives["gpus-per-node"])
  # One process per node must drive every GPU, not just GPU [SLURM_LOCALID].
  assert Path(f"{srun_log}.ids").read_text() == ",".join(map(str, range(gpus)))


def test_k8s_dry_run_pod_i_is_process_i(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  llmjax_log = _recorder(bin_dir, "llmjax")
  jobset = k8s_docs()[1]
  [rjob] = jobset["spec"]["replicatedJobs"]
  subdomain = jobset["spec"].get("network", {}).get("subdomain", jobset["metadata"]["name"])
  [container] = rjob["template"]["spec"]["template"]["spec"]["containers"]
  port = container["ports"][0]["containerPort"]
  for index in range(rjob["template"]["spec"]["parallelism"]):
    result = _run(container["command"] + container["args"], {"JOB_COMPLETION_INDEX": str(index)},
                  bin_dir, tmp_path)
    assert result.returncode == 0, result.stderr
    words = _args(llmjax_log)
    assert words[0] == "train"
    assert f"--process_id={index}" in words
    assert (f"--coordinator_address={jobset['metadata']['name']}-{rjob['name']}-0-0."
            f"{subdomain}:{port}") in words


def test_tpu_vm_dry_run_quotes_extra_flags(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  gcloud_log, llmjax_log = _recorder(bin_dir, "gcloud"), _recorder(bin_dir, "llmjax")
  script = str(LAUNCH / "tpu_vm.sh")
  env = {"TPU_NAME": "my-tpu", "ZONE": "z1"}
  missing_workdir = _run(["bash", script, "train"], env, bin_dir, tmp_path)
  assert missing_workdir.returncode != 0 and not gcloud_log.exists()
  assert _run(["bash", script, "bogus"], env, bin_dir, tmp_path).returncode == 2

  env["WORKDIR"] = "/mnt/shared/run"
  result = _run(["bash", script, "train", "--gin.TEXT_FILES=my corpus/*.txt"], env, bin_dir,
                tmp_path)
  assert result.returncode == 0, result.stderr
  *ssh, command = _args(gcloud_log)
  assert ssh == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone=z1", "--worker=all"]
  assert command.startswith("--command=")
  # What every worker runs, in its home directory holding the checkout from `setup`.
  (tmp_path / "llmjax" / ".venv" / "bin").mkdir(parents=True)
  (tmp_path / "llmjax" / ".venv" / "bin" / "activate").write_text("")
  remote = _run(["bash", "-c", command.removeprefix("--command=")], {}, bin_dir, tmp_path)
  assert remote.returncode == 0, remote.stderr
  assert _args(llmjax_log) == ["train", "--gin_file=gin_configs/runs/quickstart.gin",
                               "--workdir=/mnt/shared/run", "--distributed=on",
                               "--gin.TEXT_FILES=my corpus/*.txt"]


def test_readme_names_the_variables_jax_reads():
  from jax._src.clusters import slurm_cluster

  text = README.read_text()
  slurm_vars = [v for k, v in vars(slurm_cluster).items()
                if k.startswith("_") and isinstance(v, str) and v.startswith("SLURM_")
                and k != "_NUM_NODES"]
  assert len(slurm_vars) == 5
  for name in [*slurm_vars, "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
               "JAX_LOCAL_DEVICE_IDS", "JOB_COMPLETION_INDEX", "TPU_WORKER_ID"]:
    assert name in text, name
