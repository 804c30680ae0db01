"""Training faults: a kill mid checkpoint write, a second job on a run folder, a killed launcher, and every config
training and resuming (docs/training.md, "What a killed or doubled run leaves")."""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import pytest

from imagen_app.training.checkpoints import (CHECKPOINT, LOCK, RunFolderInUse, RunFolderLock, read_checkpoint,
                                             read_checkpoint_step)
from imagen_app.training.config import TrainConfig
from imagen_app.training.train import train
import test_train
from test_train import ROOT, config, config_files

text_encoder_dir, image_folder = test_train.text_encoder_dir, test_train.image_folder  # test_train's fixtures

ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def wait_for(condition, timeout: float, what: str, poll: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def checkpoint_step(run_dir) -> int:
    path = os.path.join(run_dir, CHECKPOINT)
    try:
        return read_checkpoint_step(path)
    except Exception:  # not there yet
        return -1


def start_training(cfg, tmp_path, log_name="train.log", launcher=()):
    """`python -m imagen_app train` on `cfg` in a session of its own (stdout and stderr in tmp_path/log_name)."""
    cfg_path = tmp_path / (log_name + ".json")
    cfg_path.write_text(json.dumps(asdict(cfg)))
    out = open(tmp_path / log_name, "w")
    cmd = [*launcher] if launcher else [sys.executable]
    proc = subprocess.Popen([*cmd, "-m", "imagen_app", "train", str(cfg_path)], stdout=out, stderr=subprocess.STDOUT,
                            env=ENV, start_new_session=True)
    out.close()
    return proc


def stop_session(proc):
    """Kills what is left of a process started by start_training (its session: the launcher and its workers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# --- a kill at the start of a checkpoint write ------------------------------------------------------------------

def test_stale_temp_files_of_a_killed_checkpoint_write_are_removed(tmp_path, text_encoder_dir, image_folder):
    """safetensors writes through a hidden `.tmpXXXXXX` in the run folder, sized to the whole checkpoint before a
    byte is written: a kill there leaves it, zero-filled (about 200 MB for the base stage)."""
    cfg = config(tmp_path, text_encoder_dir, image_folder, max_steps=2)
    os.makedirs(cfg.run_dir)
    stale = [".tmpzPEL9M", "checkpoint.safetensors.tmp"]
    kept = [".tmpnotes", "notes.tmp", ".tmpAbC12345", "x.tmpabcdef"]  # not the writer's names: left alone
    for name in stale:
        with open(os.path.join(cfg.run_dir, name), "wb") as f:
            f.truncate(3_000_000)
    for name in kept:
        open(os.path.join(cfg.run_dir, name), "w").close()
    os.makedirs(os.path.join(cfg.run_dir, "sub"))
    open(os.path.join(cfg.run_dir, "sub", ".tmpAbCd12"), "w").close()  # only the run folder itself
    logs = []
    assert train(cfg, log=logs.append) == 2
    removed = [m for m in logs if m.startswith("removed the temporary files")]
    assert removed == [f"removed the temporary files of an interrupted checkpoint write from {cfg.run_dir}: "
                       ".tmpzPEL9M (3.0 MB), checkpoint.safetensors.tmp (3.0 MB)"]
    assert sorted(os.listdir(cfg.run_dir)) == sorted([LOCK, CHECKPOINT, "config.json", "sub"] + kept)
    assert os.listdir(os.path.join(cfg.run_dir, "sub")) == [".tmpAbCd12"]
    assert read_checkpoint(os.path.join(cfg.run_dir, CHECKPOINT))["step"] == 2  # intact

    # and when a run resumes
    with open(os.path.join(cfg.run_dir, ".tmpQ1w2E3"), "wb") as f:
        f.truncate(1_000_000)
    cfg.max_steps = 3
    logs = []
    assert train(cfg, log=logs.append) == 3
    assert any("resumed from" in m and "at step 2" in m for m in logs)
    assert any(m.endswith(": .tmpQ1w2E3 (1.0 MB)") for m in logs)
    assert not os.path.exists(os.path.join(cfg.run_dir, ".tmpQ1w2E3"))
    assert read_checkpoint(os.path.join(cfg.run_dir, CHECKPOINT))["step"] == 3


# --- one job per run folder -------------------------------------------------------------------------------------

def test_a_second_job_on_a_held_run_folder_fails_at_once(tmp_path, text_encoder_dir, image_folder):
    from imagen_app.cli import main

    cfg = config(tmp_path, text_encoder_dir, image_folder, max_steps=100_000, checkpoint_every=2)
    first = start_training(cfg, tmp_path)
    try:
        wait_for(lambda: checkpoint_step(cfg.run_dir) >= 2, 240, "the first job's checkpoint")
        with open(os.path.join(cfg.run_dir, LOCK)) as f:
            assert f.read().strip() == str(first.pid)
        before = {name: os.stat(os.path.join(cfg.run_dir, name)).st_mtime_ns for name in ("config.json",)}
        second = config(tmp_path, text_encoder_dir, image_folder, max_steps=100_000, checkpoint_every=1, lr=0.5)
        logs = []
        t0 = time.time()
        with pytest.raises(RunFolderInUse) as error:
            train(second, log=logs.append)
        assert time.time() - t0 < 10  # before the text encoder, the data, the model
        assert str(error.value) == f"{cfg.run_dir} is in use by another training job (pid {first.pid}); stop it first"
        assert not any("training images" in m for m in logs)
        assert {name: os.stat(os.path.join(cfg.run_dir, name)).st_mtime_ns for name in before} == before
        # the command line: the message, and exit status 2
        cfg_path = tmp_path / "second.json"
        cfg_path.write_text(json.dumps(asdict(second)))
        assert main(["train", str(cfg_path)]) == 2

        first.send_signal(signal.SIGTERM)  # the first job checkpoints the step it reached and exits
        assert first.wait(timeout=120) == 0
    finally:
        stop_session(first)
    log = (tmp_path / "train.log").read_text()
    assert "stopped at step" in log
    stopped = checkpoint_step(cfg.run_dir)
    assert f"stopped at step {stopped}:" in log
    with open(os.path.join(cfg.run_dir, LOCK)) as f:
        assert f.read() == ""  # released: no stale pid
    # once the first job is gone, a new one resumes where it stopped
    cfg.max_steps = stopped + 1
    logs = []
    assert train(cfg, log=logs.append) == stopped + 1
    assert any(f"at step {stopped}" in m and "resumed" in m for m in logs)


def test_the_lock_of_a_dead_process_does_not_block(tmp_path):
    """flock: the kernel drops a process's lock when it dies, however it dies."""
    run_dir = str(tmp_path / "run")
    code = ("import sys, time; from imagen_app.training.checkpoints import RunFolderLock; "
            f"lock = RunFolderLock({run_dir!r}); print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderInUse, match=rf"is in use by another training job \(pid {holder.pid}\)"):
            RunFolderLock(run_dir)
    finally:
        holder.kill()
        holder.wait()
    lock = RunFolderLock(run_dir)  # the pid in the file is stale, the lock is not
    with open(os.path.join(run_dir, LOCK)) as f:
        assert f.read().strip() == str(os.getpid())
    with pytest.raises(RunFolderInUse):  # another open file of the same process conflicts too
        RunFolderLock(run_dir)
    lock.release()
    RunFolderLock(run_dir).release()


def test_without_file_locks_a_run_goes_on_unlocked_and_keeps_temp_files(tmp_path, monkeypatch):
    import errno
    import fcntl
    from types import SimpleNamespace

    from imagen_app.training.checkpoints import claim_run_folder

    def no_locks(*_):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    (tmp_path / ".tmpzPEL9M").write_bytes(b"")
    logs = []
    lock = claim_run_folder(str(tmp_path), SimpleNamespace(is_main_process=True, num_processes=1), logs.append)
    assert not lock.held and logs == [f"could not lock {tmp_path / LOCK} ([Errno {errno.ENOLCK}] No locks available): "
                                      "nothing stops a second job on this run folder, and temporary files of "
                                      "interrupted checkpoint writes are left in place"]
    assert (tmp_path / ".tmpzPEL9M").exists()  # another job's write in progress, as far as this one can tell
    lock.release()


# --- workers stop with their launcher ---------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["prctl", "watchdog"])
def test_a_launched_process_gets_sigterm_when_its_launcher_dies(how, tmp_path):
    """The mechanism alone: a 'launcher' starts a worker (RANK set) that calls stop_with_launcher(), and is killed.
    The watchdog (a thread polling the parent pid) is what other systems than Linux get."""
    if how == "prctl" and not sys.platform.startswith("linux"):
        pytest.skip("prctl is Linux's")
    marker = tmp_path / "terminated"
    worker = ("import signal, sys, time; from imagen_app.training.distributed import stop_with_launcher; "
              f"signal.signal(signal.SIGTERM, lambda *_: (open({str(marker)!r}, 'w').write('yes'), sys.exit(0))); "
              + ("sys.platform = 'other'; " if how == "watchdog" else "")
              + "print(stop_with_launcher(poll_s=0.1), flush=True); time.sleep(60)")
    launcher = ("import subprocess, sys, time; "
                f"w = subprocess.Popen([sys.executable, '-c', {worker!r}]); print(w.pid, flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, text=True,
                            env=dict(ENV, RANK="0", LOCAL_RANK="0"))
    worker_pid = int(proc.stdout.readline())
    try:
        assert proc.stdout.readline().strip() == how
        proc.kill()  # SIGKILL: the launcher cannot pass anything on
        proc.wait()
        wait_for(marker.exists, 30, "the worker's SIGTERM")
        wait_for(lambda: not alive(worker_pid), 30, "the worker's exit")
    finally:
        if alive(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def children(pid: int):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers in /proc")
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_killing_the_launcher_stops_its_workers_with_a_checkpoint(launcher, tmp_path, text_encoder_dir, image_folder):
    from conftest import free_port

    unet = dict(config(tmp_path, text_encoder_dir, image_folder).unet, self_attention_levels=[False, False])
    cfg = config(tmp_path, text_encoder_dir, image_folder, max_steps=100_000, checkpoint_every=2, unet=unet)
    port = str(free_port())
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", port]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port]
    proc = start_training(cfg, tmp_path, launcher=cmd)
    workers = []
    try:
        wait_for(lambda: checkpoint_step(cfg.run_dir) >= 2, 240, "the first checkpoint")
        workers = children(proc.pid)
        assert len(workers) == 2, workers
        proc.kill()  # SIGKILL the launcher alone: it cannot pass anything on
        proc.wait()
        wait_for(lambda: not any(alive(w) for w in workers), 60, "the workers' exit")
    finally:
        stop_session(proc)
        for pid in workers:  # the launchers start each worker in a session of its own
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    log = (tmp_path / "train.log").read_text()
    stopped = checkpoint_step(cfg.run_dir)
    assert f"stopped at step {stopped}:" in log, log[-3000:]  # the workers checkpointed the step they reached
    assert len(read_checkpoint(os.path.join(cfg.run_dir, CHECKPOINT))["rng"]) == 2
    cfg.max_steps = stopped + 1  # and the folder is free: a new job resumes there
    logs = []
    assert train(cfg, log=logs.append) == stopped + 1
    assert any(f"at step {stopped}" in m and "resumed" in m for m in logs)


# --- every config trains and resumes ----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", config_files())
def test_every_config_trains_two_steps_and_resumes_from_its_checkpoint(name, tmp_path, monkeypatch):
    """The config as it is (its U-Net, data, text encoder, schedule, init_from), at batch 2 and 1 thread: 2 steps,
    then a resume to step 3 from its own checkpoint. Configs whose data or text encoder a clean clone lacks (written
    under runs/, an ignored folder, even where this checkout has them) or that use mixed precision are skipped."""
    monkeypatch.chdir(ROOT)
    cfg = TrainConfig.load(name, run_dir=str(tmp_path / "run"), max_steps=2, batch_size=2, threads=1)
    for what, path in (("data", cfg.data), ("text encoder", cfg.text_encoder), ("init_from", cfg.init_from)):
        if path and path != "emoji" and (not os.path.exists(path) or os.path.normpath(path).split(os.sep)[0] == "runs"):
            pytest.skip(f"its {what} {path} is not in a clean clone")
    if cfg.mixed_precision != "no":  # accelerate fixes it per process; bf16 on the CPU: test_train's bf16 test
        pytest.skip(f"mixed precision {cfg.mixed_precision}: another process's accelerate state")
    logs = []
    assert train(cfg, log=logs.append) == 2
    assert any(f"starting from the exported stage {cfg.init_from}" in m for m in logs) == bool(cfg.init_from)
    cfg.max_steps = 3
    logs = []
    assert train(cfg, log=logs.append) == 3
    assert any(m == f"resumed from {os.path.join(cfg.run_dir, CHECKPOINT)} at step 2" for m in logs), logs
    assert not any("starting from the exported stage" in m for m in logs)
    assert read_checkpoint_step(os.path.join(cfg.run_dir, CHECKPOINT)) == 3
