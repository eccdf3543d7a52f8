"""bench/state_nonces.py: both paths run against a private redis-server and report a time each."""
import argparse

from bench import state_nonces


def test_both_paths_are_measured(capsys):
    parser = argparse.ArgumentParser()
    state_nonces.add_arguments(parser)
    assert state_nonces.main(parser.parse_args(["--number", "20"])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["SET NX PX (before)", "epoch script (now)"]
    assert all(float(line.split()[-4]) > 0 for line in lines)
