"""DESIGN §1: no module talks to Redis except atp_server/state/redis.py (checked on every import)."""
import pathlib

from tests.test_layering import imports

ROOT = pathlib.Path(__file__).parents[2]
THE_ONE = ROOT / "atp_server" / "state" / "redis.py"


def test_only_state_redis_imports_redis():
    offenders = [f"{path.relative_to(ROOT)}:{line}"
                 for path in sorted((ROOT / "atp_server").rglob("*.py")) if path != THE_ONE
                 for line, module in imports(path) if module == "redis"]
    assert offenders == []
    assert any(module == "redis" for _, module in imports(THE_ONE))   # the check sees imports
