"""What runs next: the policy (policy.py, pure), the use it weighs (usage.py, read from `job_runs`), and the claim
that applies it in one transaction (claim.py). docs/scheduling.md explains the policy with a worked example."""
