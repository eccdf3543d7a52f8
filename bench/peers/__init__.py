"""Peer comparison: ATP vs LiteLLM vs Portkey vs a bare proxy, all in front of one nginx fake upstream.

Entry point: `python -m bench peers --help` (bench/peers/run.py). Everything generated (venvs,
node_modules, configs, logs, nginx temp dirs) lives under bench/.peers/, which is git-ignored.
"""
