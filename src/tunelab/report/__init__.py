"""Run reports: Markdown and HTML summaries with plots, written into the run folder."""

from tunelab.report.write import write_report

__all__ = ["write_report"]
