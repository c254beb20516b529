"""The results as plain-text tables (also pasted into README's Performance section)."""

from __future__ import annotations

from typing import Any

RUN_COLUMNS = ("requests", "errors", "throughput_per_s", "p50_ms", "p95_ms", "p99_ms")


def render(results: dict[str, Any]) -> str:
    scenarios = results["scenarios"]
    parts = []
    if "commands" in scenarios:
        parts.append(_commands(scenarios["commands"]))
    if "reads" in scenarios:
        parts.append(_reads(scenarios["reads"]))
    if "scale" in scenarios:
        parts.append(_scale(scenarios["scale"]))
    if "relay" in scenarios:
        parts.append(_relay(scenarios["relay"]))
    if "worst-search" in scenarios:
        parts.append(_worst_search(scenarios["worst-search"]))
    if "topologies" in scenarios:
        parts.append(_topologies(scenarios["topologies"]))
    if "programs" in scenarios:
        parts.append(_programs(scenarios["programs"]))
    if "scopes" in scenarios:
        parts.append(_scopes(scenarios["scopes"]))
    if "tracing" in scenarios:
        parts.append(_tracing(scenarios["tracing"]))
    return "\n\n".join(parts)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header, *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    return str(value)


def _verdict(value: float, target: float, *, at_least: bool) -> str:
    met = value >= target if at_least else value <= target
    return f"{'met' if met else 'NOT met'} (target {'≥' if at_least else '≤'} {target:g})"


def _runs(runs: list[dict[str, Any]]) -> str:
    return _table(["run", *RUN_COLUMNS], [[r["name"], *(r[c] for c in RUN_COLUMNS)] for r in runs])


def _commands(result: dict[str, Any]) -> str:
    ratios, judged = result["ratios"], result["verdicts"]
    lines = [
        f"commands: {result['runs'][0]['concurrency']} in flight; the mix through careplan serve"
        f" x{result['replicas']}, careplan.create alone through one; {result['workers']} workers each",
        _runs(result["runs"]),
        f"service / (a): {ratios['service / (a) throughput']:.2f} — "
        + _judged(judged["service / (a) throughput"]),
        f"service / (b): {ratios['service / (b) throughput']:.2f}",
        f"create / (c): {ratios['create / (c) throughput']:.2f} — "
        + _judged(judged["create / (c) throughput"])
        + f"; (c) writes JSON of {', '.join(f'{k} {v} B' for k, v in result['minimal_json_bytes'].items())}",
        f"create p50 at 1 in flight: {judged['create p50 ms, 1 in flight']['value']:.2f} ms — "
        + _judged(judged["create p50 ms, 1 in flight"]),
        f"careplan serve peak RSS, one process: {judged['peak RSS MB, one process']['value']} MB — "
        + _judged(judged["peak RSS MB, one process"]),
        f"mix: careplan serve x{result['replicas']} peak RSS {result['peak_rss_mb']} MB (all processes),"
        f" CPU {result['service_cpu_cores']} cores (machine: {result['machine_cpu_cores_busy']} of its cores"
        " busy)",
        f"create, {result['runs'][0]['concurrency']} in flight: CPU"
        f" {result['create_service_cpu_cores']} cores"
        f" (machine: {result['create_machine_cpu_cores_busy']} of its cores busy)",
    ]
    return "\n".join(lines)


def _judged(verdict: dict[str, Any]) -> str:
    return _verdict(verdict["value"], verdict["target"], at_least=verdict["at_least"])


def _topologies(result: dict[str, Any]) -> str:
    commands, reads = result["commands"], result["reads"]
    return "\n".join(
        [
            f"topologies: the command mix, {commands['runs'][0]['concurrency']} in flight, one process",
            _runs(commands["runs"]),
            f"R3 cluster / R1 node: throughput {commands['ratio']:.2f}, p50 {commands['p50_ratio']:.2f}x",
            f"reads: {reads['concurrency']} concurrent clients ({reads['tool']})",
            _runs(reads["runs"]),
            *(
                f"{route} from the replica / from the primary: {ratio:.2f}"
                for route, ratio in reads["ratios"].items()
            ),
        ]
    )


def _worst_search(result: dict[str, Any]) -> str:
    rows = [
        [name, r["cpu_ms"], r["loop_ms"], r["p50_ms"], r["max_ms"]]
        for name, r in (("patient&status", result["common"]), ("worst allowed", result["worst"]))
    ]
    ratios, probes = result["ratios"], result["healthz_beside_worst"]
    return "\n".join(
        [
            f"worst-search: POST CarePlan/_search, {result['requests']} sequential requests each",
            _table(["search", "service cpu_ms", "on-loop cpu_ms", "p50_ms", "max_ms"], rows),
            f"worst / common: CPU {ratios['cpu']}x, on the loop {ratios['loop']}x, p50 {ratios['p50']}x",
            f"/healthz beside 4 clients of worst searches: {probes['probes']} probes,"
            f" p50 {probes['p50_ms']} ms, p99 {probes['p99_ms']} ms, max {probes['max_ms']} ms",
        ]
    )


def _reads(result: dict[str, Any]) -> str:
    lines = [f"reads: {result['concurrency']} concurrent clients ({result['tool']})", _runs(result["runs"])]
    for route, ratio in result["ratios"].items():
        lines.append(f"{route}: {ratio:.2f} of bare — {_verdict(ratio, result['target'], at_least=True)}")
    lines.append(f"careplan serve peak RSS: {result['peak_rss_mb']} MB")
    return "\n".join(lines)


def _scale(result: dict[str, Any]) -> str:
    rows = [[s["plans"], s["search"], s["p50_ms"], s["p99_ms"], s["plan_uses"]] for s in result["searches"]]
    lines = [
        f"scale: care plans across {result['tenants']} tenants, bulk-loaded ({result['load_seconds']} s);"
        f" each search {result['repeats']} times, one client",
        _table(["plans", "search", "p50_ms", "p99_ms", "plan uses"], rows),
    ]
    for search, ratio in result["p99_ratio_largest_to_smallest"].items():
        lines.append(
            f"{search}: p99 at largest / smallest = {ratio:.2f} — {_verdict(ratio, 2, at_least=False)}"
        )
    lines.append(f"careplan serve peak RSS: {result['peak_rss_mb']} MB")
    return "\n".join(lines)


def _relay(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"relay lag (careplan serve x{result['replicas']}): {result['rate_per_s']} commands/s"
            f" (half of the {result['top_throughput_per_s']}/s top), {result['commands']} commands,"
            f" {result['events_matched']} with their event",
            f"commit → stream p50 {result['lag_p50_ms']} ms, p99 {result['lag_p99_ms']} ms, max"
            f" {result['lag_max_ms']} ms — " + _verdict(result["lag_p99_ms"], 50, at_least=False),
            f"careplan serve peak RSS: {result['peak_rss_mb']} MB",
        ]
    )


def _programs(result: dict[str, Any]) -> str:
    programme = result["programme"]
    lines = [
        f"programs: careplan.enroll into a programme of {programme['goals']} goals and "
        f"{programme['activities']} activities against careplan.create, one careplan serve",
        _runs(result["runs"]),
    ]
    rollout, dry_run = result["rollout"], result["dry_run"]
    lines.append(
        f"rollout: {rollout['rollouts']} runs at once, plans {rollout['plans']}, {rollout['seconds']} s; "
        f"dry run: {dry_run['plans']} plans in {dry_run['seconds']} s"
    )
    for name, verdict in result["verdicts"].items():
        judged = _verdict(verdict["value"], verdict["target"], at_least=verdict.get("at_least", False))
        lines.append(f"{name}: {verdict['value']:.2f} — {judged}")
    lines.append(f"errors: {result['errors']}; careplan serve peak RSS {result['peak_rss_mb']} MB")
    return "\n".join(lines)


def _scopes(result: dict[str, Any]) -> str:
    lines = [
        f"scopes: the same FHIR searches under user/*.rs and under a granular category scope, "
        f"{result['concurrency']} in flight ({result['tool']}), each twice, alternating",
        _runs(result["runs"]),
    ]
    for name, verdict in result["verdicts"].items():
        judged = _verdict(verdict["value"], verdict["target"], at_least=False)
        lines.append(f"{name}: granular / user/*.rs, time per request {verdict['value']:.2f} — {judged}")
    lines.append(f"careplan serve peak RSS {result['peak_rss_mb']} MB")
    return "\n".join(lines)


def _tracing(result: dict[str, Any]) -> str:
    verdict = result["verdict"]
    judged = _verdict(verdict["value"], verdict["target"], at_least=False)
    return "\n".join(
        [
            "tracing: careplan.create, tracing off and on (OTLP/HTTP to an in-process receiver), twice each",
            _runs(result["runs"]),
            *(
                f"{mode:28s} throughput lost {cost:6.1%}, service CPU "
                f"{result['service_cpu_ms_per_command'][mode]:.2f} ms per command"
                for mode, cost in result["cost"].items()
            ),
            f"throughput lost with tracing on (every span recorded): {verdict['value']:.1%} — {judged}",
            f"spans exported per command with every span recorded: {result['spans_per_command']['on']}; "
            f"the SDK's own cost a span here: {result['sdk_cost_per_span']['record_us']} µs to record, "
            f"{result['sdk_cost_per_span']['encode_us']} µs to encode",
            f"exported: {result['exported_batches']} batches, {result['exported_bytes']} bytes; "
            f"errors: {result['errors']}",
        ]
    )
