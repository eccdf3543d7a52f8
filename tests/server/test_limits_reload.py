"""A reload (SIGHUP, `atp reload`) re-reads [[limits]] from the config file: new limits in force at
once, a bad file refused with the key at fault and the old limits kept, budget changes made through
the admin API laid over the reloaded limits again."""
import asyncio

from atp_server import config
from atp_server.app import App
from atp_server.types import AtpError, ChatRequest

from .limits_helpers import PRINCIPAL, limits_toml


def _app(tmp_path, limits: str):
    path = tmp_path / "atp.toml"
    path.write_text(limits_toml(tmp_path, limits))
    app = App(config.load(path))
    app.config_path = str(path)        # as `atp serve --config` sets it
    return app, path


async def _try(app) -> str:
    try:
        await app.pipeline.complete(ChatRequest([("user", "hi")], model="cheap"), PRINCIPAL, "t")
        return "ok"
    except AtpError as exc:
        return exc.code.name


def test_a_reload_puts_the_files_new_limits_in_force_and_drops_removed_ones(tmp_path):
    async def main():
        app, path = _app(tmp_path, '[[limits]]\nname = "wide"\nrequests_per_min = 100\n')
        before = [await _try(app), await _try(app)]
        path.write_text(limits_toml(tmp_path, '[[limits]]\nname = "wide"\nrequests_per_min = 100\n'
                                              '[[limits]]\nname = "narrow"\nrequests_per_min = 1\n'))
        added = app.reloader.reload()
        narrowed = [await _try(app), await _try(app)]
        path.write_text(limits_toml(tmp_path, '[[limits]]\nname = "wide"\nrequests_per_min = 100\n'))
        removed = app.reloader.reload()
        widened = [await _try(app), await _try(app)]
        names = [r.name for r in app.limit_stage.rules]
        await app.stop(0)
        return before, added, narrowed, removed, widened, names
    before, added, narrowed, removed, widened, names = asyncio.run(main())
    assert before == ["ok", "ok"]
    assert added and narrowed == ["ok", "RATE_LIMITED"]     # the new rule counts from the reload
    assert removed and widened == ["ok", "ok"] and names == ["wide"]


def test_a_bad_file_is_refused_naming_the_key_and_the_old_limits_stay(tmp_path):
    async def main():
        app, path = _app(tmp_path, '[[limits]]\nname = "rpm"\nrequests_per_min = 1\n')
        path.write_text(limits_toml(tmp_path, '[[limits]]\nname = "rpm"\nrequests_per_mni = 100\n'))
        ok = app.reloader.reload()
        error = app.reloader.last_error
        got = [await _try(app), await _try(app)]
        await app.stop(0)
        return ok, error, got
    ok, error, got = asyncio.run(main())
    assert not ok and error.startswith("limits: ") and "limits[0]" in error and "requests_per_mni" in error
    assert got == ["ok", "RATE_LIMITED"]          # still one a minute


def test_limits_added_to_a_server_started_without_them_need_a_restart(tmp_path):
    async def main():
        app, path = _app(tmp_path, "")
        path.write_text(limits_toml(tmp_path, '[[limits]]\nname = "rpm"\nrequests_per_min = 1\n'))
        ok = app.reloader.reload()
        await app.stop(0)
        return ok, app.reloader.last_error
    ok, error = asyncio.run(main())
    assert not ok and "restart" in error


def test_an_admin_budget_change_is_laid_over_the_reloaded_limits(tmp_path):
    async def main():
        app, path = _app(tmp_path, '[[limits]]\nname = "rpm"\nrequests_per_min = 1\n'
                                   '[[limits]]\nname = "money"\nusd_per_day = 5.0\n')
        admin = app.service.admin
        (tmp_path / "admin.json").write_text('{"budgets": {"money": {"usd_per_day": 9.0}}}')
        path.write_text(limits_toml(tmp_path, '[[limits]]\nname = "rpm"\nrequests_per_min = 7\n'
                                              '[[limits]]\nname = "money"\nusd_per_day = 5.0\n'))
        ok = app.reloader.reload()
        rules = {r.name: r for r in app.limit_stage.rules}
        await app.stop(0)
        return ok, rules
    ok, rules = asyncio.run(main())
    assert ok and rules["rpm"].requests_per_min == 7 and rules["money"].usd_per_day == 9.0
