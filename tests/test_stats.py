from serve_app.dispatch.stats import RequestRecord, RoutingStats


def test_stats_keep_the_known_shape_and_add_detail():
    stats = RoutingStats()
    stats.record(RequestRecord("code", "classified", 200, 120.0, classify_ms=5.0))
    stats.record(RequestRecord("general", "below_threshold", 200, 80.0, classify_ms=4.0, first_token_ms=30.0,
                               stream=True))
    stats.record(RequestRecord("math", "explicit", 400, 3.0))
    stats.record(RequestRecord(None, "rejected", 400, 1.0))
    snap = stats.snapshot(["code", "math", "general", "creative"])
    assert snap["total_requests"] == 3
    assert snap["routes"] == {"code": 1, "math": 1, "general": 1, "creative": 0}  # configured, not yet asked
    assert snap["fallbacks"] == 1 and snap["rejected"] == 1 and snap["streams"] == 1
    assert snap["errors"] == {"total": 2, "by_status": {"400": 2}}
    assert snap["latency_ms"]["code"]["p50"] == 120.0
    assert snap["first_token_ms"]["general"]["count"] == 1
    assert snap["classifier_ms"]["count"] == 2


def test_fallbacks_and_spillovers_add_up_across_replicas():
    one, two = RoutingStats(), RoutingStats()
    one.record(RequestRecord("general", "classified", 200, 50.0, failed=(("code", "unavailable"),)))
    two.record(RequestRecord("general", "classified", 200, 50.0, failed=(("code", "overloaded"),)))
    both_full = (("code", "overloaded"), ("general", "overloaded"))
    two.record(RequestRecord("code", "classified", 429, 2.0, failed=both_full))
    snap = RoutingStats.merged([one, two]).snapshot(["code", "math", "general"])
    assert snap["model_fallbacks"] == {"answered": 2, "by_path": {"code->general": 2},
                                       "by_cause": {"unavailable": 1, "overloaded": 3}}
    assert snap["spillovers"] == 3 and snap["errors"]["by_status"] == {"429": 1}
    assert snap["total_requests"] == 3 and snap["routes"] == {"code": 1, "math": 0, "general": 2}
