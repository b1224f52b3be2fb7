"""How untrusted code runs: bubblewrap namespaces, an unprivileged uid, cgroups, rlimits, seccomp."""

from interpreter.sandbox.job import SandboxJob, SandboxOutcome
from interpreter.sandbox.runner import SandboxProcess, SandboxRunner

__all__ = ["SandboxJob", "SandboxOutcome", "SandboxProcess", "SandboxRunner"]
