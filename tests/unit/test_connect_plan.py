"""The connect plan: what every connect() of one URL does alike, made once (pure parts)."""

from __future__ import annotations

from typing import Any, cast

from sqlrouter.connection import ConnectPlan
from sqlrouter.url import parse_url


def test_a_connect_plan_shows_no_password() -> None:
    url = parse_url("sqlrouter://app:s3cr%40t@shop/shopdb?qos=RO_RELAXED&registry=/x.toml")
    plan = ConnectPlan.make(url, cast(Any, object()))
    assert plan.args["password"] == "s3cr@t"
    assert "s3cr@t" not in repr(plan)
    assert "s3cr" not in repr(plan)


def test_a_connect_plan_completes_the_drivers_keywords() -> None:
    writer = ConnectPlan.make(
        parse_url("sqlrouter://app:pw@shop/shopdb?qos=RW_STRICT&registry=/x.toml"),
        cast(Any, object()),
    )
    reader = ConnectPlan.make(
        parse_url("sqlrouter://app:pw@shop/shopdb?qos=RO_RELAXED&registry=/x.toml"),
        cast(Any, object()),
    )
    # Only a writer asks for session-state tracking (the GTID in OK packets).
    assert writer.args.get("client_flag", 0) and not reader.args.get("client_flag", 0)
    assert not writer.relaxed and reader.relaxed
    assert reader.own_or_current_session
    assert reader.args["defer_connect"] is True
