"""Launch scripts (docs/jax_practices.md item 14): --help, the exact --dry-run commands, and the
parts that can run here for real (local multi-process runs, per-worker job control, a
SLURM batch script under a stand-in srun, and the recommended XLA/libtpu flag names)."""
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest

from acformer_jax import aot_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"
SCRIPTS = ["local_multiprocess.sh", "tpu_pod.sh", "tpu_multislice.sh", "slurm_gpu.sh"]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def sh(script, *args, check=True, timeout=60, env=None):
  p = subprocess.run(["bash", str(LAUNCH / script), *map(str, args)], cwd=ROOT, capture_output=True,
                     text=True, timeout=timeout, env=env or ENV)
  if check:
    assert p.returncode == 0, f"{script} {args}: rc={p.returncode}\n{p.stdout}\n{p.stderr}"
  return p


def common(fn, *args):
  """Output of a function from launch/_common.sh."""
  cmd = f"source launch/_common.sh; {fn} {' '.join(map(shlex.quote, map(str, args)))}"
  return subprocess.run(["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def commands(stdout):
  """The printed commands ('+ ...' lines) as argv lists."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def opt(argv, name):
  """Value of --name=VALUE or --name VALUE in argv."""
  for i, a in enumerate(argv):
    if a.startswith(name + "="):
      return a.split("=", 1)[1]
    if a == name:
      return argv[i + 1]
  return None


def remote(argv):
  """Splits the --command of a gcloud ssh line into (env dict, argv after the env)."""
  toks = shlex.split(opt(argv, "--command"))
  env, i = {}, toks.index("env") + 1 if "env" in toks else 0
  while i and i < len(toks) and "=" in toks[i] and not toks[i].startswith("-"):
    k, v = toks[i].split("=", 1)
    env[k] = v
    i += 1
  return env, toks[i:] if i else toks


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
  out = sh(script, "--help").stdout
  assert "Usage: launch/" + script in out and "--dry-run" in out


TRAIN = ["--config", "configs/x.py", "--workdir", "gs://b/run 1", "--config.note=it's"]


@pytest.mark.parametrize("accel,api_type,runtime,chips", [
    ("v5e-16", "v5litepod-16", "v2-alpha-tpuv5-lite", 16), ("v4-32", "v4-32", "tpu-ubuntu2204-base", 16),
    ("v5p-128", "v5p-128", "v2-alpha-tpuv5", 64), ("v6e-16", "v6e-16", "v2-alpha-tpuv6e", 16)])
def test_tpu_pod_dry_run_up(accel, api_type, runtime, chips):
  out = sh("tpu_pod.sh", "--name", "acf", "--zone", "us-east5-a", "--project", "proj", "--accelerator", accel,
           "--spot", "--env", "WANDB_MODE=offline", "--dry-run", "up", "--", *TRAIN).stdout
  cmds = commands(out)
  gcloud = [c for c in cmds if c[0] == "gcloud"]
  describe, create = gcloud[0], gcloud[1]
  assert describe[:5] == ["gcloud", "compute", "tpus", "queued-resources", "describe"] and describe[5] == "acf-qr"
  assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "acf-qr"]
  assert (opt(create, "--accelerator-type"), opt(create, "--runtime-version"), opt(create, "--node-id")) == (
      api_type, runtime, "acf")
  assert "--spot" in create and opt(create, "--zone") == "us-east5-a" and opt(create, "--project") == "proj"
  tar = next(c for c in cmds if c[0] == "tar")
  assert "--exclude=./.venv" in tar and tar[-1] == "."
  scp = next(c for c in gcloud if c[3:5] == ["tpu-vm", "scp"])
  assert opt(scp, "--worker") == "all" and scp[5] == tar[2] and scp[6] == "acf:acformer_code.tgz"
  ssh = [c for c in gcloud if c[3:5] == ["tpu-vm", "ssh"]]
  setup, start, logs, stop = ssh
  assert opt(setup, "--worker") == "all"
  assert "bash launch/setup.sh" in opt(setup, "--command") and "jax[tpu]==0.10.2" in opt(setup, "--command")
  env, argv = remote(start)
  assert opt(start, "--worker") == "all"
  assert env["ACFORMER_DISTRIBUTED"] == "on" and env["ACFORMER_EXPECTED_DEVICES"] == str(chips)
  assert env["LIBTPU_INIT_ARGS"] == common("libtpu_init_args", aot_lib.parse_topology(accel).generation)
  assert env["WANDB_MODE"] == "offline"
  assert argv == ["bash", "launch/_worker.sh", "start", "--", ".venv/bin/python", "-m", "acformer_jax.train", *TRAIN]
  assert opt(logs, "--worker") == "0" and opt(logs, "--command").endswith("launch/_worker.sh tail")
  assert opt(stop, "--worker") == "all" and "_worker.sh stop" in opt(stop, "--command")


def test_tpu_multislice_dry_run():
  out = sh("tpu_multislice.sh", "--num-slices", "2", "--name", "acf", "--zone", "z", "--accelerator", "v5e-16",
           "--dry-run", "up", "--", *TRAIN).stdout
  gcloud = [c for c in commands(out) if c[0] == "gcloud"]
  create = gcloud[1]
  assert (opt(create, "--node-count"), opt(create, "--node-prefix"), opt(create, "--node-id")) == ("2", "acf", None)
  ip = next(c for c in gcloud if c[3:5] == ["tpu-vm", "describe"])
  assert ip[5] == "acf-0" and "networkEndpoints[0].ipAddress" in opt(ip, "--format")
  starts = [c for c in gcloud if c[3:5] == ["tpu-vm", "ssh"] and "_worker.sh start" in opt(c, "--command")]
  assert [c[5] for c in starts] == ["acf-0", "acf-1"]
  for i, c in enumerate(starts):
    cmd = opt(c, "--command")
    assert f"MEGASCALE_SLICE_ID={i} " in cmd and "MEGASCALE_NUM_SLICES=2 " in cmd
    assert "MEGASCALE_COORDINATOR_ADDRESS=$COORD_IP:8080" in cmd
    env, _ = remote(["--command", cmd.split(" && ", 2)[-1]])
    assert env["ACFORMER_EXPECTED_DEVICES"] == "32" and env["ACFORMER_NUM_SLICES"] == "2"
  bad = sh("tpu_multislice.sh", "--name", "a", "--zone", "z", "create", check=False)
  assert bad.returncode == 2 and "--num-slices N is required" in bad.stderr


@pytest.mark.parametrize("args,message", [
    (["--zone", "z", "create"], "--name is required"),
    (["--name", "a", "create"], "--zone is required"),
    (["--name", "a", "--zone", "z", "--accelerator", "v7-8", "create"], "unknown TPU accelerator 'v7-8'"),
    (["--name", "a", "--zone", "z", "run"], "no training arguments"),
    (["--name", "a", "--zone", "z", "--bogus", "run"], "unknown option '--bogus'"),
    (["--name", "a", "--zone", "z", "launch"], "unknown action 'launch'"),
])
def test_tpu_pod_errors(args, message):
  p = sh("tpu_pod.sh", *args, check=False)
  assert p.returncode == 2 and message in p.stderr, p.stderr


@pytest.mark.parametrize("name", ["v4-8", "v4-32", "v5p-16", "v5p-1024", "v5e-1", "v5litepod-64", "v6e-256"])
def test_script_chip_counts_match_aot_lib(name):
  assert int(common("tpu_chips", name)) == aot_lib.parse_topology(name).chips_per_slice


def test_slurm_dry_run():
  out = sh("slurm_gpu.sh", "--nodes", "4", "--partition", "a3", "--sbatch-arg=--exclusive", "--dry-run",
           "--", *TRAIN).stdout
  lines = out.splitlines()
  for want in ["#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
               "#SBATCH --partition=a3", "#SBATCH --exclusive", "export ACFORMER_NUM_PROCESSES=4 ACFORMER_EXPECTED_DEVICES=32",
               "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7"]:
    assert want in lines, want
  assert f"export XLA_FLAGS={shlex.quote(common('gpu_xla_flags'))}" in lines
  srun = shlex.split(next(l for l in lines if l.startswith("srun ")))
  assert srun[:2] == ["srun", "--kill-on-bad-exit=1"] and srun[6:] == [".venv/bin/python", "-m", "acformer_jax.train", *TRAIN]
  assert commands(out) == [["sbatch", "logs/slurm/acformer.sbatch"]]
  per_gpu = sh("slurm_gpu.sh", "--nodes", "2", "--tasks-per-node", "8", "--dry-run", "--", *TRAIN).stdout
  assert "export ACFORMER_NUM_PROCESSES=16 ACFORMER_EXPECTED_DEVICES=16" in per_gpu and "JAX_LOCAL_DEVICE_IDS" not in per_gpu


def _fake_slurm(tmp_path):
  bin_ = tmp_path / "bin"
  bin_.mkdir()
  # Many hosts, as on a big allocation: a `| head -n 1` under pipefail would die of SIGPIPE.
  (bin_ / "scontrol").write_text("#!/bin/bash\necho localhost\nfor i in $(seq 2 20000); do echo node$i; done\n")
  (bin_ / "srun").write_text(
      "#!/bin/bash\n[[ $1 == --kill-on-bad-exit=1 ]] && shift\npids=()\n"
      "for ((i = 0; i < FAKE_NTASKS; i++)); do SLURM_PROCID=$i \"$@\" & pids+=($!); done\n"
      "rc=0; for p in \"${pids[@]}\"; do wait $p || rc=$?; done; exit $rc\n")
  for f in bin_.iterdir():
    f.chmod(0o755)
  return dict(ENV, PATH=f"{bin_}:{os.environ['PATH']}", FAKE_NTASKS="2", SLURM_JOB_NODELIST="x")


@pytest.mark.multiprocess
def test_slurm_batch_script_brings_up_two_processes(tmp_path):
  """The generated batch script, under a stand-in srun on this machine: both processes join."""
  p = sh("slurm_gpu.sh", "--nodes", "2", "--gpus-per-node", "2", "--env", "ACFORMER_LOCAL_DEVICE_COUNT=2",
         "--env", "JAX_PLATFORMS=cpu", "--port", str(_free_port()), "--module", "acformer_jax.distributed",
         "--no-submit", "--log-dir", tmp_path / "logs", "--", "--distributed_timeout_s=40",
         env=_fake_slurm(tmp_path), timeout=90)
  assert "process 0/2: 2 local, 4 global cpu devices; psum ok" in p.stdout
  assert "process 1/2: 2 local, 4 global cpu devices; psum ok" in p.stdout


def _free_port():
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_local_multiprocess_dry_run():
  out = sh("local_multiprocess.sh", "3", "--devices-per-process", "2", "--port", "1234", "--dry-run", *TRAIN).stdout
  lines = [l for l in out.splitlines() if l.startswith("+ ")]
  assert len(lines) == 3
  for i, line in enumerate(lines):
    argv = shlex.split(line[2:].rsplit(" > ", 1)[0])
    env = dict(a.split("=", 1) for a in argv[1:] if "=" in a and not a.startswith("-"))
    assert env["ACFORMER_PROCESS_ID"] == str(i) and env["ACFORMER_COORDINATOR"] == "127.0.0.1:1234"
    assert (env["ACFORMER_NUM_PROCESSES"], env["ACFORMER_LOCAL_DEVICE_COUNT"], env["ACFORMER_EXPECTED_DEVICES"]) == ("3", "2", "6")
    assert argv[-len(TRAIN) - 2:] == ["-m", "acformer_jax.train", *TRAIN]


@pytest.mark.multiprocess
def test_local_multiprocess_runs_two_processes(tmp_path):
  p = sh("local_multiprocess.sh", "2", "--devices-per-process", "2", "--module", "acformer_jax.distributed",
         "--log-dir", tmp_path, timeout=90)
  assert "process 0/2: 2 local, 4 global cpu devices; psum ok" in p.stdout  # host 0 streams here
  assert "process 1/2: 2 local, 4 global cpu devices; psum ok" in (tmp_path / "process_1.log").read_text()


def _fake_python(tmp_path, body):
  f = tmp_path / "fake_python.sh"
  f.write_text("#!/bin/bash\necho $$ > \"${FAKE_PID_DIR:?}/$ACFORMER_PROCESS_ID\"\n" + body + "\n")
  f.chmod(0o755)
  (tmp_path / "pids").mkdir()
  return f, dict(ENV, FAKE_PID_DIR=str(tmp_path / "pids"))


def _dead(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  return False


def test_local_multiprocess_failure_stops_the_others(tmp_path):
  py, env = _fake_python(tmp_path, 'if [ "$ACFORMER_PROCESS_ID" = 1 ]; then\n'
                         '  while [ ! -f "$FAKE_PID_DIR/0" ]; do sleep 0.05; done; echo boom; exit 3\nfi\nsleep 60')
  t0 = time.time()
  p = sh("local_multiprocess.sh", "2", "--python", py, "--log-dir", tmp_path / "logs", check=False, env=env)
  assert p.returncode == 3 and time.time() - t0 < 20
  assert "process 1 exited with status 3" in p.stderr and "boom" in p.stderr
  time.sleep(0.5)
  assert _dead(int((tmp_path / "pids" / "0").read_text()))


def test_local_multiprocess_ctrl_c_stops_all(tmp_path):
  py, env = _fake_python(tmp_path, "sleep 60")
  # Started as from a terminal, SIGINT at its default: a library imported earlier in this test
  # process can leave SIGINT ignored, a child inherits that, and bash cannot trap a signal that
  # was ignored when it started (the launcher then never sees the Ctrl-C).
  proc = subprocess.Popen(["bash", str(LAUNCH / "local_multiprocess.sh"), "2", "--python", str(py), "--log-dir",
                           str(tmp_path / "logs")], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  for _ in range(100):
    if len(list((tmp_path / "pids").iterdir())) == 2:
      break
    time.sleep(0.1)
  pid_files = list((tmp_path / "pids").iterdir())
  assert len(pid_files) == 2
  proc.send_signal(signal.SIGINT)
  try:  # the fake processes sleep 60 s: a lost Ctrl-C fails here, a slow machine does not
    rc = proc.wait(timeout=45)
  except subprocess.TimeoutExpired:
    proc.kill()
    pytest.fail(f"no exit 45 s after SIGINT; launcher stderr:\n{proc.communicate()[1].decode()[-2000:]}")
  assert rc == 130
  time.sleep(0.5)
  assert all(_dead(int(f.read_text())) for f in pid_files)


def test_worker_job_control(tmp_path):
  w = lambda *a: sh("_worker.sh", "--dir", tmp_path, *a, check=False)
  assert w("status").stdout.strip() == "none"
  assert w("start", "--", "bash", "-c", "echo hello; sleep 60").returncode == 0
  time.sleep(0.3)
  st = w("status")
  assert st.returncode == 0 and st.stdout.startswith("running ")
  again = w("start", "--", "true")
  assert again.returncode == 3 and "already running" in again.stderr
  assert w("stop", "--grace", "5").returncode == 0
  assert w("status").stdout.strip() == "exited 143"
  assert "hello" in (tmp_path / "train.log").read_text()
  w("start", "--", "bash", "-c", "echo bye; exit 3")
  t = w("tail")
  assert t.returncode == 3 and "bye" in t.stdout and "[job exited with status 3]" in t.stdout


def test_gpu_xla_flags_are_known_to_this_xla():
  """XLA aborts on an unknown XLA_FLAGS entry; GPU flags are parsed by the CPU build too."""
  probe = [sys.executable, "-c", "import jax.numpy as j; print(float(j.ones(3).sum()))"]
  run = lambda flags: subprocess.run(probe, env=dict(ENV, XLA_FLAGS=flags, JAX_PLATFORMS="cpu"),
                                     capture_output=True, text=True, timeout=60)
  ok = run(common("gpu_xla_flags"))
  assert ok.returncode == 0 and ok.stdout.strip() == "3.0", ok.stderr[-2000:]
  assert run("--xla_gpu_no_such_flag=true").returncode != 0  # the probe can fail


@pytest.mark.skipif(not aot_lib.libtpu_available(), reason="libtpu not installed (optional [tpu] extra)")
def test_libtpu_init_args_are_known_to_libtpu():
  """libtpu rejects unknown LIBTPU_INIT_ARGS; compile for each generation with its flags."""
  code = ("import sys, jax, jax.numpy as jnp\nfrom jax.sharding import NamedSharding, PartitionSpec as P\n"
          "from acformer_jax import aot_lib\nm = aot_lib.get_topology_mesh(sys.argv[1], (1, -1, 1))\n"
          "x = jax.ShapeDtypeStruct((512, 512), jnp.float32, sharding=NamedSharding(m, P('fsdp', None)))\n"
          "jax.jit(lambda a: jnp.tanh(a) @ a.T).lower(x).compile()\nprint('COMPILED')\n")
  cases = {"v4-8": common("libtpu_init_args", "v4"), "v5e-4": common("libtpu_init_args", "v5e"),
           "v5p-8": common("libtpu_init_args", "v5p"), "v6e-4": common("libtpu_init_args", "v6e"),
           "bogus": "--xla_tpu_no_such_flag=true"}
  procs = {k: subprocess.Popen([sys.executable, "-c", code, "v5e-4" if k == "bogus" else k],
                               env=dict(ENV, LIBTPU_INIT_ARGS=v, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k, v in cases.items()}
  outs = {k: p.communicate(timeout=180) for k, p in procs.items()}
  for k, p in procs.items():
    if k == "bogus":
      assert p.returncode != 0 and "Unknown command line flag" in outs[k][1]
    else:
      assert p.returncode == 0 and "COMPILED" in outs[k][0], (k, outs[k][1][-2000:])


def test_docs_list_the_recommended_flags():
  doc = (ROOT / "docs" / "launch.md").read_text()
  for gen in ("v4", "v5e", "v5p", "v6e"):
    for flag in common("libtpu_init_args", gen).split():
      assert flag in doc, (gen, flag)
  for flag in common("gpu_xla_flags").split():
    assert flag in doc, flag


ALL_SCRIPTS = sorted(p.relative_to(ROOT) for d in ("launch", "benchmarks") for p in (ROOT / d).glob("*.sh")
                     if not p.name.startswith("_"))


@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=str)
def test_every_script_answers_help_without_doing_work(script, tmp_path):
  """`--help` prints the usage and exits 0 before any set-up or training starts."""
  p = subprocess.run(["bash", str(ROOT / script), "--help"], cwd=tmp_path, capture_output=True,
                     text=True, timeout=30, env=ENV)
  assert p.returncode == 0, p.stderr
  assert len(p.stdout.strip().splitlines()) >= 1 and "offline_tokenizer" not in p.stdout + p.stderr
  assert not any(tmp_path.iterdir())
