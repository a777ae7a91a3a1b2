"""The metering history inside a disk budget, on real SQLite files: what is written, every table
bounded, and the budget's backstop deleting the oldest history but never what must stay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config.model import StorageConfig
from agent.platform.store import Store
from agent.settlement.history import (
    AGGREGATE_EVERY_S,
    DAY_S,
    HEARTBEAT_S,
    ROLLUP_LAG_S,
    ReadingsBuffer,
    enforce_budget,
    plan_retention,
    prune,
)

pytestmark = pytest.mark.integration

T0 = 1_752_000_000.0 // 900 * 900  # a quarter-hour boundary


def test_the_meter_is_kept_at_poll_rate_devices_on_change_and_minutes_once_closed(tmp_path: Path) -> None:
    s = Store(tmp_path / "h.sqlite")
    buf = ReadingsBuffer(full_rate={"meter"}, deadband_kw={"chiller": 1.0})

    def write(now: float, final: bool = False) -> None:  # as the daemon's flush does
        s.add_batch(*buf.take(now, final), buf.full_rate)

    for t in range(0, 180):
        buf.add("meter", T0 + t, 500.0 + t % 3)
        # The chiller sits at 50 kW with 0.2 kW of noise, then steps to 60 kW at t=120.
        buf.add("chiller", T0 + t, (50.0 if t < 120 else 60.0) + (0.2 if t % 2 else 0.0))
        if t % 10 == 9:
            write(T0 + t + 1)
    raw = dict.fromkeys(["meter", "chiller"], 0)
    for dev, n in s.db.execute("SELECT device, COUNT(*) FROM readings GROUP BY device"):
        raw[dev] = n
    assert raw == {"meter": 180, "chiller": 2}  # its first reading and the step
    # The meter's closed minutes are written at once, the chiller's wait for the batch.
    assert [m for m, _ in s.minute_means("meter", T0, T0 + 600)] == [int(T0 // 60), int(T0 // 60) + 1]
    assert s.others_minute_means("chiller", T0, T0 + 600) == []
    write(T0 + 180 + AGGREGATE_EVERY_S)
    assert [round(kw, 1) for _, kw in s.others_minute_means("chiller", T0, T0 + 600)] == [50.1, 50.1]
    assert s.minute_means("chiller", T0, T0 + 600) == []  # not in the meter's device-first table
    # A stop writes the minutes still open; the rest of a split minute adds to it later.
    write(T0 + 181, final=True)
    for t in range(180, 240):
        buf.add("meter", T0 + t, 500.0)
    write(T0 + 241, final=True)
    assert s.db.execute(
        "SELECT n FROM readings_1m WHERE device='meter' AND minute=?", (int(T0 // 60) + 3,)
    ).fetchone() == (60,)
    assert [round(kw, 1) for _, kw in s.others_minute_means("chiller", T0, T0 + 180)] == [50.1, 50.1, 60.1]
    # The meter's 15-minute means are folded at once, the chiller's once its quarter is over.
    assert s.db.execute("SELECT SUM(n) FROM readings_15m WHERE device='meter'").fetchone() == (240,)
    assert s.db.execute("SELECT SUM(n) FROM readings_15m WHERE device='chiller'").fetchone() == (None,)
    assert s.rollup_quarters(T0 + 900) == 1
    assert s.db.execute("SELECT SUM(n) FROM readings_15m WHERE device='chiller'").fetchone() == (180,)
    assert s.rollup_quarters(T0 + 900) == 0  # never folded twice
    s.close()


def test_other_devices_minutes_are_keyed_by_time_and_folded_into_quarters_once(tmp_path: Path) -> None:
    s = Store(tmp_path / "h.sqlite")
    devices = [f"dev-{i:03d}" for i in range(200)]
    m0 = int(T0 // 60)
    # Two batches of 10 minutes of 200 devices, as the daemon writes them.
    for b in range(2):
        s.add_batch(
            [], [(d, m0 + b * 10 + k, 10.0, 10, 1.0, 1.0) for d in devices for k in range(10)], {"meter"}
        )
    scanned = [(m, d) for m, d in s.db.execute("SELECT minute, device FROM readings_1m_others")]
    assert scanned == sorted(scanned) and len(scanned) == 4000  # the table's own order is time first
    # Only whole quarters that ended by the given time are folded: the first one, then the second.
    assert s.rollup_quarters(T0 + 900) == 200
    assert s.rollup_quarters(T0 + 1799) == 0
    assert s.rollup_quarters(T0 + 1800) == 200
    assert s.quarter_means("dev-007", T0, T0 + 1800) == [(int(T0 // 900), 1.0), (int(T0 // 900) + 1, 1.0)]
    assert s.db.execute("SELECT SUM(n) FROM readings_15m").fetchone() == (4000 * 10,)
    # A minute held back past its quarter's fold (a failed batch) is folded on its own.
    s.add_batch([], [("dev-007", m0 + 3, 5.0, 5, 1.0, 1.0)], {"meter"})
    assert s.db.execute(
        "SELECT n FROM readings_15m WHERE device='dev-007' AND quarter=?", (int(T0 // 900),)
    ).fetchone() == (155,)
    # Minutes are pruned only once folded: the third quarter's stay.
    s.add_batch([], [(d, m0 + 30, 10.0, 10, 1.0, 1.0) for d in devices], {"meter"})
    assert s.prune_others_minutes(T0 + DAY_S) == 4000
    assert s.db.execute("SELECT COUNT(*) FROM readings_1m_others").fetchone() == (200,)
    s.close()


def test_a_device_that_does_not_move_is_still_stored_every_heartbeat(tmp_path: Path) -> None:
    buf = ReadingsBuffer(full_rate={"meter"}, deadband_kw={"pump": 0.5})
    for t in range(0, int(2 * HEARTBEAT_S) + 1):
        buf.add("pump", T0 + t, 3.0)
    raw, _ = buf.take(T0 + 2 * HEARTBEAT_S)
    assert [ts - T0 for _, ts, _ in raw] == [0.0, HEARTBEAT_S, 2 * HEARTBEAT_S]


def test_raw_rows_are_keyed_time_first(tmp_path: Path) -> None:
    s = Store(tmp_path / "h.sqlite")
    assert (
        "PRIMARY KEY(ts, device)"
        in s.db.execute("SELECT sql FROM sqlite_master WHERE name='readings'").fetchone()[0]
    )
    s.close()


def seed(s: Store, now: float) -> None:
    """History of the meter, a configured device and a removed one, and the bookkeeping tables."""
    for age in (0.5, 3, 40, 100, 500):
        t = now - age * DAY_S
        s.add_readings([("meter", t, 1.0), ("chiller", t, 2.0), ("removed-ahu", t, 3.0)])
    s.outbox_put("t/sent-old", "{}", 1, False)
    s.outbox_put("t/sent-new", "{}", 1, False)
    s.outbox_put("t/pending-old", "{}", 1, False)
    s.db.execute("UPDATE outbox SET created_ts=?", (now - 30 * DAY_S,))
    s.db.execute("UPDATE outbox SET sent_ts=? WHERE topic='t/sent-old'", (now - 2 * DAY_S,))
    s.db.execute("UPDATE outbox SET sent_ts=? WHERE topic='t/sent-new'", (now - 600,))
    s.journal_record("chiller", "setpoint_c", 22.0, 25.0, "ev-open", "hvac")
    s.journal_record("ahu", "setpoint_c", 22.0, 25.0, "ev-closed", "hvac")
    s.journal_restored("ahu", "setpoint_c", "event ended")
    s.db.execute(
        "UPDATE journal SET ts=?, restored_ts=CASE WHEN restored_ts IS NULL THEN NULL ELSE ? END",
        (now - 500 * DAY_S, now - 500 * DAY_S),
    )
    s.save_settlement("ev-ancient", {"event_id": "ev-ancient", "total": 1})
    s.db.execute("UPDATE settlements SET ts=?", (now - 900 * DAY_S,))


def test_prune_bounds_every_table_and_ages_out_removed_devices(tmp_path: Path) -> None:
    s = Store(tmp_path / "h.sqlite")
    now = T0 + 1000 * DAY_S
    seed(s, now)
    storage = StorageConfig(
        raw_retention_s=2 * DAY_S,
        meter_minute_retention_days=400,
        device_minute_retention_days=35,
        quarter_hour_retention_days=200,
    )
    prune(s, storage, ["meter", "chiller"], "meter", now)  # removed-ahu is no longer configured

    def ages(table: str, col: str, step: float) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for dev, v in s.db.execute(f"SELECT device, {col} FROM {table} ORDER BY {col} DESC"):
            out.setdefault(dev, []).append(round((now - v * step) / DAY_S, 1))
        return out

    assert ages("readings", "ts", 1) == {"meter": [0.5], "chiller": [0.5], "removed-ahu": [0.5]}
    assert ages("readings_1m", "minute", 60) == {
        "meter": [0.5, 3, 40, 100],
        "chiller": [0.5, 3],
        "removed-ahu": [0.5, 3],
    }
    assert set(ages("readings_15m", "quarter", 900)["removed-ahu"]) == {0.5, 3, 40, 100}
    # Delivered outbox rows go after a day; an undelivered one stays whatever its age.
    assert sorted(r[0] for r in s.db.execute("SELECT topic FROM outbox")) == ["t/pending-old", "t/sent-new"]
    # A closed journal row ages out, an open one never; settlements stay.
    assert [(e.device, e.event_id) for e in s.journal_open()] == [("chiller", "ev-open")]
    assert s.db.execute("SELECT COUNT(*) FROM journal").fetchone() == (1,)
    assert s.settlement("ev-ancient") == {"event_id": "ev-ancient", "total": 1}
    s.close()


def test_the_budget_takes_the_oldest_history_first_and_never_what_must_stay(tmp_path: Path) -> None:
    s = Store(tmp_path / "h.sqlite")
    now = T0 + 120 * DAY_S
    seed(s, now)
    # 30 days of a row a minute of the meter and 12 devices, and their minutes: past 16 MB.
    devices = [f"dev-{i:02d}" for i in range(12)]
    for day in range(30, 0, -1):
        t0 = now - day * DAY_S
        raw = [(d, t0 + k * 60, float(k % 50)) for k in range(1440) for d in ("meter", *devices)]
        s.add_batch(raw, [(d, int(ts // 60), kw, 1, kw, kw) for d, ts, kw in raw], {"meter"})
    s.rollup_quarters(now - ROLLUP_LAG_S)  # as the hourly prune does
    storage = StorageConfig(max_mb=16)
    before = s.usage_bytes()
    assert before > 16 * 2**20
    deleted = []
    while True:
        n, what = enforce_budget(s, storage, "meter", now)
        if not n:
            break
        deleted.append(what)
    assert what is None, what  # within the budget again, not stuck
    assert s.usage_bytes() <= 16 * 2**20
    # Other devices' oldest poll-rate rows went first; the meter's last day stayed.
    assert (deleted[0] or "").startswith("readings of other devices")
    # Then their 1-minute means, oldest first, before any of the meter's history.
    firsts = list(dict.fromkeys((w or "").split(" before")[0] for w in deleted))
    assert firsts[:2] == ["readings of other devices", "readings_1m_others of other devices"], firsts
    last_day = s.readings("meter", now - DAY_S, now)
    assert len(last_day) == 1440  # every row of the last day
    # Never a settlement, an undelivered message or an open journal row.
    assert s.settlement("ev-ancient") is not None
    assert [m.topic for m in s.outbox_pending()] == ["t/pending-old"]
    assert [e.event_id for e in s.journal_open()] == ["ev-open"]
    s.close()


def test_only_protected_data_left_is_said_not_deleted(tmp_path: Path) -> None:
    s = Store(tmp_path / "h.sqlite")
    now = T0
    big = json.dumps({"x": "y" * 1000})
    with s.transaction():
        s.db.executemany(
            "INSERT INTO outbox(topic, payload, qos, retain, created_ts) VALUES (?,?,1,0,?)",
            [("t/undelivered", big, now)] * 20_000,
        )
    n, what = enforce_budget(s, StorageConfig(max_mb=16), "meter", now)
    assert n == 0 and what is not None and "only protected data left" in what
    assert len(s.outbox_pending(100_000)) == 20_000
    s.close()


def test_retention_is_planned_to_fit_the_budget() -> None:
    st = StorageConfig()  # 512 MB
    small = plan_retention(st, 10)
    assert small.shortened == () and small.device_minute_days == st.device_minute_retention_days
    mid = plan_retention(st, 100)  # devices' 15-minute means to 13 months, then their minutes
    assert mid.shortened == ("quarter_days", "device_minute_days")
    assert mid.quarter_days == 400 and 7 <= mid.device_minute_days < st.device_minute_retention_days
    assert mid.meter_minute_days == st.meter_minute_retention_days
    big = plan_retention(st, 1000)
    assert big.shortened[:2] == ("quarter_days", "device_minute_days")
    assert big.device_minute_days < 7
    assert big.meter_minute_days >= 70  # the baselines' look-back stays
    assert big.planned_bytes <= st.max_mb * 2**20


def test_diagnose_shows_usage_and_the_history_each_rule_has(tmp_path: Path) -> None:
    from agent.cli.diagnose import check_storage, open_read_only
    from agent.config.load import load_site_config
    from tests.conftest import DEMO_CONFIG

    cfg, _ = load_site_config(DEMO_CONFIG)
    meter = cfg.site.meter
    path = tmp_path / "agent.sqlite"
    s = Store(path)
    now = T0 + 100 * DAY_S
    for day in range(10, 0, -1):  # ten days of the meter's minutes, two of its poll-rate rows
        t0 = now - day * DAY_S
        s.add_batch(
            [(meter, t0 + k * 60, 500.0) for k in range(1440)] if day <= 2 else [],
            [(meter, int(t0 // 60) + k, 500.0, 1, 500.0, 500.0) for k in range(1440)],
        )
    s.close()
    ro = open_read_only(path)
    assert ro is not None
    c = check_storage(cfg, ro, now)
    assert c.status == "ok", c.detail
    assert "of a 512 MB budget" in c.detail and "1-min 10.0 d" in c.detail and "poll-rate 2.0 d" in c.detail
    assert c.data["rules"]["jiangsu_5day"] == {"needs_days": 45.0, "has_days": 10.0, "kept_days": 400.0}
    assert c.data["rules"]["realtime_15min"]["has_days"] == 2.0
    small = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"max_mb": 16})})
    s = Store(path)
    s.add_batch([(f"dev-{i}", now - k, 1.0) for i in range(40) for k in range(0, 20000)], [])
    s.close()
    c = check_storage(small, ro, now)
    assert c.status == "fail" and "of a 16 MB budget" in c.detail
    ro.db.close()
