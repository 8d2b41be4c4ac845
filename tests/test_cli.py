"""The command line for a newcomer (issue #31): every option explains itself, actions are named as the outputs
print them, and outputs land in ``xdreamer-out/`` of the current folder, never beside the code.

The commands run in-process through ``xdreamer.cli.main`` on the bundled ``checkpoints/catch-lanes`` (actions
NOOP, LEFT, RIGHT) with a 2-step horizon, so each call takes a second or two.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import pytest

from xdreamer.cli import build_parser, main

REPO = pathlib.Path(__file__).resolve().parent.parent
CATCH = str(REPO / "checkpoints" / "catch-lanes")
COMMANDS = {"train", "eval", "bench", "bundle", "record", "whatif", "highlights", "saliency", "report", "app"}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = sub
                found.update({f"{name} {k}": v for k, v in _subcommands(sub).items()})
    return found


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("xdreamer: error: "), err
    return lines[0]


def test_every_option_has_help():
    parser = build_parser()
    commands = _subcommands(parser)
    assert COMMANDS <= set(commands), sorted(commands)
    missing = [f"{name} {'/'.join(action.option_strings)}"
               for name, sub in [("xdreamer", parser), *commands.items()] for action in sub._actions
               if action.option_strings and not isinstance(action, argparse._HelpAction)
               and (not action.help or not action.help.strip() or action.help == argparse.SUPPRESS)]
    assert not missing, f"options without help: {', '.join(missing)}"
    for sub in commands.values():
        sub.format_help()  # a stray % in a help text fails only here


def test_whatif_actions_take_names_any_case(tmp_path, capsys):
    out = tmp_path / "w.json"
    code, stdout, err = _run(capsys, "whatif", CATCH, "--seed", "0", "--step", "1", "--horizon", "2",
                             "--actions", "NOOP", "left", "2", "--json", str(out), "--no-progress")
    assert code == 0, err
    dream = json.loads(out.read_text())["dream"]
    assert dream["first_actions"] == [0, 1, 2]
    for name in ("NOOP", "LEFT", "RIGHT"):  # the same names in the printed table
        assert name in stdout


@pytest.mark.parametrize("option, value, match", [
    ("--actions", "JUMP", "--actions: unknown action 'JUMP'; valid actions: NOOP, LEFT, RIGHT"),
    ("--actions", "3", "--actions: action 3 is out of range; valid actions: NOOP, LEFT, RIGHT"),
    ("--alternatives", "up", "--alternatives: unknown action 'up'; valid actions: NOOP, LEFT, RIGHT"),
])
def test_whatif_unknown_action_is_one_line(tmp_path, capsys, option, value, match):
    code, _, err = _run(capsys, "whatif", CATCH, "--seed", "0", "--step", "1", "--horizon", "2", option, value,
                        "--json", str(tmp_path / "w.json"), "--no-progress")
    assert code == 2
    assert match in _one_error_line(err)
    assert not (tmp_path / "w.json").exists()


def test_saliency_action_takes_names(tmp_path, capsys):
    record = tmp_path / "s.json"
    code, _, err = _run(capsys, "saliency", CATCH, "--seed", "0", "--step", "1", "--method", "saliency",
                        "--action", "Right", "--out", str(tmp_path / "s.png"), "--json", str(record))
    assert code == 0, err
    data = json.loads(record.read_text())
    assert data["action"] == 2 and data["action_name"] == "RIGHT"
    code, _, err = _run(capsys, "saliency", CATCH, "--seed", "0", "--step", "1", "--method", "saliency",
                        "--action", "FIRE", "--out", str(tmp_path / "s.png"))
    assert code == 2 and "--action: unknown action 'FIRE'; valid actions: NOOP, LEFT, RIGHT" in _one_error_line(err)


def test_default_outputs_go_to_xdreamer_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, "record", CATCH, "--max-steps", "3", "--no-progress")
    assert code == 0, err
    assert (tmp_path / "xdreamer-out" / "trace.npz").is_file() and "wrote xdreamer-out/trace.npz" in out
    code, out, err = _run(capsys, "eval", CATCH, "--episodes", "1", "--no-progress")
    assert code == 0, err
    assert (tmp_path / "xdreamer-out" / "eval-catch-lanes-mode-seed0.json").is_file()
    assert "wrote xdreamer-out/eval-catch-lanes-mode-seed0.json" in out
    code, out, err = _run(capsys, "saliency", CATCH, "--trace", "xdreamer-out/trace.npz", "--step", "1",
                          "--method", "saliency")
    assert code == 0, err
    assert (tmp_path / "xdreamer-out" / "saliency-step1-saliency-action.png").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["xdreamer-out"]  # nothing beside it
    bench = build_parser().parse_args(["bench"])
    assert bench.out == "xdreamer-out/bench.json"


def test_default_output_folder_is_checked_before_the_work(tmp_path, monkeypatch, capsys):
    """#28's output check sees the new default: a file named xdreamer-out is one line, before recording."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "xdreamer-out").write_text("not a folder")
    code, _, err = _run(capsys, "record", CATCH, "--no-progress")
    assert code == 2 and "is not a folder" in _one_error_line(err)
    code, out, err = _run(capsys, "eval", CATCH, "--episodes", "1", "--no-progress")
    assert code == 2 and "is not a folder" in _one_error_line(err) and "return" not in out  # before the episodes


def test_record_objects_stores_effects_and_refuses_what_it_cannot(tmp_path, capsys):
    """``record --objects`` (#27 item 2 per step): the trace gets effect_<object> columns; bad uses are one line,
    before any episode is run."""
    from xdreamer.explain import load_trace

    out = tmp_path / "t.npz"
    code, stdout, err = _run(capsys, "record", CATCH, "--max-steps", "10", "--objects", "--out", str(out),
                             "--no-progress")
    assert code == 0, err
    assert "object effects" in stdout and "ball" in stdout
    trace = load_trace(out)
    assert {"effect_ball", "effect_paddle"} <= set(trace.table.columns)
    assert trace.meta["object_effects"]["k"] == 0
    every = tmp_path / "every.npz"
    code, stdout, err = _run(capsys, "record", CATCH, "--max-steps", "10", "--objects", "--objects-every", "3",
                             "--out", str(every), "--no-progress")
    assert code == 0, err
    trace = load_trace(every)
    assert trace.arrays["object_steps"].tolist() == [0, 3, 6, 9] and trace.meta["object_effects"]["every"] == 3
    for args, match in ((["--objects-k", "2"], "give --objects too"),
                        (["--objects", "--objects-k", "-1"], "--objects-k must be >= 0"),
                        (["--objects-every", "2"], "give --objects too"),
                        (["--objects", "--objects-every", "0"], "--objects-every must be >= 1")):
        code, stdout, err = _run(capsys, "record", CATCH, "--max-steps", "3", *args, "--out",
                                 str(tmp_path / "u.npz"), "--no-progress")
        assert code == 2 and match in _one_error_line(err) and "recorded" not in stdout
    pendulum = str(REPO / "checkpoints" / "pendulum-dreamerv1")
    code, stdout, err = _run(capsys, "record", pendulum, "--max-steps", "3", "--objects", "--out",
                             str(tmp_path / "u.npz"), "--no-progress")
    assert code == 2 and "object editor" in _one_error_line(err) and "recorded" not in stdout
    assert not (tmp_path / "u.npz").exists()
