"""Sharing the CPU (#31, xdreamer/threads.py): OpenMP threads wait passively unless the user chose otherwise, set
before torch loads its OpenMP runtime in every entry point; an explicit thread count wins. No timings here (they
belong to docs/experiments/neighbour.py): these tests pin the policy."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from xdreamer import threads

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("chosen", [{}, {"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "10000"},
                                    {"KMP_BLOCKTIME": "200"}, {"OMP_WAIT_POLICY": ""}])
def test_share_cpu_sets_passive_unless_the_user_chose(chosen):
    environ = {"PATH": "/bin", **chosen}
    threads.share_cpu(environ)
    if any(chosen.values()):
        assert environ == {"PATH": "/bin", **chosen}  # the user's choice stands, nothing added
    else:
        assert environ["OMP_WAIT_POLICY"] == "PASSIVE" and environ["PATH"] == "/bin"


def test_share_cpu_says_when_it_is_too_late_for_this_process():
    """torch is loaded in the test process: its OpenMP runtime has read the environment, so only children
    get the setting, and share_cpu says so."""
    environ: dict[str, str] = {}
    assert "torch" in sys.modules
    assert threads.share_cpu(environ) is False
    assert environ == threads.PASSIVE


def test_the_test_suite_shares_the_cpu():
    """conftest.py calls share_cpu before importing torch: the suite's own process and the CLI and app
    processes it starts (which inherit os.environ) wait passively, unless the user chose a policy."""
    assert any(os.environ.get(k) for k in threads.USER_CHOICES)


# A child process that records OMP_WAIT_POLICY at the moment `torch` is first imported, then runs the CLI.
_SPY = r"""
import os, sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
        return None
sys.meta_path.insert(0, Spy())
from xdreamer.cli import main
code = main(["eval", sys.argv[1], "--episodes", "1", "--no-progress"])
print("torch imported with OMP_WAIT_POLICY =", seen[0] if seen else "torch never imported", "exit", code)
"""


def test_cli_sets_the_wait_policy_before_torch_loads(tmp_path):
    """(That a user's choice wins is test_share_cpu_sets_passive_unless_the_user_chose: the CLI calls the same
    function.)"""
    env = {k: v for k, v in os.environ.items() if k not in threads.USER_CHOICES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", _SPY, str(tmp_path / "missing-run")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert "torch imported with OMP_WAIT_POLICY = PASSIVE exit 2" in out.stdout, out.stdout + out.stderr


def test_app_script_shares_the_cpu_before_its_imports():
    """`streamlit run apps/explainer.py` skips the CLI: the script itself calls share_cpu before it imports
    numpy, streamlit or any xdreamer module that loads torch."""
    body = ast.parse((ROOT / "apps" / "explainer.py").read_text()).body
    call = next(i for i, node in enumerate(body) if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
                and getattr(node.value.func, "id", None) == "share_cpu")
    before = [node for node in body[:call] if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert all(isinstance(n, ast.ImportFrom) and n.module in ("__future__", "xdreamer.threads")
               or isinstance(n, ast.Import) and all(a.name in ("hashlib", "inspect", "pathlib", "tempfile", "time")
                                                    for a in n.names)
               for n in before)


def test_set_threads_explicit_wins_and_zero_keeps_torch_default():
    before = torch.get_num_threads()
    try:
        assert threads.set_threads(0) == before
        assert threads.set_threads(1) == 1 == torch.get_num_threads()
        with pytest.raises(ValueError, match="threads must be >= 0"):
            threads.set_threads(-1)
    finally:
        torch.set_num_threads(before)


def test_report_jobs_run_one_torch_thread_and_restore_it(monkeypatch):
    """Report workers (in-process or Ray tasks, one CPU each) run torch with job.threads (1): no OpenMP team to
    spin, whatever the wait policy; the caller's thread count comes back afterwards, even on error."""
    from xdreamer.report import jobs

    seen = []

    def fail(path, device="cpu"):
        seen.append(torch.get_num_threads())
        raise RuntimeError("stop here")

    monkeypatch.setattr(jobs, "load_agent", fail)
    before = torch.get_num_threads()
    job = jobs.Job(index=(0, 0), checkpoint="x", label="x", episode=0, record_seed=0)
    with pytest.raises(RuntimeError, match="stop here"):
        jobs.run_job(job)
    assert seen == [1] and job.threads == 1 and torch.get_num_threads() == before
