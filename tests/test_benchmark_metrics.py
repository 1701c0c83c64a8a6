"""Metric definitions (vllm bench serve) on hand-made timelines."""
import math

import pytest

from app.tools.loadgen.metrics import RequestRecord, error_kind, percentile, summarize


def rec(start: float, chunks: list[float], end: float, out: int | None = None, inp: int = 10,
        error: str | None = None) -> RequestRecord:
    ttft = chunks[0] - start if chunks else None
    return RequestRecord(start, ttft, end, chunks, inp, len(chunks) if out is None else out, error)


def test_basic_definitions() -> None:
    # request A: start 0, chunks at 0.1, 0.3, 0.4, end 0.4 -> ttft 100 ms, tpot (0.4-0.1)/2 = 150 ms
    a = rec(0.0, [0.1, 0.3, 0.4], 0.4)
    # request B: start 1.0, chunks at 1.2, 1.3, end 1.35 -> ttft 200, tpot (0.35-0.2)/1 = 150
    b = rec(1.0, [1.2, 1.3], 1.35)
    s = summarize([a, b], duration_s=2.0, num_gpus=2, concurrency=1)
    assert s["completed"] == 2 and s["errors"] == 0 and s["error_kinds"] == {}
    assert s["concurrency"] == 1 and s["duration"] == 2.0
    assert s["total_input_tokens"] == 20 and s["total_output_tokens"] == 5
    assert s["request_throughput"] == pytest.approx(1.0)
    assert s["output_throughput"] == pytest.approx(2.5)
    assert s["total_token_throughput"] == pytest.approx(12.5)
    assert s["request_throughput_per_gpu"] == pytest.approx(0.5)
    assert s["output_throughput_per_gpu"] == pytest.approx(1.25)
    assert s["total_token_throughput_per_gpu"] == pytest.approx(6.25)
    assert s["mean_ttft_ms"] == pytest.approx(150.0)
    assert s["median_ttft_ms"] == pytest.approx(150.0)
    assert s["std_ttft_ms"] == pytest.approx(50.0)  # population std like numpy
    assert s["mean_tpot_ms"] == pytest.approx(150.0)
    # ITL pooled: A gaps 200, 100; B gap 100
    assert s["mean_itl_ms"] == pytest.approx(400 / 3)
    assert s["median_itl_ms"] == pytest.approx(100.0)
    assert s["mean_e2el_ms"] == pytest.approx((400 + 350) / 2)


def test_one_token_outputs_have_no_tpot_or_itl() -> None:
    s = summarize([rec(0.0, [0.05], 0.06), rec(0.0, [0.07], 0.08)], 1.0, 1, 2)
    assert s["completed"] == 2
    assert s["mean_ttft_ms"] == pytest.approx(60.0)
    for key in ("mean_tpot_ms", "median_tpot_ms", "std_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "p90_itl_ms"):
        assert s[key] is None


def test_tpot_uses_usage_token_count_not_chunks() -> None:
    # server packed 4 tokens into 2 chunks: TPOT = (1.0 - 0.1) / 3
    s = summarize([rec(0.0, [0.1, 1.0], 1.0, out=4)], 1.0, 1, 1)
    assert s["mean_tpot_ms"] == pytest.approx(300.0)
    assert s["mean_itl_ms"] == pytest.approx(900.0)


def test_error_mid_stream_is_excluded_from_latency_stats() -> None:
    good = rec(0.0, [0.1, 0.2], 0.2)
    broken = rec(0.0, [0.5, 5.0], 5.0, error="incomplete_stream: stream ended before [DONE]")
    http = RequestRecord(0.0, None, 0.01, [], 10, 0, "http_503: starting")
    s = summarize([good, broken, http], 1.0, 1, 3)
    assert s["completed"] == 1 and s["errors"] == 2
    assert s["error_kinds"] == {"incomplete_stream": 1, "http_503": 1}
    assert s["total_output_tokens"] == 2 and s["total_input_tokens"] == 10
    assert s["mean_ttft_ms"] == pytest.approx(100.0)
    assert s["p99_itl_ms"] == pytest.approx(100.0)
    assert error_kind(http) == "http_503"


def test_empty_inputs_give_none_not_crashes() -> None:
    s = summarize([], duration_s=0.0, num_gpus=0, concurrency=4)
    assert s["completed"] == 0 and s["errors"] == 0 and s["concurrency"] == 4
    for key, value in s.items():
        if key.endswith("_ms") or "throughput" in key:
            assert value is None, key
    only_failures = summarize([RequestRecord(0, None, 1, [], 5, 0, "connection: refused")], 1.0, 1, 1)
    assert only_failures["mean_ttft_ms"] is None and only_failures["request_throughput"] == 0.0
    no_chunks = summarize([RequestRecord(0, None, 1, [], 5, 0, None)], 1.0, 1, 1)
    assert no_chunks["mean_ttft_ms"] is None and no_chunks["mean_itl_ms"] is None
    assert no_chunks["mean_e2el_ms"] == pytest.approx(1000.0)


def test_percentiles_interpolate_like_numpy() -> None:
    xs = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert percentile(xs, 50) == 3.0
    assert percentile(xs, 90) == pytest.approx(7.6)  # numpy.percentile(xs, 90)
    assert percentile(xs, 99) == pytest.approx(9.76)
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) is None
    # through summarize: e2el of 1..100 ms
    recs = [RequestRecord(0.0, 0.0005, (i + 1) / 1000, [0.0005], 1, 1) for i in range(100)]
    s = summarize(recs, 1.0, 1, 1)
    assert s["p90_e2el_ms"] == pytest.approx(90.1)
    assert s["p95_e2el_ms"] == pytest.approx(95.05)
    assert s["p99_e2el_ms"] == pytest.approx(99.01)
    assert s["median_e2el_ms"] == pytest.approx(50.5)
    assert s["std_e2el_ms"] == pytest.approx(math.sqrt((100**2 - 1) / 12))


def test_summary_has_all_keys() -> None:
    s = summarize([rec(0.0, [0.1, 0.2], 0.2)], 1.0, 1, 1)
    for m in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std", "p90", "p95", "p99"):
            assert f"{stat}_{m}_ms" in s


# ---- the client's error kinds, against a deliberately broken in-process server ----------
import asyncio  # noqa: E402

from aiohttp import web  # noqa: E402

from app.tools.loadgen import Target, run_level  # noqa: E402
from tests.helpers import free_port  # noqa: E402

CHUNK = b'data: {"choices": [{"index": 0, "text": " x"}]}\n\n'


async def _broken(request: web.Request) -> web.StreamResponse:
    mode = request.match_info["mode"]
    if mode == "http500":
        return web.json_response({"error": "boom"}, status=500)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    if mode == "cut":  # a clean end of body, but no [DONE]
        await resp.write(CHUNK + CHUNK)
        await resp.write_eof()
    elif mode == "abort":  # connection dropped mid-stream
        await resp.write(CHUNK)
        request.transport.close()
    elif mode == "garbage":
        await resp.write(b"data: {not json\n\n")
        await resp.write_eof()
    elif mode == "empty":
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    elif mode == "ok":
        await resp.write(CHUNK * 3 + b'data: {"choices": [], "usage": {"completion_tokens": 3}}\n\n'
                         + b"data: [DONE]\n\n")
        await resp.write_eof()
    return resp


async def _against_broken_server() -> dict[str, dict]:
    app = web.Application()
    app.router.add_post("/{mode}/v1/completions", _broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    out = {}
    try:
        for mode in ("ok", "http500", "cut", "abort", "garbage", "empty"):
            out[mode] = await run_level(Target(f"http://127.0.0.1:{port}/{mode}", "m", "D(10,3)", 4, 30), 2)
    finally:
        await runner.cleanup()
    closed = free_port()  # nobody listens there: connections are refused
    out["refused"] = await run_level(Target(f"http://127.0.0.1:{closed}", "m", "D(10,3)", 4, 30), 2)
    return out


def test_client_records_error_kinds_and_never_raises() -> None:
    res = asyncio.run(_against_broken_server())
    assert res["ok"]["completed"] == 4 and res["ok"]["total_output_tokens"] == 12
    assert res["ok"]["mean_tpot_ms"] is not None
    expected = {"http500": "http_500", "cut": "incomplete_stream", "abort": "incomplete_stream",
                "garbage": "bad_response", "empty": "empty_output", "refused": "connection"}
    for mode, kind in expected.items():
        r = res[mode]
        assert r["completed"] == 0 and r["errors"] == 4, (mode, r["error_kinds"])
        assert r["error_kinds"] == {kind: 4}, (mode, r["error_kinds"])
        assert r["mean_ttft_ms"] is None and r["request_throughput"] == 0.0


# ---- goodput (vllm bench serve --goodput) on hand-made timelines --------------------------
from app.tools.loadgen.metrics import check_slo, meets_slo  # noqa: E402

pytestmark = pytest.mark.unit


def _goodput_records() -> list[RequestRecord]:
    return [
        # ttft 100, tpot (1.0-0.1)/9 = 100, e2el 1000
        rec(0.0, [0.1 + 0.1 * k for k in range(10)], 1.0),
        # ttft 300, tpot (0.5-0.3)/4 = 50, e2el 500
        rec(0.0, [0.3, 0.35, 0.4, 0.45, 0.5], 0.5),
        # one token: ttft 50, no tpot, e2el 2000 (stream stayed open)
        rec(0.0, [0.05], 2.0),
        # fast but failed: never good
        rec(0.0, [0.01, 0.02], 0.02, error="incomplete_stream: cut"),
    ]


@pytest.mark.parametrize("slo,good", [
    ({"ttft": 200}, 2),  # A (100) and C (50); B is 300
    ({"ttft": 100}, 2),  # limits are inclusive, like vllm
    ({"tpot": 60}, 2),  # B (50) and C (one token: TPOT not checked)
    ({"tpot": 100}, 3),
    ({"e2el": 1000}, 2),  # A, B
    ({"ttft": 200, "tpot": 60}, 1),  # only C meets both
    ({"ttft": 500, "tpot": 500, "e2el": 5000}, 3),  # every success, never the failure
    ({"ttft": 0}, 0),
])
def test_goodput_counts_requests_meeting_every_limit(slo: dict, good: int) -> None:
    s = summarize(_goodput_records(), duration_s=4.0, num_gpus=1, concurrency=2, slo=slo)
    assert s["completed"] == 3 and s["errors"] == 1
    assert s["good_requests"] == good
    assert s["goodput"] == pytest.approx(good / 4.0)
    assert s["goodput_slo"] == {k: float(v) for k, v in slo.items()}


def test_no_slo_means_no_goodput() -> None:
    s = summarize(_goodput_records(), 4.0, 1, 2)
    assert s.get("goodput") is None and s.get("good_requests") is None and s.get("goodput_slo") is None
    assert summarize([], 0.0, 1, None, slo={"ttft": 1})["goodput"] is None  # no duration: no rate


def test_success_without_a_first_token_cannot_meet_ttft_or_tpot() -> None:
    odd = RequestRecord(0.0, None, 0.5, [], 5, 3, None)
    assert not meets_slo(odd, {"ttft": 1e9}) and not meets_slo(odd, {"tpot": 1e9})
    assert meets_slo(odd, {"e2el": 500})


@pytest.mark.parametrize("bad", [{}, {"itl": 5}, {"ttft": -1}, {"ttft": "5"}, {"ttft": math.nan},
                                 {"tpot": True}, [("ttft", 5)]])
def test_bad_slo_raises_value_error(bad: object) -> None:
    with pytest.raises(ValueError):
        check_slo(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        summarize([], 1.0, 1, 1, slo=bad)  # type: ignore[arg-type]
