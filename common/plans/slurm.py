"""--launcher slurm: a plan's unfinished members as one Slurm job array, through submitit.

submitit writes the sbatch script (one array task per member, `%` limit from
--slurm-parallel), pickles the call and, on a time-out warning (SIGUSR2, 90 s before the
limit), checkpoints and requeues the task. Each task runs one member under its lock
(common.plans.member). On SIGTERM (preemption, `scancel --signal=TERM`) or SIGUSR2 the member stops
cleanly (last.pth whole, train.json interrupted) and its task is put back in the queue;
the task that runs next resumes it from last.pth. Submitting a plan again submits only the
members that are neither complete nor running.

On a real cluster: the repo, the data folder and the output folder must be on a filesystem
every node sees (the same paths); pick the partition with --slurm-partition and GPUs with
--slurm-gpus; each task's torch threads are its --slurm-cpus.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys

from common import REPO_ROOT, runfolder
from common.cli import resume_command
from common.plans import plan
from common.errors import UserError, first_line
from common.plans.member import run_alone
from common.stopping import MEMBER_SIGNALS, Stopped, stop_on_signals

try:
    from submitit.helpers import Checkpointable
except ImportError:  # submit() says how to install it
    Checkpointable = object


class SlurmMember(Checkpointable):
    """What one array task runs: a member, then (when a signal stopped it) a requeue through submitit,
    unless Slurm is ending the job itself (scancel: a cancel is a cancel)."""

    def __call__(self, plan_dir: str, member_id: str) -> str:
        submitit_requeue = signal.getsignal(signal.SIGUSR2)  # submitit's checkpoint-and-requeue handler
        stop_on_signals(MEMBER_SIGNALS)
        decision = {}

        def when_stopped() -> str:
            decision["no_requeue"] = why_not_requeue(plan_dir)
            return "; back in the queue" if decision["no_requeue"] is None else f"; not requeued: {decision['no_requeue']}"

        try:
            return run_alone(plan_dir, member_id, when_stopped=when_stopped).status
        except Stopped:
            if decision.get("no_requeue") is None:
                requeue(submitit_requeue)
            raise


def job_state(job_id: str) -> str | None:
    """The job's state as Slurm's controller has it now (RUNNING, COMPLETING, CANCELLED ...), None if unknown."""
    try:
        result = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    states = result.stdout.split()
    return states[0] if result.returncode == 0 and states else None


def why_not_requeue(plan_dir: str) -> str | None:
    """None if this task should put itself back in the queue; else why not, in words for its log.

    A stop signal to a job that Slurm still runs (a preemption notice, `scancel --signal`, the
    time-out warning) is a requeue; one that comes with Slurm ending the job (`scancel`, which
    marks it CANCELLED or COMPLETING first) is not. Unknown (no answer from Slurm): requeue."""
    state = job_state(os.environ.get("SLURM_JOB_ID", ""))
    if state not in (None, "RUNNING", "PREEMPTED", "SUSPENDED"):
        return f"Slurm is ending the job (state {state}: a scancel, or a preemption that Slurm requeues itself)"
    try:
        import submitit

        pickle = submitit.JobEnvironment().paths.submitted_pickle
    except (ImportError, RuntimeError):
        return None
    if not os.path.isfile(pickle):
        return (f"its Slurm folder is gone ({os.path.dirname(pickle)}; submitit needs it to restart the task); "
                f"continue the plan with: {resume_command(plan.read_plan(plan_dir).experiment, plan_dir)}")
    return None


def requeue(submitit_requeue) -> None:
    """Put this task back in the queue (submitit: scontrol requeue) and exit; a task that Slurm is
    requeueing already (scontrol requeue, preemption) makes scontrol fail, which is fine."""
    if not callable(submitit_requeue):
        job = f"{os.environ.get('SLURM_ARRAY_JOB_ID')}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
        subprocess.run(["scontrol", "requeue", job], check=False, timeout=60)
        sys.exit(-1)
    try:
        submitit_requeue(signal.SIGUSR2, None)  # checkpoints, requeues, exits
    except subprocess.CalledProcessError:
        sys.exit(-1)


def submit(the_plan: plan.Plan, members: list) -> list:
    """The Slurm executor: submit `members` but those still in Slurm's queue; print the job id and the
    commands to watch, resume and compare; their Outcomes (QUEUED)."""
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher slurm needs submitit: pip install submitit") from None
    if shutil.which("sbatch") is None:
        raise UserError("--launcher slurm: no sbatch on PATH; run the command on a Slurm login node")
    queued = queued_members(the_plan)
    todo = [m for m in members if m.id not in queued]
    if not todo:
        print(f"{the_plan.name}: nothing left to submit (every member is complete, running or in the queue)")
        return []
    executor = submitit.AutoExecutor(folder=os.path.join(the_plan.folder, "slurm", "%j"), cluster="slurm")
    executor.update_parameters(**slurm_parameters(the_plan, len(todo)))
    try:
        jobs = executor.map_array(SlurmMember(), [the_plan.folder] * len(todo), [m.id for m in todo])
    except (subprocess.CalledProcessError, OSError, RuntimeError) as e:
        raise UserError(f"sbatch refused the plan: {first_line(e)}") from None
    array = jobs[0].job_id.split("_")[0]
    record_jobs(the_plan, {m.id: job.job_id for m, job in zip(todo, jobs)})
    folder = shlex.quote(the_plan.folder)
    print(f"submitted {len(todo)} member(s) of {the_plan.name} as Slurm job array {array}\n"
          f"  watch:   squeue -j {array}   |   python -m common.plans {folder}   |   tail -f {folder}/"
          f"{shlex.quote(todo[0].id)}/log.txt\n"
          f"  resume:  {resume_command(the_plan.experiment, the_plan.folder)}   (submits only what is left)\n"
          f"  compare: python -m common.compare {folder}", flush=True)
    return [plan.Outcome(m, runfolder.QUEUED) for m in todo]


def queued_members(the_plan: plan.Plan) -> dict:
    """{member id: Slurm state} of the members whose array task is still in Slurm's queue (pending,
    requeued, running), from the job ids sweep.json keeps: submitting them again would train them twice."""
    jobs = the_plan.launcher.get("slurm_jobs") or {}
    if not jobs:
        return {}
    arrays = sorted({job.split("_")[0] for job in jobs.values()})
    try:
        result = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i %T"], capture_output=True,
                                text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"cannot ask Slurm which members are still queued (squeue: {first_line(e)})") from None
    states = dict(line.split()[:2] for line in result.stdout.splitlines() if len(line.split()) >= 2)
    return {member: states[job] for member, job in jobs.items() if job in states}


def record_jobs(the_plan: plan.Plan, submitted: dict) -> None:
    """sweep.json remembers each member's array task, so the next submission skips those still queued."""
    jobs = {**(the_plan.launcher.get("slurm_jobs") or {}), **submitted}
    the_plan.launcher["slurm_jobs"] = jobs
    plan.write_plan(the_plan, plan.statuses(the_plan))


def slurm_parameters(the_plan: plan.Plan, tasks: int) -> dict:
    settings = the_plan.launcher
    params = {"name": f"{the_plan.experiment}.{the_plan.name}", "timeout_min": settings["slurm_time"],
              "cpus_per_task": settings["slurm_cpus"], "tasks_per_node": 1, "nodes": 1,
              "slurm_array_parallelism": settings["slurm_parallel"] or tasks,
              # the task imports common/ from this checkout, wherever sbatch starts it
              "slurm_setup": [f"export PYTHONPATH={shlex.quote(REPO_ROOT)}${{PYTHONPATH:+:$PYTHONPATH}}",
                              f"export OMP_NUM_THREADS={settings['slurm_cpus']}"]}
    if settings["slurm_gpus"]:
        params["gpus_per_node"] = settings["slurm_gpus"]
    if settings["slurm_partition"]:
        params["slurm_partition"] = settings["slurm_partition"]
    return params
