"""Write the wardready Grafana dashboards (grafana/dashboards/*.json) from code.

The JSON files are what ships and is committed; this script is how they are made, with
grafana-foundation-sdk's typed builders (its models follow Grafana's own dashboard schema).
Edit here, then run it:

    python3 grafana/generate.py           # rewrite the JSON files
    python3 grafana/generate.py --check   # exit 1 if a committed file differs from the code

Every panel and template query names the provisioned datasource by its fixed uid
(grafana/provisioning/datasources/wardready.yml). The PromQL reads the collector's metrics
(collector/exposition.py) and the recording rules (prometheus/rules/).

Conventions for the queries: a ward's name and working group come from
``wardready_ward_info`` by ``* on (ward) group_left (...)`` (check metrics do not repeat
them); ``* on (ward) group_left () wardready_ward_info{working_group=~"$working_group"}``
keeps the left side's value (info is 1) and filters it by the working-group variable.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import (
    bargauge,
    common,
    prometheus,
    stat,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dash_m
from grafana_foundation_sdk.models import prometheus as prometheus_m

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"

DATASOURCE_UID = "wardready-prometheus"
DS = dash_m.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)

# The filter every fleet-wide query carries, and the join that applies it.
WG = 'working_group=~"$working_group"'
IN_WG = f"* on (ward) group_left () wardready_ward_info{{{WG}}}"
SHARED = 'role=~"shared_system|mail"'
DEVICES = 'check=~"printer_.*|scanner_.*"'

WARD_DETAIL_UID = "wardready-ward-detail"
WARD_LINK = f"/d/{WARD_DETAIL_UID}/ward-detail?var-ward=${{__value.raw}}&${{__url_time_range}}"

Builder = Any  # the SDK's panel builders share no usable base type


# --- small helpers -------------------------------------------------------------------------


def query(expr: str, legend: str = "", *, instant: bool = False, table_: bool = False) -> Any:
    q = prometheus.Dataquery().expr(expr).datasource(DS)
    if legend:
        q = q.legend_format(legend)
    q = q.instant() if instant or table_ else q.range()
    if table_:
        q = q.format(prometheus_m.PromQueryFormat.TABLE)
    return q


def steps(*pairs: tuple[float | None, str]) -> Any:
    return (
        dash.ThresholdsConfig()
        .mode(dash_m.ThresholdsMode.ABSOLUTE)
        .steps([dash_m.Threshold(value=v, color=c) for v, c in pairs])
    )


def value_map(mapping: dict[str, tuple[str, str]]) -> list[Any]:
    """``{"1": ("up", "green")}`` as a Grafana value mapping."""
    return [
        dash_m.ValueMap(
            options={
                k: dash_m.ValueMappingResult(text=text, color=color, index=i)
                for i, (k, (text, color)) in enumerate(mapping.items())
            }
        )
    ]


UP_DOWN = value_map({"1": ("up", "green"), "0": ("down", "red")})
OK_FAILED = value_map({"1": ("ok", "green"), "0": ("failed", "red")})
SHOW_ON = steps((None, "green"))


def organize(exclude: list[str], rename: dict[str, str], order: list[str]) -> Any:
    return dash_m.DataTransformerConfig(
        id_val="organize",
        options={
            "excludeByName": dict.fromkeys(exclude, True),
            "renameByName": rename,
            "indexByName": {name: i for i, name in enumerate(order)},
        },
    )


MERGE = dash_m.DataTransformerConfig(id_val="merge", options={})
HIDDEN_COLUMNS = ["Time", "__name__", "job", "instance"]


def link_ward_column(panel: Any, column: str = "ward") -> Any:
    link = dash_m.DynamicConfigValue(
        id_val="links",
        value=[{"title": "Ward detail", "url": WARD_LINK}],
    )
    return panel.override_by_name(column, [link])


def stat_panel(title: str, expr: str, *, unit: str = "short", legend: str = "") -> Any:
    return (
        stat.Panel()
        .title(title)
        .datasource(DS)
        .with_target(query(expr, legend, instant=True))
        .unit(unit)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(common_m.BigValueGraphMode.NONE)
        .color_mode(common_m.BigValueColorMode.VALUE)
        .thresholds(steps((None, "text")))
        .height(4)
        .span(4)
    )


def legend_table() -> Any:
    return (
        common.VizLegendOptions()
        .display_mode(common_m.LegendDisplayMode.TABLE)
        .placement(common_m.LegendPlacement.RIGHT)
        .show_legend(True)
        .calcs(["lastNotNull", "max"])
    )


def series_panel(title: str, *targets: Any, unit: str = "short") -> Any:
    panel = timeseries.Panel().title(title).datasource(DS).unit(unit).height(8).span(12)
    for t in targets:
        panel = panel.with_target(t)
    return panel.legend(legend_table()).line_width(1).fill_opacity(10)


def timeline_panel(title: str, expr: str, legend: str, mappings: list[Any]) -> Any:
    return (
        statetimeline.Panel()
        .title(title)
        .datasource(DS)
        .with_target(query(expr, legend))
        .mappings(mappings)
        .thresholds(steps((None, "red"), (1, "green")))
        .color_scheme(dash.FieldColor().mode(dash_m.FieldColorModeId.THRESHOLDS))
        .show_value(common_m.VisibilityMode.NEVER)
        .merge_values(True)
        .fill_opacity(80)
        .line_width(0)
        .legend(common.VizLegendOptions().show_legend(False))
        .height(8)
        .span(12)
    )


def table_panel(title: str, *targets: Any, transformations: list[Any]) -> Any:
    panel = table.Panel().title(title).datasource(DS).height(8).span(12)
    for t in targets:
        panel = panel.with_target(t)
    for tr in transformations:
        panel = panel.with_transformation(tr)
    return panel


def level_gauge(title: str, *targets: Any, ratio: bool = True) -> Any:
    """Horizontal bars, by default of ratios from 0 to 1 (supply levels, shares)."""
    panel = bargauge.Panel().title(title).datasource(DS).min(0)
    if ratio:
        panel = panel.unit("percentunit").max(1)
    panel = (
        panel.thresholds(steps((None, "red"), (0.1, "orange"), (0.25, "green")))
        .display_mode(common_m.BarGaugeDisplayMode.GRADIENT)
        .orientation(common_m.VizOrientation.HORIZONTAL)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .height(8)
        .span(12)
    )
    for t in targets:
        panel = panel.with_target(t)
    return panel


def group_variable() -> Any:
    return (
        dash.QueryVariable("working_group")
        .label("Working group")
        .datasource(DS)
        .query("label_values(wardready_ward_info, working_group)")
        .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dash_m.VariableSort.NUMERICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def base(uid: str, title: str, description: str) -> Any:
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["wardready"])
        .time("now-6h", "now")
        .refresh("1m")
        .timezone("browser")
        .tooltip(dash_m.DashboardCursorSync.CROSSHAIR)
        .link(
            dash.DashboardLink("wardready dashboards")
            .type(dash_m.DashboardLinkType.DASHBOARDS)
            .tags(["wardready"])
            .as_dropdown(True)
            .include_vars(False)
            .keep_time(True)
        )
    )


# --- Fleet readiness -----------------------------------------------------------------------


def fleet_readiness() -> Any:
    ready = f"wardready_ward_ready{{{WG}}}"
    reasons_table = table_panel(
        "Wards not ready and why",
        query(
            "(wardready_ward_reason * on (ward) group_left (ward_name, working_group) "
            f"wardready_ward_info{{{WG}}}) unless on (ward) (wardready_ward_ready == 1)",
            table_=True,
        ),
        transformations=[
            organize(
                [*HIDDEN_COLUMNS, "Value"],
                {
                    "ward_name": "Ward",
                    "ward": "Id",
                    "working_group": "Group",
                    "criterion": "Criterion",
                    "severity": "Severity",
                    "status": "Status",
                },
                ["working_group", "ward_name", "ward", "criterion", "severity", "status"],
            )
        ],
    ).description(
        "Every blocker or warning the verdict names, for wards that are not ready. "
        "no_data: no agent ever reported; agent_silent: every agent went quiet; unknown: "
        "too few samples yet. The evidence (figures, thresholds) is in the Ward detail "
        "dashboard and the collector's API."
    )
    reasons_table = link_ward_column(reasons_table, "ward").height(12).span(24)
    by_group = table_panel(
        "Ready by working group (N/M)",
        query(f"sum by (working_group) ({ready})", table_=True),
        query(f"count by (working_group) ({ready})", table_=True),
        transformations=[
            MERGE,
            organize(
                ["Time"],
                {"working_group": "Group", "Value #A": "Ready", "Value #B": "Wards"},
                ["working_group", "Value #A", "Value #B"],
            ),
        ],
    ).sort_by([common.TableSortByFieldState().display_name("Group")])
    return (
        base(
            "wardready-fleet-readiness",
            "wardready · Fleet readiness",
            "How many ward Public Administration Service Centers are ready now and over "
            "time, by working group, and why the others are not.",
        )
        .with_variable(group_variable())
        .with_row(dash.Row("Now"))
        .with_panel(stat_panel("Wards ready", f"sum({ready})"))
        .with_panel(stat_panel("Wards", f"count({ready})"))
        .with_panel(
            stat_panel("Share ready", f"avg({ready})", unit="percentunit").thresholds(
                steps((None, "red"), (0.8, "orange"), (0.95, "green"))
            )
        )
        .with_panel(
            stat_panel(
                "Not ready",
                f'count(wardready_ward_verdict{{verdict="not_ready"}} {IN_WG}) or vector(0)',
            )
        )
        .with_panel(
            stat_panel(
                "Unknown (too few samples)",
                f'count(wardready_ward_verdict{{verdict="unknown"}} {IN_WG}) or vector(0)',
            )
        )
        .with_panel(
            stat_panel(
                "Never reported",
                f'count(wardready_ward_reason{{criterion="no_data"}} {IN_WG}) or vector(0)',
            )
        )
        .with_row(dash.Row("By working group"))
        .with_panel(
            level_gauge(
                "Share ready by working group",
                query(f"avg by (working_group) ({ready})", "Group {{working_group}}", instant=True),
            ).thresholds(steps((None, "red"), (0.8, "orange"), (0.95, "green")))
        )
        .with_panel(by_group)
        .with_panel(
            series_panel(
                "Wards ready over time",
                query(f"sum(wardready:wards_ready:sum_by_group{{{WG}}})", "ready"),
                query(f"sum(wardready:wards:count_by_group{{{WG}}})", "wards"),
            ).min(0)
        )
        .with_panel(
            series_panel(
                "Share ready by working group over time",
                query(f"wardready:wards_ready:ratio_by_group{{{WG}}}", "Group {{working_group}}"),
                unit="percentunit",
            )
            .min(0)
            .max(1)
        )
        .with_row(dash.Row("Why wards are not ready"))
        .with_panel(reasons_table)
        .with_panel(
            level_gauge(
                "Wards failing each blocker now",
                query(
                    "count by (criterion) (wardready_ward_reason"
                    f'{{severity="blocker", status="failed"}} {IN_WG})',
                    "{{criterion}}",
                    instant=True,
                ),
                ratio=False,
            ).thresholds(steps((None, "orange")))
        )
        .with_panel(
            series_panel(
                "Wards failing each blocker over time (all groups)",
                query("wardready:wards_failing:count_by_criterion", "{{criterion}}"),
            ).min(0)
        )
    )


# --- Ward detail ---------------------------------------------------------------------------


def ward_detail() -> Any:
    ward = 'ward="$ward"'
    wan = f'{ward}, role="wan", line="$line"'
    agents_joined = "* on (ward, agent) group_left (version) wardready_agent_info{" + ward + "}"
    rtt = (
        series_panel(
            "Round trip on $line",
            query(f"avg by (line) (wardready_icmp_rtt_avg_seconds{{{wan}}})", "avg"),
            unit="s",
        )
        .min(0)
        .description(
            "Each run's average round trip: a rising floor is a longer path or a saturated "
            "line. The runs' fastest and slowest replies are on the agent's own /metrics."
        )
    )
    loss = (
        series_panel(
            "Loss and jitter on $line",
            query(f"max by (line) (wardready_icmp_loss_ratio{{{wan}}})", "loss"),
            query(f"avg by (line) (wardready_icmp_jitter_seconds{{{wan}}})", "jitter"),
            unit="percentunit",
        )
        .min(0)
        .override_by_name(
            "jitter",
            [
                dash_m.DynamicConfigValue(id_val="unit", value="s"),
                dash_m.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
            ],
        )
    )
    return (
        base(
            WARD_DETAIL_UID,
            "wardready · Ward detail",
            "One ward: its verdict and criteria, WAN lines, call quality, bandwidth, "
            "printers and scanners, and agents. Every check's own figures are on the ward's "
            "page in the collector.",
        )
        .with_variable(group_variable())
        .with_variable(
            dash.QueryVariable("ward")
            .label("Ward")
            .datasource(DS)
            .query(f"label_values(wardready_ward_info{{{WG}}}, ward)")
            .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dash_m.VariableSort.ALPHABETICAL_ASC)
        )
        .with_variable(
            dash.QueryVariable("line")
            .label("WAN line")
            .datasource(DS)
            .query(f'label_values(wardready_icmp_rtt_avg_seconds{{{ward}, role="wan"}}, line)')
            .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dash_m.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
        )
        .with_row(dash.Row("Verdict"))
        .with_panel(
            stat_panel(
                "Ward",
                f"wardready_ward_info{{{ward}}}",
                legend="{{ward_name}} · working group {{working_group}}",
            )
            .text_mode(common_m.BigValueTextMode.NAME)
            .span(8)
        )
        .with_panel(
            stat_panel("Ready", f"wardready_ward_ready{{{ward}}}")
            .mappings(value_map({"1": ("READY", "green"), "0": ("NOT READY", "red")}))
            .color_mode(common_m.BigValueColorMode.BACKGROUND)
        )
        .with_panel(
            stat_panel(
                "Verdict", f"wardready_ward_verdict{{{ward}}}", legend="{{verdict}}"
            ).text_mode(common_m.BigValueTextMode.NAME)
        )
        .with_panel(
            stat_panel(
                "Last heard from",
                f"time() - max(wardready_agent_last_seen_timestamp_seconds{{{ward}}})",
                unit="s",
            )
            .thresholds(steps((None, "green"), (180, "red")))
            .description("Seconds since any agent of the ward last reported.")
            .span(8)
        )
        .with_panel(
            table_panel(
                "Reasons now",
                query(f"wardready_ward_reason{{{ward}}}", table_=True),
                transformations=[
                    organize(
                        [*HIDDEN_COLUMNS, "Value", "ward"],
                        {"criterion": "Criterion", "severity": "Severity", "status": "Status"},
                        ["criterion", "severity", "status"],
                    )
                ],
            ).description(
                "What the verdict names: failed or unknown criteria, no_data, agent_silent. "
                "Evidence: `wardready-collector status` or GET /api/v1/wards/$ward."
            )
        )
        .with_panel(
            table_panel(
                "Failing checks and why",
                query(f"wardready_check_failure_reason{{{ward}}}", table_=True),
                transformations=[
                    organize(
                        [*HIDDEN_COLUMNS, "Value", "ward"],
                        {"reason": "Reason"},
                        ["check", "name", "target", "reason", "agent", "role", "line"],
                    )
                ],
            )
        )
        .with_panel(
            timeline_panel(
                "Criteria over time",
                f"wardready_ward_criterion_ok{{{ward}}}",
                "{{criterion}} ({{severity}})",
                OK_FAILED,
            ).span(24)
        )
        .with_row(dash.Row("WAN line $line").repeat("line"))
        .with_panel(rtt)
        .with_panel(loss)
        .with_row(dash.Row("Calls and bandwidth"))
        .with_panel(
            series_panel(
                "Call quality (MOS, E-model)",
                query(f"wardready_stream_mos{{{ward}}}", "{{name}} {{line}}"),
            )
            .min(1)
            .max(5)
            .thresholds(steps((None, "red"), (4, "transparent")))
            .thresholds_style(
                common.GraphThresholdsStyleConfig().mode(
                    common_m.GraphThresholdsStyleMode.LINE_AND_AREA
                )
            )
            .description("Below 4, some participants are dissatisfied (ITU-T G.107, G.109).")
        )
        .with_panel(
            series_panel(
                "Bandwidth (upload, download)",
                query(
                    f"8 * wardready_bandwidth_upload_bytes_per_second{{{ward}}}",
                    "up {{name}} {{line}}",
                ),
                query(
                    f"8 * wardready_bandwidth_download_bytes_per_second{{{ward}}}",
                    "down {{name}} {{line}}",
                ),
                unit="bps",
            )
            .min(0)
            .draw_style(common_m.GraphDrawStyle.LINE)
            .line_interpolation(common_m.LineInterpolation.STEP_AFTER)
        )
        .with_row(dash.Row("Printers and scanners"))
        .with_panel(
            timeline_panel(
                "Printers and scanners working",
                f"wardready_check_success{{{ward}, {DEVICES}}}",
                "{{name}} ({{check}})",
                UP_DOWN,
            )
        )
        .with_row(dash.Row("Ward PC and agents"))
        .with_panel(
            table_panel(
                "Agents",
                query(
                    f"(time() - wardready_agent_last_seen_timestamp_seconds{{{ward}}}) "
                    + agents_joined,
                    table_=True,
                ),
                query(f"wardready_agent_spool_depth{{{ward}}} " + agents_joined, table_=True),
                transformations=[
                    MERGE,
                    organize(
                        [*HIDDEN_COLUMNS, "ward"],
                        {
                            "agent": "Agent",
                            "version": "Version",
                            "Value #A": "Last heard (s ago)",
                            "Value #B": "Spool depth",
                        },
                        ["agent", "version", "Value #A", "Value #B"],
                    ),
                ],
            )
        )
    )


# --- Shared systems ------------------------------------------------------------------------


def shared_systems() -> Any:
    # The collector counts the wards behind each system once for the fleet
    # (wardready_shared_check_wards): one series per system, not one per system and ward.
    system = f'{SHARED}, name=~"$system"'
    wards_by = "sum by (name) (wardready_shared_check_wards{" + system + "})"
    ok_by = "sum by (name) (wardready_shared_check_wards{" + system + ', state="ok"})'
    failing = (
        'wardready_ward_reason{criterion=~"shared_systems|official_mail|dns"} '
        "* on (ward) group_left (ward_name, working_group) wardready_ward_info{" + WG + "}"
    )
    return (
        base(
            "wardready-shared-systems",
            "wardready · Shared systems",
            "Reachability of the shared systems (Document Management System, 1022, TTHC, "
            "civil status, VBDLIS, the public service portal, official mail) as the whole "
            "fleet of wards sees them, and the wards that cannot reach them.",
        )
        .with_variable(group_variable())
        .with_variable(
            dash.QueryVariable("system")
            .label("System")
            .datasource(DS)
            .query(f"label_values(wardready_shared_check_wards{{{SHARED}}}, name)")
            .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dash_m.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
        )
        .with_row(dash.Row("All systems"))
        .with_panel(
            level_gauge(
                "Share of wards reaching each system now",
                query(f"{ok_by} / {wards_by}", "{{name}}", instant=True),
            ).thresholds(steps((None, "red"), (0.9, "orange"), (0.99, "green")))
        )
        .with_panel(
            level_gauge(
                "Availability over the time range",
                query(
                    f"avg_over_time(({ok_by} / {wards_by})[$__range:])", "{{name}}", instant=True
                ),
            ).thresholds(steps((None, "red"), (0.95, "orange"), (0.995, "green")))
        )
        .with_panel(
            series_panel(
                "Wards that cannot reach each system",
                query(
                    "sum by (name) (wardready_shared_check_wards{" + system + ', state="failed"})',
                    "{{name}}",
                ),
            ).min(0)
        )
        .with_panel(
            level_gauge(
                "TLS certificate days left",
                query(
                    f"min by (name) (wardready_shared_cert_expiry_seconds{{{system}}}) / 86400",
                    "{{name}}",
                    instant=True,
                ),
                ratio=False,
            )
            .unit("d")
            .max(90)
            .thresholds(steps((None, "red"), (14, "orange"), (30, "green")))
        )
        .with_row(dash.Row("Wards"))
        .with_panel(
            link_ward_column(
                table_panel(
                    "Wards failing shared systems, mail or DNS",
                    query(failing, table_=True),
                    transformations=[
                        organize(
                            [*HIDDEN_COLUMNS, "Value"],
                            {
                                "working_group": "Group",
                                "ward_name": "Ward",
                                "ward": "Id",
                                "criterion": "Criterion",
                                "severity": "Severity",
                                "status": "Status",
                            },
                            ["working_group", "ward_name", "ward", "criterion", "status"],
                        )
                    ],
                )
            )
            .description(
                "Which system a ward cannot reach is on its page in the collector "
                "(the Ward detail dashboard links there through the criteria)."
            )
            .height(12)
            .span(24)
        )
    )


# --- Fleet health --------------------------------------------------------------------------


def fleet_health() -> Any:
    age = "(time() - wardready_agent_last_seen_timestamp_seconds)"
    joined = (
        "* on (ward, agent) group_left (version) wardready_agent_info "
        f"* on (ward) group_left (ward_name, working_group) wardready_ward_info{{{WG}}}"
    )
    return (
        base(
            "wardready-fleet-health",
            "wardready · Fleet health",
            "The agents and the collector themselves: who reports, which versions run, "
            "spools, memory, and the collector's scrape.",
        )
        .with_variable(group_variable())
        .with_row(dash.Row("Now"))
        .with_panel(
            stat_panel("Collector", 'up{job="wardready-collector"}')
            .mappings(UP_DOWN)
            .color_mode(common_m.BigValueColorMode.BACKGROUND)
        )
        .with_panel(
            stat_panel("Agents reporting (3 min)", f"count(({age} < 180) {IN_WG}) or vector(0)")
        )
        .with_panel(
            stat_panel("Agents silent (3 min)", f"count(({age} >= 180) {IN_WG}) or vector(0)")
            .thresholds(steps((None, "green"), (1, "red")))
            .color_mode(common_m.BigValueColorMode.BACKGROUND)
        )
        .with_panel(
            stat_panel(
                "Wards without an agent",
                f"count(wardready_ward_info{{{WG}}} unless on (ward) "
                "wardready_agent_last_seen_timestamp_seconds) or vector(0)",
            )
        )
        .with_panel(
            stat_panel(
                "Results waiting in spools",
                f"sum(wardready_agent_spool_depth {IN_WG}) or vector(0)",
            )
        )
        .with_panel(
            stat_panel(
                "Collector scrape time",
                'scrape_duration_seconds{job="wardready-collector"}',
                unit="s",
            ).thresholds(steps((None, "green"), (5, "orange"), (15, "red")))
        )
        .with_row(dash.Row("Agents"))
        .with_panel(
            level_gauge(
                "Agent versions",
                query(
                    f"count by (version) (wardready_agent_info {IN_WG})",
                    "{{version}}",
                    instant=True,
                ),
                ratio=False,
            )
            .thresholds(steps((None, "blue")))
            .span(8)
        )
        .with_panel(
            series_panel(
                "Longest since last contact (top 10)",
                query(f"topk(10, {age} {IN_WG})", "{{ward}}/{{agent}}"),
                unit="s",
            )
            .min(0)
            .span(16)
        )
        .with_panel(
            series_panel(
                "Spool depth (top 10)",
                query(f"topk(10, wardready_agent_spool_depth {IN_WG})", "{{ward}}/{{agent}}"),
            ).min(0)
        )
        .with_panel(
            series_panel(
                "Results dropped by full spools, per hour",
                query(
                    "sum(rate(wardready_agent_spool_dropped_results[$__rate_interval]) "
                    f"{IN_WG}) * 3600",
                    "dropped per hour",
                ),
            ).min(0)
        )
        .with_panel(
            table_panel(
                "Agents",
                query(f"{age} {joined}", table_=True),
                query(f"wardready_agent_spool_depth {joined}", table_=True),
                transformations=[
                    MERGE,
                    organize(
                        HIDDEN_COLUMNS,
                        {
                            "working_group": "Group",
                            "ward_name": "Ward",
                            "ward": "Id",
                            "agent": "Agent",
                            "version": "Version",
                            "Value #A": "Last heard (s ago)",
                            "Value #B": "Spool depth",
                        },
                        [
                            "working_group",
                            "ward_name",
                            "ward",
                            "agent",
                            "version",
                            "Value #A",
                            "Value #B",
                        ],
                    ),
                ],
            )
            .height(12)
            .span(24)
        )
        .with_row(dash.Row("Collector"))
        .with_panel(
            series_panel(
                "Series left out of /metrics by the ward budget",
                query(
                    "sum(increase(wardready_collector_metrics_series_cut_total[$__rate_interval]))",
                    "series cut",
                ),
            )
            .min(0)
            .description(
                "A ward reporting more lines or devices than its budget (collector/exposition.py) "
                "loses its least important series; its verdict and criteria are kept."
            )
        )
        .with_panel(
            series_panel(
                "Collector scrape",
                query('scrape_duration_seconds{job="wardready-collector"}', "scrape seconds"),
                query('scrape_samples_scraped{job="wardready-collector"}', "samples"),
                unit="s",
            )
            .min(0)
            .override_by_name(
                "samples",
                [
                    dash_m.DynamicConfigValue(id_val="unit", value="short"),
                    dash_m.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                ],
            )
        )
    )


DASHBOARDS: dict[str, Callable[[], Any]] = {
    "fleet-readiness.json": fleet_readiness,
    "ward-detail.json": ward_detail,
    "shared-systems.json": shared_systems,
    "fleet-health.json": fleet_health,
}


# --- output --------------------------------------------------------------------------------


def _panels(model: dash_m.Dashboard) -> Iterator[Any]:
    for p in model.panels or []:
        yield p
        yield from getattr(p, "panels", None) or []


def finish(builder: Any) -> dict[str, Any]:
    """The dashboard as JSON data, with panel ids and query refIds numbered in order."""
    model: dash_m.Dashboard = builder.build()
    for n, panel in enumerate(_panels(model), start=1):
        panel.id_val = n
        for i, target in enumerate(getattr(panel, "targets", None) or []):
            target.ref_id = chr(ord("A") + i)
    data: dict[str, Any] = json.loads(JSONEncoder(sort_keys=True).encode(model))
    return data


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--out", type=Path, default=OUT, help="directory (default: %(default)s)")
    args = parser.parse_args(argv)
    stale = []
    for name, make in DASHBOARDS.items():
        text = render(finish(make()))
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print("out of date with grafana/generate.py (run it): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
