"""The run report (report.md and report.html) and every plot."""
