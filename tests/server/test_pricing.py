"""The pricing catalogue: dated entries, cached-input and per-request prices, currencies, config errors."""
import pytest

from atp_server import config
from atp_server.accounting import Accountant
from atp_server.pricing import Price, PriceBook
from atp_server.routing.spec import ModelSpec
from atp_server.types import ChatRequest, Finish

from .helpers import make_config

M = ModelSpec("m", "p", "up", price_in_per_mtok=1.0, price_out_per_mtok=2.0)


def day(iso: str) -> int:
    return Price("m", effective=iso).effective_day


def test_the_newest_entry_not_in_the_future_applies_and_the_list_price_before_any():
    book = PriceBook([M], [Price("m", 5.0, 6.0, effective="2026-06-01"), Price("m", 3.0, 4.0, effective="2026-01-01")])
    assert book.price("m", day("2025-12-31")) == Price("m", 1.0, 2.0)        # the [[models]] list price
    assert book.price("m", day("2026-01-01")).input_per_mtok == 3.0
    assert book.price("m", day("2026-05-31")).input_per_mtok == 3.0
    assert book.price("m", day("2030-01-01")).input_per_mtok == 5.0


def test_cost_counts_cached_input_the_request_fee_and_the_exchange_rate():
    p = Price("m", input_per_mtok=2.0, output_per_mtok=8.0, cached_input_per_mtok=0.5, request_fee=0.001)
    # 600 uncached x 2 + 400 cached x 0.5 + 100 out x 8 + 1000 micros fee
    assert p.cost_micros(1000, 100, 400) == 1200 + 200 + 800 + 1000
    assert Price("m", 2.0).cost_micros(1000, 0, 400) == 2000            # no cached price: the input price
    assert Price("m", 1.0, currency="EUR", usd_per_unit=1.25).cost_micros(1000, 0) == 1250


def test_accountant_prices_with_the_book_and_bills_a_cut_stream_as_estimated():
    acct = Accountant(PriceBook([M], [Price("m", 10.0, 20.0)]))
    req = ChatRequest([("user", "x" * 40)])
    assert acct.usage(M, req, Finish("stop", 100, 10), 0).cost_usd_micros == 100 * 10 + 10 * 20
    cut = acct.delivered(M, req, 7)
    assert (cut.input_tokens, cut.output_tokens, cut.estimated, cut.cost_usd_micros) == (10, 7, True, 240)


def test_pricing_from_config(tmp_path):
    cfg = make_config(tmp_path, models=MODELS + """
[[pricing]]
model = "cheap"
input_per_mtok = 0.05
output_per_mtok = 0.1
cached_input_per_mtok = 0.01
request_fee = 0.0001
effective = 2026-01-01
""")
    (p,) = cfg.pricing
    assert (p.model, p.effective, p.cached_input_per_mtok, p.request_fee) == ("cheap", "2026-01-01", 0.01, 0.0001)


MODELS = """
[[models]]
id = "cheap"
provider = "sim"
"""


@pytest.mark.parametrize("entry, key", [
    ('model = "nope"', "pricing[0].model"),
    ('model = "cheap"\ninput_per_mtok = -1', "pricing[0].input_per_mtok"),
    ('model = "cheap"\ncurrency = "EUR"', "pricing[0].usd_per_unit"),
    ('model = "cheap"\ncurrency = "euro"', "pricing[0].currency"),
    ('model = "cheap"\neffective = "soon"', "pricing[0].effective"),
    ('model = "cheap"\ninput_per_mtok = "cheap"', "pricing[0].input_per_mtok"),
    ('model = "cheap"\nprice = 1', "pricing[0].price"),
])
def test_bad_pricing_names_the_key(tmp_path, entry, key):
    with pytest.raises(config.ConfigError) as info:
        make_config(tmp_path, models=MODELS + "\n[[pricing]]\n" + entry + "\n")
    assert str(info.value).startswith(key)


def test_two_entries_for_one_day_are_refused(tmp_path):
    twice = '\n[[pricing]]\nmodel = "cheap"\neffective = "2026-01-01"\n'
    with pytest.raises(config.ConfigError, match="^pricing: two entries"):
        make_config(tmp_path, models=MODELS + twice + twice)
