"""Plans: a command's runs as members (plan), the plan a command line makes or resumes (command),
the one member runner (member) and the executors that run members, in order in this process
(member.run_inline), as --jobs N local processes (jobs) or as a Slurm job array (slurm).
python -m common.plans PLAN_DIR prints each member's status. Only common.launch imports plans."""
