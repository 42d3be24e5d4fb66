"""`omniquant report`: a static HTML page with PNG charts of one namespace and account.

Data (:mod:`~omniquant.report.data`: plain series and Decimal stats), data access
(:mod:`~omniquant.report.queries`: SQL over the audit store) and rendering
(:mod:`~omniquant.report.charts`, :mod:`~omniquant.report.page`) are apart: build a
:class:`ReportData` from ClickHouse with :func:`from_clickhouse`, or by hand (a backtest),
and write it with :func:`render_report`.
"""

from omniquant.report.data import FillPoint, ReportData, ReportStats, Series, report_stats
from omniquant.report.page import render_report
from omniquant.report.queries import from_clickhouse

__all__ = [
    "FillPoint",
    "ReportData",
    "ReportStats",
    "Series",
    "from_clickhouse",
    "render_report",
    "report_stats",
]
